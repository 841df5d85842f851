"""The demo base model: a small GPT-2 pre-trained briefly on the demo corpus's articles.

Prompt tuning and last-layer tuning only make sense on a trunk that already models the language,
as GPT-2 does for news text, so the demo base is first trained as a language model on the demo
*articles* (never the summaries, never the "TL;DR:" format).  It uses the real GPT-2 tokenizer and
vocabulary (50,257 rows).  To fit in about a minute on two CPU cores, pre-training restricts the
softmax to the token ids that occur in the corpus (a few thousand of 50,257); every other row of the
tied embedding keeps its random initialisation.  Fine-tuning and evaluation always use the full
vocabulary.  The result is saved with ``save_pretrained`` (model and tokenizer) under the cache
directory, keyed by the config and recipe, and reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from ..data.demo import generate
from ..utils import atomic_dir, cache_dir
from .tokenizer import offline_gpt2_tokenizer

log = logging.getLogger(__name__)

DEMO_CONFIG = dict(n_layer=4, n_embd=128, n_head=4, n_positions=1024, vocab_size=50257,
                   resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
RECIPE = dict(steps=300, batch_size=16, seq_len=128, lr=3e-3, warmup=30, seed=0, corpus="demo-v1", version=1)
# model.name of the demo bases: the demo preset's, and a smaller and a larger one for the demo-scale grid (each
# built once with the same recipe and cached)
DEMO_MODELS = {"demo-small": dict(n_layer=2, n_embd=64, n_head=2), "demo": {},
               "demo-large": dict(n_layer=4, n_embd=192, n_head=6)}


def is_demo_model(name: str) -> bool:
    return name in DEMO_MODELS


def demo_model_dir(name: str) -> Path:
    """The cached directory of the demo base ``name`` (built on first use)."""
    return ensure_demo_base({**DEMO_CONFIG, **DEMO_MODELS[name]})


def demo_base_key(config: dict | None = None, recipe: dict | None = None) -> str:
    blob = json.dumps({"config": config or DEMO_CONFIG, "recipe": recipe or RECIPE}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_demo_base(config: dict | None = None, recipe: dict | None = None, root: Path | None = None) -> Path:
    config, recipe = config or DEMO_CONFIG, recipe or RECIPE
    folder = (root or cache_dir()) / f"demo-base-{demo_base_key(config, recipe)}"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    log.warning("building the demo base model once (pre-training %d steps on the demo articles) -> %s",
                recipe["steps"], folder)
    tokenizer = offline_gpt2_tokenizer()
    articles = [r["article"] for r in generate(2000, seed=1234)]  # the demo corpus's train split
    model = pretrain(articles, tokenizer, config, recipe)
    with atomic_dir(folder, "model.safetensors") as tmp:  # another process may build it at the same time
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "peftsum_demo_base.json").write_text(json.dumps({"config": config, "recipe": recipe}, indent=2))
    return folder


def pretrain(articles: list[str], tokenizer, config: dict, recipe: dict) -> GPT2LMHeadModel:
    torch.manual_seed(recipe["seed"])
    model = GPT2LMHeadModel(GPT2Config(**config, bos_token_id=50256, eos_token_id=50256))
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(articles)["input_ids"]:
        stream.extend(ids + [eos])
    L = recipe["seq_len"]
    data = torch.tensor(stream[: len(stream) // L * L]).view(-1, L)
    vocab = torch.unique(data)  # restricted softmax: only ids that occur in the corpus
    remap = torch.full((config["vocab_size"],), -1, dtype=torch.long)
    remap[vocab] = torch.arange(len(vocab))
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / recipe["warmup"]) * max(0.05, 1 - s / recipe["steps"]))
    gen = torch.Generator().manual_seed(recipe["seed"])
    model.train()
    for step in range(recipe["steps"]):
        idx = torch.randint(0, len(data), (recipe["batch_size"],), generator=gen)
        x = data[idx]
        h = model.transformer(input_ids=x).last_hidden_state[:, :-1]
        logits = h @ model.lm_head.weight[vocab].T
        loss = F.cross_entropy(logits.reshape(-1, len(vocab)), remap[x[:, 1:]].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == recipe["steps"] - 1:
            log.info("demo base pre-training step %d/%d loss %.3f", step + 1, recipe["steps"], loss.item())
    model.eval()
    return model
