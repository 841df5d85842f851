"""The methods, one file each, behind the interface in :mod:`peftsum.methods.base`."""

from __future__ import annotations

from .base import Method
from .baselines import Lead3, ZeroShot
from .full import Full
from .last_layer import LastLayer
from .lora import LoRA, PeftLoRA
from .peft_tuner import PeftTuner
from .prompt_tuning import PromptTuning

REGISTRY: dict[str, type[Method]] = {
    "zero-shot": ZeroShot, "lead-3": Lead3, "prompt-tuning": PromptTuning, "lora": LoRA,
    "last-layer": LastLayer, "full": Full, "peft": PeftTuner,
}


def method_class(cfg) -> type[Method]:
    """The class that runs ``cfg.method`` (its class flags answer before anything is built)."""
    if cfg.method.name == "lora" and cfg.method.lora.backend == "peft":
        return PeftLoRA
    return REGISTRY[cfg.method.name]


def build_method(cfg, tokenizer=None) -> Method:
    """The method of ``cfg``, with everything it needs: the config and the model's tokenizer."""
    return method_class(cfg)(cfg, tokenizer)


__all__ = ["Method", "REGISTRY", "build_method", "method_class"]
