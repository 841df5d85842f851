"""Shared fixtures: an isolated cache, a tiny GPT-2 (real tokenizer) saved with save_pretrained, and a
small Kaggle-style CSV directory of the demo corpus."""

from __future__ import annotations

import fcntl
import itertools
import os
import shutil
import tempfile
from pathlib import Path

# every test run gets its own cache (tokenized data, tokenizer files, demo base)
os.environ.setdefault("PEFTSUM_CACHE", tempfile.mkdtemp(prefix="peftsum-test-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# no test reaches a hub: without this every lookup of a hub id (e.g. the "gpt2" tokenizer before its offline
# fallback) waits for the network to time out, 48 s for the first one here
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# several test workers (pytest-xdist, one per core): one thread each, here and in the processes tests start
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    """Each worker's queue starts with the longest tests: pytest-xdist's worksteal scheduler hands worker k the k-th
    contiguous share of this order (the last workers' shares taken from the end when they run out), so the tests
    marked ``first`` are dealt one to each share's head, then the slow ones round-robin after them, the fast ones
    filling the shares; without workers, ``first``, then slow, then the rest.  Two ``first`` tests in one share ran
    one after the other: the critical path was their sum."""
    first = [item for item in items if item.get_closest_marker("first")]
    slow = [item for item in items if item.get_closest_marker("slow") and item not in first]
    fast = [item for item in items if item not in first and item not in slow]
    workers = getattr(config, "workerinput", {}).get("workercount", 1)
    shares, left = [], len(items)  # what the scheduler sends each worker at the start
    for k in range(workers):
        shares.append(left // (workers - k))
        left -= shares[-1]
    queues: list[list] = [[] for _ in range(workers)]
    for j, item in enumerate([*first, *slow]):
        queues[j % workers].append(item)
    rest = iter(fast)
    for queue, size in zip(queues, shares):
        queue.extend(itertools.islice(rest, max(0, size - len(queue))))
    items[:] = [item for queue in queues for item in queue] + list(rest)

TINY_CONFIG = dict(n_layer=2, n_embd=64, n_head=4, n_positions=1024, vocab_size=50257,
                   resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
TINY_RECIPE = dict(steps=120, batch_size=8, seq_len=64, lr=3e-3, warmup=5, seed=0, corpus="demo-v1", version=1)


@pytest.fixture(scope="session")
def tokenizer():
    from peftsum.model.loading import offline_gpt2_tokenizer

    return offline_gpt2_tokenizer()


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder ``build(folder)`` filled, once per test run whatever the number of workers: the first worker that
    asks builds it under a lock, the others wait for it and reuse it (they would each have built the same thing)."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder, built = root / f"shared-{name}", root / f"shared-{name}.built"
    with open(root / f"shared-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not built.is_file():
            shutil.rmtree(folder, ignore_errors=True)  # what a worker that failed here left
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2 x 64 GPT-2 briefly pre-trained on demo articles, saved with save_pretrained."""
    from peftsum.model.demo_base import ensure_demo_base

    def build(folder):
        ensure_demo_base(TINY_CONFIG, TINY_RECIPE, root=folder)

    return ensure_demo_base(TINY_CONFIG, TINY_RECIPE, root=built_once(tmp_path_factory, "models", build))  # found there


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from peftsum.data.demo import write_demo_corpus

    # one folder for every worker: the shared runs below hold its path in their configs
    return built_once(tmp_path_factory, "demo", lambda folder: write_demo_corpus(folder, {"train": 160, "validation": 40,
                                                                                          "test": 40}))


def tiny_overrides(model_dir, data_dir, **extra):
    ov = {"model.name": str(model_dir), "model.tokenizer": None, "data.source": str(data_dir),
          "data.train_size": 64, "data.val_size": 16, "data.test_size": 16, "data.max_source_tokens": 96,
          "data.max_target_tokens": 24, "train.epochs": 1, "train.batch_size": 8, "train.progress": False,
          "train.checkpoint_every_steps": 2, "eval.decoding.max_new_tokens": 12, "eval.batch_size": 8,
          "eval.bootstrap": 200}
    ov.update(extra)
    return list(ov.items())


@pytest.fixture
def tiny_cfg(tiny_model_dir, demo_dir):
    from peftsum.config import load_config

    def make(method="lora", **extra):
        return load_config("demo", None, tiny_overrides(tiny_model_dir, demo_dir, **{"method.name": method, **extra}))

    return make


ALL_METHODS = "zero-shot,lead-3,prompt-tuning,lora,qlora,last-layer,full"


def set_flags(overrides: dict) -> list[str]:
    """``--set key=value`` for each override, None as ``null``: how the command lines below pass a config."""
    return [f"--set={k}={'null' if v is None else v}" for k, v in overrides.items()]


def compare_args(model_dir, data_dir, out, methods: str = ALL_METHODS, **extra) -> list[str]:
    """``peftsum compare`` on the tiny model and demo data: 3 steps, beam search (4 beams) for every method."""
    ov = dict(tiny_overrides(model_dir, data_dir, **{"train.max_steps": 3, "eval.decoding.num_beams": 4, **extra}))
    return ["compare", "--preset", "demo", "--methods", methods, "--out", str(out),
            *set_flags(ov)]


@pytest.fixture(scope="session")
def compared(tmp_path_factory, tiny_model_dir, demo_dir) -> Path:
    """One ``compare`` of every method, shared by the whole test run: tests read it, or copy it before changing it."""
    from peftsum.cli import main

    def build(out):
        assert main(compare_args(tiny_model_dir, demo_dir, out)) == 0

    return built_once(tmp_path_factory, "compare", build)


@pytest.fixture(scope="session")
def gpt2_small_shape():
    """GPT-2 small's shape (12 x 768, 124M parameters) with random weights: counts by formula, never trained."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config())


def train_args(model_dir, data_dir, method, out, **extra) -> list[str]:
    """``peftsum train`` on the tiny model and demo data (learning rates that move it in a few steps)."""
    ov = dict(tiny_overrides(model_dir, data_dir, **{"method.name": method, "method.prompt_tuning.lr": 0.3,
                                                     "method.lora.lr": 1e-2, **extra}))
    return ["train", "--method", method, "--preset", "demo", "--out", str(out),
            *set_flags({k: v for k, v in ov.items() if k != "method.name"})]


def without_seconds(rows: list[dict]) -> list[dict]:
    """metrics.jsonl rows without their timings: what two runs of the same job must share exactly."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def method_cfg(method, model="gpt2", **kw):
    """A config of ``method`` on ``model`` (no preset), with ``key=value`` overrides."""
    from peftsum.config import load_config

    return load_config(None, None, [("method.name", method), ("model.name", model)] + list(kw.items()))


def prepared_for_decoding(model, cfg):
    """``cfg``'s method built and put on ``model`` for the decoding tests, in eval mode; LoRA's B (zero at the start)
    moved so that the adapter changes the output.  Returns the method."""
    from peftsum.methods import build_method

    m = build_method(cfg)
    m.prepare_model(model)
    if cfg.method.name == "lora":
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.5)
    model.eval()
    return m


def text_batch(tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def summary_logits(model, method, ids, mask):
    emb, m = method.embed(model, ids, mask)
    return model(inputs_embeds=emb, attention_mask=m).logits[:, method.num_virtual_tokens:]


SWEEP_SIZES = {"data.train_size": 32, "sweep.val_limit": 8, "sweep.reports": 2, "train.batch_size": 8}


def set_args(tiny_model_dir, demo_dir, **extra):
    """``--set key=value`` for the tiny model and demo data at a sweep's sizes."""
    ov = dict(tiny_overrides(tiny_model_dir, demo_dir, **{**SWEEP_SIZES, **extra}))
    return set_flags(ov)


def sweep_args(tiny_model_dir, demo_dir, out, trials, steps=4, methods="lora", **extra):
    return ["sweep", "--preset", "demo", "--methods", methods, "--trials", str(trials), "--steps", str(steps),
            "--out", str(out), *set_args(tiny_model_dir, demo_dir, **extra)]


def sweep_study(out, method="lora"):
    """The Optuna study a sweep wrote to ``out``, read through Optuna's own storage."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    storage = JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    return optuna.load_study(study_name=f"peftsum-{method}", storage=storage)


def raw_test_articles(demo_dir, ids):
    """The raw test articles (as in the CSV a user has) of the given ids, in that order."""
    import csv

    with open(demo_dir / "test.csv", newline="", encoding="utf-8") as f:
        by_id = {r["id"]: r["article"] for r in csv.DictReader(f)}
    return [by_id[i] for i in ids]


def eval_figure(results: dict, key: str):
    """A figure of a results.json's ``eval`` section by name: a metric (``rougeLsum``) or a field (``val_loss``)."""
    return results["eval"]["metrics"][key] if key in results["eval"]["metrics"] else results["eval"][key]


def signal_at_step(monkeypatch, sig: int, step: int) -> None:
    """A real signal to this process as the metrics line of training step ``step`` is written (mid-run, in-process);
    ``monkeypatch.undo()`` takes it away."""
    from peftsum.train import metrics_file

    real = metrics_file.MetricsFile.write

    def write(self, row):
        if row.get("type") == "train" and row["step"] == step:
            os.kill(os.getpid(), sig)
        real(self, row)

    monkeypatch.setattr(metrics_file.MetricsFile, "write", write)
