"""Load a causal LM by hub name or local directory (``demo``: the cached demo base), and its tokenizer
(:mod:`peftsum.model.tokenizer`)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig
from transformers.pytorch_utils import Conv1D

from ..errors import UserError
from .arch import n_positions
from .demo_base import DEMO_CONFIG, DEMO_MODELS, demo_model_dir, is_demo_model
from .tokenizer import GPT2_FAMILY, hub_alias, load_tokenizer, offline_gpt2_tokenizer

__all__ = ["GPT2_SHAPES", "is_quantized", "load_base", "load_model", "random_shape", "load_tokenizer", "logical_numel", "n_positions", "offline_gpt2_tokenizer",
           "quantization_config", "resolve_model_name", "set_dropout", "store_frozen_in", "stored_tensors"]

log = logging.getLogger(__name__)

def resolve_model_name(name: str) -> str:
    """``demo`` (``demo-small``, ``demo-large``) -> the cached demo base directory (built on first use); anything
    else unchanged."""
    if is_demo_model(name):
        return str(demo_model_dir(name))
    return name


# (layers, width, heads) of the GPT-2 checkpoints on the hub (Radford et al. 2019; the hub's config.json files)
GPT2_SHAPES = {"gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
               "gpt2-xl": (48, 1600, 25), "distilgpt2": (6, 768, 12)}
assert set(GPT2_SHAPES) == GPT2_FAMILY


def random_shape(name: str, seed: int = 0, attn_implementation: str = "auto"):
    """The causal LM ``name`` with random weights and none downloaded (``peftsum plan --shape random``): the GPT-2
    family from :data:`GPT2_SHAPES`, any other model from its ``config.json`` (a local directory, or the hub's file
    alone); its attention ``attn_implementation`` unless "auto".  Returns (model, description)."""
    alias = hub_alias(name)
    if alias in GPT2_SHAPES:
        n_layer, n_embd, n_head = GPT2_SHAPES[alias]
        config = AutoConfig.for_model("gpt2", n_layer=n_layer, n_embd=n_embd, n_head=n_head)
    elif is_demo_model(name):  # its shape without pre-training it
        config = AutoConfig.for_model("gpt2", **{**DEMO_CONFIG, **DEMO_MODELS[name]})
    else:
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise UserError(f"--shape random: no config for {name!r} ({str(e).splitlines()[0]}); known offline: "
                            f"{', '.join(GPT2_SHAPES)}") from None
    torch.manual_seed(seed)
    attn = {} if attn_implementation == "auto" else {"attn_implementation": attn_implementation}
    model = AutoModelForCausalLM.from_config(config, **attn)
    layers = getattr(config, "num_hidden_layers", None)
    width = getattr(config, "hidden_size", None)
    return model, f"{name} shape ({layers} x {width}), random weights"


def quantization_config(quantize: str, compute_dtype: torch.dtype = torch.float32) -> BitsAndBytesConfig | None:
    """bitsandbytes' settings for ``model.quantize``: nf4 as QLoRA (Dettmers et al. 2023) has it, 4-bit NormalFloat
    with the quantization constants quantized again (double quantization), matmuls in ``compute_dtype`` (the run's
    precision); int8: LLM.int8().  None for "none".  A missing bitsandbytes is a UserError naming the extra."""
    if quantize == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"model.quantize {quantize} needs bitsandbytes, which is not installed: "
                        "pip install 'peftsum[qlora]' (or pip install bitsandbytes)")
    if quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def is_quantized(model) -> bool:
    """Loaded with bitsandbytes (``model.quantize`` nf4 or int8)?"""
    return getattr(model, "quantization_method", None) is not None or bool(getattr(model, "is_quantized", False))


def load_model(name: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
               attn_implementation: str = "auto", quantize: str = "none", compute_dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None):
    """Load a causal LM (with ``attn_implementation`` unless "auto"); a missing path, a model that is not a causal LM
    or an attention kernel that cannot run here is a UserError.

    ``quantize`` (nf4, int8): its linear layers quantized by bitsandbytes as they load, placed on ``device`` (a
    quantized model is not moved after loading), with ``compute_dtype`` the 4-bit layers' matmul precision."""
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
    quant = quantization_config(quantize, compute_dtype)
    if quant is not None:
        attn.update(quantization_config=quant, device_map={"": torch.device(device or "cpu")})
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
    if quant is not None:
        keep_trainable_layout(model)
    return model


def logical_numel(p: torch.Tensor) -> int:
    """The numbers a parameter stands for: a 4-bit parameter packs two per byte (its ``quant_state`` has the shape)."""
    state = getattr(p, "quant_state", None)
    shape = getattr(state, "shape", None)
    return int(torch.Size(shape).numel()) if shape is not None else p.numel()


def stored_tensors(p: torch.Tensor) -> list[torch.Tensor]:
    """The tensors that hold a parameter: itself, and a quantized one's constants (4-bit: the absmax of each block of
    64, the 16 NF4 values, and with double quantization the absmax of each 256 of those, its 256-value code and an
    offset; int8: the rows' scales)."""
    out = [p]
    state = getattr(p, "quant_state", None)
    if state is not None:
        out += [state.absmax, state.code]
        if getattr(state, "nested", False):
            out += [state.state2.absmax, state.state2.code, state.offset]
    scales = getattr(p, "SCB", None)
    if torch.is_tensor(scales):
        out.append(scales)
    return out


def load_base(cfg, device: torch.device | str | None = None, compute_dtype: torch.dtype = torch.float32):
    """The base model a run of ``cfg`` adapts: ``model.name`` loaded (quantized where ``cfg.quantization()`` says,
    on ``device``, matmuls in ``compute_dtype``), its dropout set (``model.dropout``)."""
    model = load_model(resolve_model_name(cfg.model.name), cfg.model.trust_remote_code,
                       attn_implementation=cfg.model.attn_implementation, quantize=cfg.quantization(),
                       compute_dtype=compute_dtype, device=device)
    set_dropout(model, cfg.model.dropout)
    return model


def store_frozen_in(model, dtype: torch.dtype) -> int:
    """Store every frozen float32 weight and bias of the model's linear layers (``nn.Linear``, transformers'
    ``Conv1D``) in ``dtype``, except the input embeddings (a tied LM head): under autocast in ``dtype`` the matmuls
    see the same values without a cast at every call.  Returns how many tensors changed."""
    embedding = model.get_input_embeddings().weight
    changed = 0
    for module in model.modules():
        if not isinstance(module, (nn.Linear, Conv1D)) or module.weight is embedding:
            continue
        for p in (module.weight, getattr(module, "bias", None)):
            if p is not None and not p.requires_grad and p.dtype == torch.float32:
                p.data = p.data.to(dtype)
                changed += 1
    return changed


def keep_trainable_layout(model) -> None:
    """bitsandbytes' 4-bit layers on a CPU with AVX512-BF16 repack their weights for inference at the first forward
    in eval mode without gradients (a validation), and the repacked path has no backward: training after it fails,
    or its gradient stops at those layers.  Training alternates with validation, so the repacking is turned off."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


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
