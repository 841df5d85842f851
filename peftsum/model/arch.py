"""Where a causal LM keeps its parts, read once for every model family.

GPT-2 keeps its decoder blocks in ``transformer.h`` and the final norm in ``ln_f``; Llama, Qwen2 and
most others in ``model.layers`` and ``model.norm``.  Methods, the loss and the FLOP count ask here
instead of naming GPT-2's attributes.
"""

from __future__ import annotations

from torch import nn


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
