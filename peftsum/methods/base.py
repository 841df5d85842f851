"""The interface every method implements, and the parameter bookkeeping they share.

A method is a small object, not a training loop: it prepares a loaded base model (freeze, inject,
untie), names its trainable parameters, may add a prefix to the input embeddings, and saves / loads
its own weights in a run directory.  The shared loop (``peftsum.train.loop``) and the shared
evaluation (``peftsum.evaluate``) serve all of them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..model.loading import resolve_model_name
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
    return sum(p.numel() for p in unique_params(params))


class Method:
    name: str = ""
    trains: bool = True
    uses_model: bool = True
    num_virtual_tokens: int = 0
    trunk_backward: bool = True  # do gradients flow back through the transformer blocks?
    cache_features: bool = False  # frozen trunk: the loop may cache its final hidden states
    fast_generation: bool = True  # peftsum's greedy loop applies; else the method's own generate_ids

    def __init__(self, cfg, tokenizer=None):
        """``cfg``: the whole config (the method reads its own section); ``tokenizer``: the model's, for a method
        that needs text (prompt tuning's "[SUMMARIZE]" initialisation; loaded from the config where not given)."""
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.base_total = 0

    # --- preparing the model ----------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Freeze / inject / untie in place; remember the base model's size for the 'added' count."""
        self.base_total = count(model.parameters())
        for p in model.parameters():
            p.requires_grad_(False)
        self._adapt(model)
        return model

    def _adapt(self, model: nn.Module) -> None:
        """What the method changes in the frozen base model (nothing for the baselines)."""

    def trainable_parameters(self, model: nn.Module) -> list[tuple[str, nn.Parameter]]:
        seen, out = set(), []
        for n, p in model.named_parameters(remove_duplicate=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append((n, p))
        return out

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

    def hidden_states(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """The trunk's final hidden states over the input positions, for a method whose trunk call differs
        (prefix tuning's key/value prefix); None: the shared path (:meth:`embed`, then the trunk)."""
        return None

    def generate_ids(self, input_ids, attention_mask, decoding, eos_id: int, pad_id: int) -> list[list[int]]:
        """New tokens of a left-padded batch, for a method without ``fast_generation``."""
        raise NotImplementedError

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

    def describe(self) -> dict:
        """Hyperparameters of the method, for the report."""
        section = self.cfg.method_section()
        return dataclasses.asdict(section) if section is not None else {}

    def base_model_path(self) -> str:
        """Where the base model loads from here: its hub id or local path (the demo base's built directory)."""
        return resolve_model_name(self.cfg.model.name)

    def base_model_name(self) -> str:
        """The base model as configured (``gpt2``, ``demo``, the user's path): what saved files record, so a
        run directory moved to another machine names nothing of this one."""
        return self.cfg.model.name

    def write_method_file(self, run_dir: Path, extra: dict | None = None) -> None:
        write_json(Path(run_dir) / METHOD_FILE, {"method": self.name, "base_model": self.base_model_name(),
                                                 **self.describe(), **(extra or {})})

    # --- a standalone copy (``peftsum export``) -----------------------------------------------
    def export(self, model: nn.Module, folder: Path, merge: bool = True) -> tuple[str, str]:
        """Write what transformers (or PEFT) loads without peftsum into ``folder``; returns the kind of folder
        (``model``: ``save_pretrained`` of the whole model; ``adapter``: a PEFT adapter) and a note for the user.
        The default: the whole model (last-layer with its untied head, full fine-tuning)."""
        if not self.trains:
            raise UserError(f"{self.name} trains nothing: there is no model to export (its base model is "
                            f"{self.cfg.model.name!r})")
        model.save_pretrained(str(folder))
        return "model", ""


def read_method_file(run_dir: Path) -> dict:
    path = Path(run_dir) / METHOD_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} holds no saved method weights ({METHOD_FILE} missing); train it first")
    return json.loads(path.read_text())
