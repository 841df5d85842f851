"""The interface every method implements, and the parameter bookkeeping they share.

A method is a small object, not a training loop: it prepares a loaded base model (freeze, inject,
untie), names its trainable parameters, may add a prefix to the input embeddings, and saves / loads /
exports its own weights.  The shared loop (``peftsum.train.loop``) and the shared evaluation
(``peftsum.evaluate``) serve all of them.

What only some methods do is a *capability*, a class the method also derives from, which callers ask
for by type (``isinstance(method, CachedTrunk)``; ``issubclass(method_class(cfg), ModelFree)`` before
anything is built):

* :class:`Untrained`: nothing trains (zero-shot, Lead-3): no loop, no checkpoint, nothing to export;
* :class:`ModelFree`: an untrained method that needs no model at all, not even loaded (Lead-3);
* :class:`CachedTrunk`: gradients stop at the trunk's final hidden states, which never change while it
  trains, so the loop computes them once and trains the head on them (last-layer with a frozen trunk);
* :class:`OwnTrunk`: the trunk runs differently (prefix tuning's key/value prefix), so the method gives
  the final hidden states and generates with its own loop.

Where a capability depends on the settings, ``peftsum.methods.method_class(cfg)`` picks the class that
has it, so the answer is known from the config alone.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from peft import prepare_model_for_kbit_training
from torch import nn

from ..errors import UserError
from ..model.loading import is_quantized, logical_numel, resolve_model_name, store_frozen_in
from ..utils import write_json

METHOD_FILE = "peftsum_method.json"


def unique_params(params) -> list[nn.Parameter]:
    """Parameters counted once even when shared (GPT-2's lm_head is wte)."""
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def count(params) -> int:
    """Numbers in the parameters (a 4-bit parameter's two per byte counted as two)."""
    return sum(logical_numel(p) for p in unique_params(params))


class Method:
    """The core every method implements (the baselines included).

    Its traits, which every other layer asks the registry entry for (``peftsum.methods.entry(name)``) instead of
    naming methods: whether it trains (:class:`Untrained`), whether its run folder is a PEFT adapter folder, its
    colour in the figures, why its defaults are what they are (the report), whether a default comparison runs it,
    whether it is the reference the scale report measures gaps to, and what a sweep searches besides the rate."""

    name: str = ""
    num_virtual_tokens: int = 0  # soft-prompt rows the method puts in front of the input (context it uses)
    adapter_folder: bool = False  # the run folder is a PEFT adapter folder (adapter_config.json + weights)
    soft_prompt: bool = False  # its export generates with a soft prompt in front (PEFT's get_prompt)
    color: str | None = None  # in the figures; None: one of the colours the built-in methods leave free
    rationale: str = ""  # the report's "why these defaults"
    in_defaults: bool = True  # run by `compare` / `sweep` without --methods
    gap_reference: bool = False  # the scale report's gap of every other method is to this one

    @classmethod
    def trained(cls) -> bool:
        return not issubclass(cls, Untrained)

    @classmethod
    def search_space(cls, sweep_cfg) -> list[tuple[str, list]]:
        """What a sweep's trial chooses besides the learning rate: (setting of the method's section, its values)."""
        return []

    def __init__(self, cfg, tokenizer=None, compute_dtype: torch.dtype | None = None):
        """``cfg``: the whole config (the method reads its own section); ``tokenizer``: the model's, for a method
        that needs text (prompt tuning's "[SUMMARIZE]" initialisation; loaded from the config where not given);
        ``compute_dtype``: the dtype the run's matmuls take under mixed precision (None: float32), in which the
        frozen linear weights are stored (``train.frozen_weights_in_compute_dtype``)."""
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.compute_dtype = compute_dtype
        self.base_total = 0

    # --- preparing the model ----------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Freeze / inject / untie in place; remember the base model's size for the 'added' count; checkpoint
        activations where ``train.gradient_checkpointing`` asks (every caller that trains: a run, a sweep's trial,
        ``plan``); store the frozen linear weights in the compute dtype (mixed precision)."""
        self.base_total = count(model.parameters())
        if is_quantized(model):  # PEFT's preparation: everything frozen, what is not quantized kept in float32
            prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        for p in model.parameters():
            p.requires_grad_(False)
        self._adapt(model)
        if self.cfg.train.gradient_checkpointing:
            self._checkpoint_activations(model)
        if self.cfg.train.frozen_weights_in_compute_dtype and self.compute_dtype not in (None, torch.float32):
            store_frozen_in(model, self.compute_dtype)
        return model

    def _checkpoint_activations(self, model: nn.Module) -> None:
        """transformers' activation checkpointing of every decoder block, non-reentrant (inputs need not require
        gradients, so the frozen blocks under a trained one run no backward).  Prefix tuning is refused: PEFT feeds
        its prefix as a key/value cache, which checkpointed blocks do not take.  Active only while training."""
        if isinstance(self, OwnTrunk):
            raise UserError(f"train.gradient_checkpointing does not work with {self.name} (PEFT passes its prefix to "
                            "every block as a key/value cache, which checkpointed blocks refuse); set it to false")
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise UserError(f"{type(model).__name__} does not support gradient checkpointing; set "
                            "train.gradient_checkpointing to false")
        enable = getattr(model, "activation_checkpointing_enable", None)  # its newer name; transformers 5.17 has only the older
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.disable_input_require_grads()  # transformers' hook for reentrant checkpointing: not needed here

    def _adapt(self, model: nn.Module) -> None:
        """What the method changes in the frozen base model (nothing for the baselines)."""

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        seen, out = set(), []
        for n, p in model.named_parameters(remove_duplicate=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append((n, p))
        return out

    def lr_scale(self, name: str) -> float:
        """The factor on the learning rate of the trained parameter ``name`` (1: the method's rate)."""
        return 1.0

    def param_counts(self, model: nn.Module) -> dict:
        total = count(model.parameters())
        return {"total": total, "trainable": count(p for _, p in self.trainable_parameters(model)),
                "added": total - self.base_total}

    def train_mode(self, model: nn.Module) -> None:
        """Put the model in training mode for this method (dropout where it trains)."""
        model.train()

    # --- the forward hooks ----------------------------------------------------------------
    def embed(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """Input embeddings and mask the transformer sees; a soft prompt prepends rows here."""
        return model.get_input_embeddings()(input_ids), attention_mask

    def decoding(self):
        """How this method's summaries are generated (``eval.decoding``; zero-shot may follow the GPT-2 paper)."""
        return self.cfg.eval.decoding

    # --- weights --------------------------------------------------------------------------
    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors this method trained (what a checkpoint must hold)."""
        return {n: p.detach() for n, p in self.trainable_parameters(model)}

    def load_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters(remove_duplicate=False))
        missing = [k for k in self.state_dict(model) if k not in state]
        if missing:
            raise UserError(f"checkpoint lacks {len(missing)} tensors of method {self.name}, e.g. {missing[0]}")
        with torch.no_grad():
            for k, v in state.items():
                if k not in params:
                    raise UserError(f"checkpoint tensor {k!r} does not belong to method {self.name}")
                params[k].copy_(v)

    def save(self, model: nn.Module, run_dir: Path) -> None:
        """Write the method's weights to ``run_dir`` (atomically)."""

    def load(self, model: nn.Module, run_dir: Path) -> None:
        """Load weights written by :meth:`save` onto a prepared base model."""

    def describe(self, model: nn.Module | None) -> dict:
        """Hyperparameters of the method, for the report; ``model``: the model it prepared (None: a method that uses
        none)."""
        section = self.cfg.method_section()
        out = dataclasses.asdict(section) if section is not None else {}
        if self.cfg.quantization() != "none":
            out["quantize"] = self.cfg.quantization()
        return out

    def base_model_path(self) -> str:
        """Where the base model loads from here: its hub id or local path (the demo base's built directory)."""
        return resolve_model_name(self.cfg.model.name)

    def base_model_name(self) -> str:
        """The base model as configured (``gpt2``, ``demo``, the user's path): what saved files record, so a
        run directory moved to another machine names nothing of this one."""
        return self.cfg.model.name

    def write_method_file(self, run_dir: Path, model: nn.Module | None, extra: dict | None = None) -> None:
        write_json(Path(run_dir) / METHOD_FILE, {"method": self.name, "base_model": self.base_model_name(),
                                                 **self.describe(model), **(extra or {})})

    # --- a standalone copy (``peftsum export``) -----------------------------------------------
    def export(self, model: nn.Module, folder: Path, merge: bool = True) -> tuple[str, str]:
        """Write what transformers (or PEFT) loads without peftsum into ``folder``; returns the kind of folder
        (``model``: ``save_pretrained`` of the whole model; ``adapter``: a PEFT adapter) and a note for the user.
        The default: the whole model (last-layer with its untied head, full fine-tuning)."""
        model.save_pretrained(str(folder))
        return "model", ""


# --- capabilities: asked for with isinstance / issubclass ---------------------------------------

class Untrained:
    """Nothing trains (zero-shot, Lead-3): no training loop, no checkpoint, no hyperparameters to report, no
    weights to export.  What it saves is the method file that says what ran."""

    def save(self, model: nn.Module, run_dir: Path) -> None:
        self.write_method_file(run_dir, model)

    def describe(self, model: nn.Module | None) -> dict:
        return {}

    def export(self, model: nn.Module, folder: Path, merge: bool = True) -> tuple[str, str]:
        raise UserError(f"{self.name} trains nothing: there is no model to export (its base model is "
                        f"{self.cfg.model.name!r})")


class ModelFree(Untrained):
    """An untrained method that needs no model at all (Lead-3): the model is not loaded, only the tokenizer
    that measures the articles."""


class CachedTrunk:
    """Only the head trains and the trunk below it is frozen and deterministic (no dropout): the trunk's final
    hidden states are fixed, so the loop computes them once (``train.features.FeatureCache``) and trains the
    head on them.  Same loss, a fraction of the work; the plan and the FLOP count account the one trunk pass."""


class OwnTrunk:
    """The trunk runs differently (prefix tuning: a key/value prefix in front of every layer): the method gives
    the trunk's final hidden states, and generates with its own loop (the shared batched decoder has no place
    for such a prefix)."""

    def hidden_states(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The trunk's final hidden states over the input positions (a right-padded batch)."""
        raise NotImplementedError

    def generate_ids(self, input_ids, attention_mask, decoding, eos_id: int, pad_id: int) -> list[list[int]]:
        """New tokens of a left-padded batch (eos and everything after it removed)."""
        raise NotImplementedError


def read_method_file(run_dir: Path) -> dict:
    path = Path(run_dir) / METHOD_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} holds no saved method weights ({METHOD_FILE} missing); train it first")
    return json.loads(path.read_text())
