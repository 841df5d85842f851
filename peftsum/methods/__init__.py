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


def build_method(cfg) -> Method:
    if cfg.method.name == "lora" and cfg.method.lora.backend == "peft":
        return PeftLoRA(cfg)
    return REGISTRY[cfg.method.name](cfg)


__all__ = ["Method", "REGISTRY", "build_method"]
