"""Shared fixtures: an isolated cache, a tiny GPT-2 (real tokenizer) saved with save_pretrained, and a
small Kaggle-style CSV directory of the demo corpus."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# every test run gets its own cache (tokenized data, tokenizer files, demo base)
os.environ.setdefault("PEFTSUM_CACHE", tempfile.mkdtemp(prefix="peftsum-test-cache-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# no test reaches a hub: without this every lookup of a hub id (e.g. the "gpt2" tokenizer before its offline
# fallback) waits for the network to time out, 48 s for the first one here
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

TINY_CONFIG = dict(n_layer=2, n_embd=64, n_head=4, n_positions=1024, vocab_size=50257,
                   resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
TINY_RECIPE = dict(steps=120, batch_size=8, seq_len=64, lr=3e-3, warmup=5, seed=0, corpus="demo-v1", version=1)


@pytest.fixture(scope="session")
def tokenizer():
    from peftsum.model.loading import offline_gpt2_tokenizer

    return offline_gpt2_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2 x 64 GPT-2 briefly pre-trained on demo articles, saved with save_pretrained."""
    from peftsum.model.demo_base import ensure_demo_base

    return ensure_demo_base(TINY_CONFIG, TINY_RECIPE, root=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from peftsum.data.demo import write_demo_corpus

    return write_demo_corpus(tmp_path_factory.mktemp("demo"), {"train": 160, "validation": 40, "test": 40})


def tiny_overrides(model_dir, data_dir, **extra):
    ov = {"model.name": str(model_dir), "model.tokenizer": None, "data.source": str(data_dir),
          "data.train_size": 64, "data.val_size": 16, "data.test_size": 16, "data.max_source_tokens": 96,
          "data.max_target_tokens": 48, "train.epochs": 1, "train.batch_size": 8, "train.progress": False,
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
