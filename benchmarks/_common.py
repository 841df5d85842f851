"""Shared pieces of the benchmarks: GPT-2 small's shape with random weights, synthetic examples whose
lengths follow CNN/DailyMail's, and the config peftsum's loop runs with.  Nothing is downloaded."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

if importlib.util.find_spec("peftsum") is None:  # a checkout without an install (a wheelhouse's peftsum is used as is)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PEFTSUM_CACHE", tempfile.mkdtemp(prefix="peftsum-bench-"))

SOURCE, TARGET, SEP = 512, 128, 5  # peftsum's defaults: article <= 512 tokens, summary <= 128, "\nTL;DR:"


def gpt2_small(seed: int = 0, n_layer: int = 12):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer)).eval()


def synthetic_examples(n: int, seed: int = 0) -> list[dict]:
    """Articles of 400-1,200 tokens cut to 512, summaries of 40-100 tokens, eos; random token ids."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = min(int(rng.integers(400, 1201)), SOURCE)
        s = int(rng.integers(40, 101))
        ids = rng.integers(0, 50000, a + SEP + s).tolist() + [50256]
        out.append({"id": str(i), "input_ids": ids, "prompt_len": a + SEP, "article": "", "highlights": ""})
    return out


def as_dataset(examples):
    import datasets

    return datasets.Dataset.from_list(examples)


def peftsum_config(method: str, batch: int, steps: int, **overrides):
    from peftsum.config import load_config

    ov = [("method.name", method), ("train.batch_size", batch), ("train.max_steps", steps), ("train.epochs", 100),
          ("train.progress", False), ("train.checkpoint_every_steps", 10**6), ("train.mixed_precision", "no"),
          ("train.warmup_ratio", 0.0), ("model.tokenizer", "gpt2-bpe")] + list(overrides.items())
    return load_config(None, None, ov)


def machine() -> str:
    from peftsum.evaluate.cost import device_name

    return f"{device_name(torch.device('cpu'))}, torch {torch.__version__}, {platform.python_version()}"


def args(description: str, **defaults):
    p = argparse.ArgumentParser(description=description)
    for k, v in defaults.items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    return p.parse_args()


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def fresh(model):
    return copy.deepcopy(model)


def saved_bytes(fn):
    """Run ``fn`` (a forward) and return its result and the bytes of the distinct storages it saved for backward."""
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def token_batch(n: int, seed: int = 1) -> dict:
    """A padded batch of ``n`` synthetic CNN/DailyMail-length examples: input_ids, attention_mask, labels."""
    from peftsum.data.collate import collate
    from peftsum.model.loading import offline_gpt2_tokenizer

    batch = collate(synthetic_examples(n, seed=seed), offline_gpt2_tokenizer().pad_token_id)
    return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}


def training_passes(model, method, inputs: dict, passes: int) -> tuple[float, int, float]:
    """Forward/backward passes of ``method``'s summary loss on ``inputs`` (the model prepared): the mean seconds of
    ``passes`` after one warm-up, the bytes saved for the backward, and the loss."""
    from peftsum.train.loss import SummaryLM

    lm = SummaryLM(model, method)
    method.train_mode(model)
    times = []
    for k in range(passes + 1):
        t0 = time.perf_counter()
        (nll, n), saved = saved_bytes(lambda: lm(**inputs))
        (nll / n).backward()
        model.zero_grad(set_to_none=True)
        if k:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times), saved, (nll / n).item()
