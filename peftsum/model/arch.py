"""Where a causal LM keeps its parts, read once for every model family.

GPT-2 keeps its decoder blocks in ``transformer.h`` and the final norm in ``ln_f``; Llama, Qwen2 and
most others in ``model.layers`` and ``model.norm``.  Methods, the loss and the FLOP count ask here
instead of naming GPT-2's attributes.
"""

from __future__ import annotations

import inspect

from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from ..errors import UserError

# peftsum's names where they differ from PEFT's table (the same modules: GPT-2's c_attn is its attention's)
_LORA_TARGETS = {"gpt2": ["attn.c_attn"]}


def trunk(model: nn.Module) -> nn.Module:
    """The transformer without its LM head (``model.transformer`` for GPT-2)."""
    return getattr(model, model.base_model_prefix)


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks, bottom to top."""
    t = trunk(model)
    for name in ("h", "layers", "blocks"):
        blocks = getattr(t, name, None)
        if isinstance(blocks, nn.ModuleList):
            return list(blocks)
    return list(next(m for m in t.modules() if isinstance(m, nn.ModuleList)))


def final_norm(model: nn.Module) -> nn.Module | None:
    """The norm after the last block (GPT-2 ``ln_f``, Llama ``norm``), if the model has one."""
    t = trunk(model)
    for name in ("ln_f", "norm", "final_layer_norm", "final_layernorm"):
        module = getattr(t, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def hidden_size(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "n_embd", None) or cfg.hidden_size)


def n_positions(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", 1024))


def attention_heads(model_config) -> int:
    return int(getattr(model_config, "n_head", None) or getattr(model_config, "num_attention_heads", 1) or 1)


def default_lora_targets(model: nn.Module) -> list[str]:
    """LoRA's default modules for the model's type: the attention's query and value projections, as Hu et
    al. adapt them (GPT-2 ``attn.c_attn``, Llama / Qwen2 / Mistral ``q_proj``, ``v_proj``, GPT-NeoX
    ``query_key_value``), from PEFT's table of model types."""
    model_type = getattr(model.config, "model_type", None)
    targets = _LORA_TARGETS.get(model_type) or TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if not targets:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise UserError(f"no default LoRA targets are known for model type {model_type!r}; set method.lora.targets "
                        f"to module-name suffixes of its attention (its linear layers: {', '.join(linear[:12])})")
    return list(targets)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` (dotted, as ``named_modules`` gives it) was."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def cache_kwarg(module: nn.Module) -> str:
    """The keyword a forward takes its key/value cache under: transformers 5.x renamed ``past_key_values`` to
    ``cache`` (the old name is deprecated, not yet removed)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"
