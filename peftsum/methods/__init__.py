"""The methods, one file each, behind the interface in :mod:`peftsum.methods.base`."""

from __future__ import annotations

from .base import CachedTrunk, Method, ModelFree, OwnTrunk, Untrained
from .baselines import Lead3, ZeroShot
from .full import Full
from .last_layer import CachedLastLayer, LastLayer, frozen_trunk
from .lora import LoRA, PeftLoRA, PeftQLoRA, QLoRA
from .peft_tuner import PeftTuner, peft_tuner_class
from .prompt_tuning import PromptTuning

REGISTRY: dict[str, type[Method]] = {
    "zero-shot": ZeroShot, "lead-3": Lead3, "prompt-tuning": PromptTuning, "lora": LoRA,
    "qlora": QLoRA, "last-layer": LastLayer, "full": Full, "peft": PeftTuner,
}


def method_class(cfg) -> type[Method]:
    """The class that runs ``cfg.method``, with the capabilities its settings give it (see
    :mod:`peftsum.methods.base`): callers ask ``issubclass(method_class(cfg), ModelFree)`` before anything is built."""
    m = cfg.method
    if m.name in ("lora", "qlora") and m.lora.backend == "peft":
        return PeftQLoRA if m.name == "qlora" else PeftLoRA
    if m.name == "last-layer" and frozen_trunk(m.last_layer) and m.last_layer.cache_features:
        return CachedLastLayer
    if m.name == "peft":
        return peft_tuner_class(cfg)
    return REGISTRY[m.name]


def build_method(cfg, tokenizer=None, compute_dtype=None) -> Method:
    """The method of ``cfg``, with everything it needs: the config, the model's tokenizer and the run's compute dtype
    (None: float32)."""
    return method_class(cfg)(cfg, tokenizer, compute_dtype)


__all__ = ["REGISTRY", "CachedTrunk", "Method", "ModelFree", "OwnTrunk", "Untrained", "build_method", "method_class"]
