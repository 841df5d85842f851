"""Load a causal LM by hub name or local directory (``demo``: the cached demo base), and its tokenizer
(:mod:`peftsum.model.tokenizer`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ..errors import UserError
from .arch import n_positions
from .demo_base import ensure_demo_base
from .tokenizer import load_tokenizer, offline_gpt2_tokenizer

__all__ = ["load_model", "load_tokenizer", "n_positions", "offline_gpt2_tokenizer", "resolve_model_name",
           "set_dropout"]

log = logging.getLogger(__name__)

def resolve_model_name(name: str) -> str:
    """``demo`` -> the cached demo base directory (built on first use); anything else unchanged."""
    if name == "demo":
        return str(ensure_demo_base())
    return name


def load_model(name: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
               attn_implementation: str = "auto"):
    """Load a causal LM (with ``attn_implementation`` unless "auto"); a missing path, a model that is not a causal LM
    or an attention kernel that cannot run here is a UserError."""
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
    attn = {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
    try:
        model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trust_remote_code, dtype=dtype, **attn)
    except ImportError as e:
        raise UserError(f"model.attn_implementation {attn_implementation} cannot run here: "
                        f"{str(e).splitlines()[0]}") from None
    except ValueError as e:
        if attn and attn_implementation in str(e):
            raise UserError(f"model.attn_implementation {attn_implementation} cannot run with {name!r}: "
                            f"{str(e).splitlines()[0]}") from None
        raise UserError(f"{name!r} ({config.model_type}) is not a causal language model: {str(e).splitlines()[0]}") from None
    except OSError as e:
        raise UserError(f"could not load model weights from {name!r}: {str(e).splitlines()[0]}") from None
    model.config.pad_token_id = model.config.pad_token_id or model.config.eos_token_id
    return model


def set_dropout(model, p: float | None) -> None:
    """Set every dropout of the loaded transformer (attention, residual, embedding) to ``p``; None keeps
    the checkpoint's.  Called on the base model before a method adds its own layers, so a method's own
    dropout (LoRA's) is separate and not touched."""
    if p is None:
        return
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = p
    for key in ("attn_pdrop", "resid_pdrop", "embd_pdrop", "attention_dropout", "hidden_dropout", "dropout"):
        if isinstance(getattr(model.config, key, None), float):
            setattr(model.config, key, p)
