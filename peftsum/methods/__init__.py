"""The methods, one file each, behind the interface in :mod:`peftsum.methods.base`."""

from __future__ import annotations

from ..config import METHODS, PEFT_METHOD, UNTRAINED_METHODS
from .base import CachedTrunk, Method, ModelFree, OwnTrunk, Untrained
from .baselines import Lead3, ZeroShot
from .full import Full
from .last_layer import CachedLastLayer, LastLayer, frozen_trunk
from .lora import LoRA, QLoRA
from .peft_tuner import PeftTuner, peft_tuner_class
from .prompt_tuning import PromptTuning

REGISTRY: dict[str, type[Method]] = {
    cls.name: cls for cls in (ZeroShot, Lead3, PromptTuning, LoRA, QLoRA, LastLayer, Full)} | {PEFT_METHOD: PeftTuner}
# the config validates method names before anything imports torch: its list and its untrained ones are these
assert tuple(REGISTRY) == (*METHODS, PEFT_METHOD), "config.METHODS and the registry name the same methods"
assert UNTRAINED_METHODS == tuple(m for m in METHODS if not REGISTRY[m].trained())


def entry(name: str) -> type[Method]:
    """The registry entry of a method or of a run's name (a ``peft-<name>`` run folder is a PEFT tuner's): what every
    layer asks for a method's traits."""
    if name == PEFT_METHOD or name.startswith(f"{PEFT_METHOD}-"):
        return PeftTuner
    if name not in REGISTRY:
        raise KeyError(name)
    return REGISTRY[name]


def trained_methods() -> tuple[str, ...]:
    return tuple(m for m in METHODS if REGISTRY[m].trained())


def default_methods(trained_only: bool = False) -> tuple[str, ...]:
    """What `compare` (every method) and `sweep` / `plan` (``trained_only``) run without --methods."""
    return tuple(m for m in METHODS if REGISTRY[m].in_defaults and (REGISTRY[m].trained() or not trained_only))


def method_class(cfg) -> type[Method]:
    """The class that runs ``cfg.method``, with the capabilities its settings give it (see
    :mod:`peftsum.methods.base`): callers ask ``issubclass(method_class(cfg), ModelFree)`` before anything is built."""
    m = cfg.method
    if m.name == "last-layer" and frozen_trunk(m.last_layer):
        return CachedLastLayer
    if m.name == "peft":
        return peft_tuner_class(cfg)
    return REGISTRY[m.name]


def build_method(cfg, tokenizer=None, compute_dtype=None) -> Method:
    """The method of ``cfg``, with everything it needs: the config, the model's tokenizer and the run's compute dtype
    (None: float32)."""
    return method_class(cfg)(cfg, tokenizer, compute_dtype)


__all__ = ["REGISTRY", "CachedTrunk", "Method", "ModelFree", "OwnTrunk", "Untrained", "ZeroShot", "build_method",
           "PeftTuner", "default_methods", "entry", "method_class", "trained_methods"]
