"""LoRA (Hu et al., 2021): a trainable low-rank update beside a frozen weight.

For a frozen layer ``y = x W + b`` (W of shape [in, out]) LoRA learns

    y = x W + b + (dropout(x) A B) * (alpha / r),     A: [in, r],  B: [r, out]

With ``method.lora.lr_ratio`` = λ > 1 (LoRA+, Hayou et al. 2024) B trains at λ times A's learning rate: with
B starting at zero and A random, equal rates leave the update learning inefficiently at large width.

With ``method.lora.rslora`` (rank-stabilised LoRA, Kalajdzievski 2023) the factor is alpha / sqrt(r): with
alpha / r the update's size shrinks as r grows, so a larger rank learns slower at the same learning rate.

With ``method.lora.dora`` (weight-decomposed LoRA, Liu et al. 2024) the adapted weight is split into a direction
and a trained magnitude m (one number per output, starting at the norm of W's column):

    W' = m * (W + ΔW) / ||W + ΔW||_c,      y = x W' + b

where ||·||_c is each output column's norm, treated as a constant in the backward (the paper's §4.3, as PEFT
does).  In the forward that is ``y = base(x) + (s - 1) * (x W) + s * dropout(x) A B * scaling`` with s = m / ||W
+ ΔW||_c, and x W taken on the dropped input where dropout is active, PEFT's arrangement, so outputs equal PEFT's.

A starts kaiming-uniform and B at zero, so at initialisation the model is exactly the base model
and the update ΔW = A B (rank <= r) grows from nothing.  Only A and B train: r (in + out) numbers
per adapted matrix instead of in x out.  ``merge()`` folds ΔW into W for inference at zero extra
cost (the export).  A variant (DoRA) is a :class:`LoraVariant`: the parameters it adds, its forward and its
merged weight, beside plain LoRA's.  transformers' GPT-2 uses ``Conv1D`` whose weight is stored
[in, out]; ``nn.Linear`` stores [out, in]: both are handled.

Saved in HF PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``, lora_A.weight
= Aᵀ of shape [r, in], lora_B.weight = Bᵀ of shape [out, r]) so ``peft.PeftModel.from_pretrained``
loads it.  The tests hold these layers to PEFT's own (the same logits, gradients and DoRA, PEFT's layers
injected from :meth:`LoRA.peft_config`); PEFT's own layers run as ``method: peft`` with a LoRA config.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils.integrations import dequantize_module_weight
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..errors import UserError
from ..model.arch import default_lora_targets, replace_module
from ..model.loading import is_quantized, load_model, set_dropout
from ..utils import safe_load_file, save_file_atomic
from .base import Method

PEFT_PREFIX = "base_model.model."
MAGNITUDE = "lora_magnitude_vector"  # DoRA's magnitude in PEFT's files (its parameter: lora_magnitude_vector.default.weight)


class LoraVariant:
    """What a variant of LoRA changes, PEFT's ``LoraVariant`` hooks: the parameters it adds to a layer (``init``), the
    layer's output from the base's output ``y``, the update path's (dropped) input ``h`` and the update
    ``(h A B) * scaling`` (``forward``), and the weight a merge writes (``merged_weight``, in the base layer's storage
    layout).  Plain LoRA adds the update.  A new variant is one more subclass, picked in :class:`LoRALayer`."""

    @staticmethod
    def init(layer: LoRALayer) -> None:
        pass

    @staticmethod
    def forward(layer: LoRALayer, y: torch.Tensor, h: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        return y + update

    @staticmethod
    def merged_weight(layer: LoRALayer) -> torch.Tensor:
        return layer.base.weight + layer.delta_weight()


class DoraVariant(LoraVariant):
    """DoRA (the module's docstring): a trained magnitude per output, ``lora_magnitude``, starting at ||W||_c."""

    @staticmethod
    def init(layer: LoRALayer) -> None:  # m = ||W||_c: at initialisation W' = W
        with torch.no_grad():
            layer.lora_magnitude = nn.Parameter(torch.linalg.norm(layer.dense_weight().float(), dim=0))

    @staticmethod
    def forward(layer: LoRALayer, y: torch.Tensor, h: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
        dtype = h.dtype  # the input's (autocast gives the update a lower one): the norm and scale as PEFT takes them
        w = layer.dense_weight().to(dtype)
        with torch.no_grad():  # ||W + ΔW||_c, a constant to the backward (DoRA §4.3)
            norm = torch.linalg.norm(w + (layer.lora_A.to(dtype) @ layer.lora_B.to(dtype)) * layer.scaling, dim=0)
        s = layer.lora_magnitude.to(dtype) / norm
        if isinstance(layer.dropout, nn.Identity) or not layer.training:
            frozen = y if layer.base.bias is None else y - layer.base.bias.to(y.dtype)  # x W
        else:
            frozen = h @ w
        return y + (s - 1) * frozen + s * update

    @staticmethod
    def merged_weight(layer: LoRALayer) -> torch.Tensor:
        return (layer.base.weight + layer.delta_weight()) * layer._magnitude_scale()


class LoRALayer(nn.Module):
    """A frozen linear layer with its low-rank update: ``base(x) + dropout(x) @ A @ B * alpha / rank``.

    Args:
        base: the frozen layer, transformers' ``Conv1D`` (weight stored [in, out], GPT-2) or ``nn.Linear``
            (weight stored [out, in]; bitsandbytes' 4-bit and 8-bit layers are ``nn.Linear``, and a quantized
            GPT-2's Conv1D loads as one); it is kept, not copied.
        rank: r, the inner size of A [in, r] and B [r, out].
        alpha: the scale numerator; the update is multiplied by alpha / r.
        dropout: dropout on the layer's input of the update path only (0: none).
        rslora: scale by alpha / sqrt(r) instead (rank-stabilised LoRA, PEFT's ``use_rslora``).
        dora: also train a magnitude per output (DoRA, PEFT's ``use_dora``; see the module's docstring).
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float, rslora: bool = False,
                 dora: bool = False):
        super().__init__()
        if isinstance(base, Conv1D):
            in_f, out_f = base.weight.shape
        elif isinstance(base, nn.Linear):  # bitsandbytes' quantized layers too (their weight is packed)
            in_f, out_f = base.in_features, base.out_features
        else:
            raise TypeError(f"LoRA wraps Conv1D or nn.Linear, not {type(base).__name__}")
        self.base, self.rank, self.scaling = base, rank, alpha / (math.sqrt(rank) if rslora else rank)
        self.lora_A = nn.Parameter(torch.empty(in_f, rank))
        self.lora_B = nn.Parameter(torch.zeros(rank, out_f))
        nn.init.kaiming_uniform_(self.lora_A.T, a=math.sqrt(5))  # as PEFT: fan_in = in_f
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.lora_magnitude = None
        self.variant = DoraVariant if dora else LoraVariant
        self.variant.init(self)

    def dense_weight(self) -> torch.Tensor:
        """W as [in, out] (a quantized base's dequantized)."""
        w = dequantize_module_weight(self.base)
        return w if isinstance(self.base, Conv1D) else w.T

    def delta_weight(self) -> torch.Tensor:
        """ΔW in the base layer's storage layout."""
        d = (self.lora_A @ self.lora_B) * self.scaling  # [in, out]
        return d if isinstance(self.base, Conv1D) else d.T

    def _magnitude_scale(self) -> torch.Tensor:
        """DoRA's s = m / ||W + ΔW||_c, shaped to multiply the base weight in its storage layout."""
        s = self.lora_magnitude / torch.linalg.norm(self.dense_weight() + self.lora_A @ self.lora_B * self.scaling, dim=0)
        return s if isinstance(self.base, Conv1D) else s[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        h = self.dropout(x)
        update = (h @ self.lora_A.to(x.dtype) @ self.lora_B.to(x.dtype)) * self.scaling
        return self.variant.forward(self, y, h, update)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (the variant's merged weight), once: what ``merge_and_unload``
        exports."""
        if not self.merged:
            self.base.weight.copy_(self.variant.merged_weight(self).to(self.base.weight.dtype))
            self.merged = True


def matches(name: str, targets: list[str]) -> bool:
    """Suffix match on module names, as PEFT does: 'attn.c_proj' matches only attention's
    projection, a bare 'c_proj' matches attention's and the MLP's."""
    return any(name == t or name.endswith("." + t) for t in targets)


class LoRA(Method):
    """LoRA: :class:`LoRALayer` on the target modules, saved as a PEFT adapter."""

    name = "lora"
    adapter_folder = True
    color = "#2ca02c"
    rationale = ("AdamW 2e-4, linear decay, r=8, alpha=16, dropout 0.05 on attn.c_attn: the GPT-2 settings of Hu et al. "
                 "(2021) (they used 2e-4, r=4, alpha=32 on the query/value projections of GPT-2 M).")

    @classmethod
    def search_space(cls, sweep_cfg) -> list[tuple[str, list]]:
        return [("rank", sweep_cfg.lora_ranks), ("rslora", sweep_cfg.lora_rslora), ("lr_ratio", sweep_cfg.lora_lr_ratios),
                ("dora", sweep_cfg.lora_dora)]

    def __init__(self, cfg, tokenizer=None, compute_dtype=None):
        super().__init__(cfg, tokenizer, compute_dtype)
        self.settings = cfg.method.lora

    def targets(self, model: nn.Module) -> list[str]:
        """The module-name suffixes adapted in ``model``: ``method.lora.targets``, or its model type's default."""
        return list(self.settings.targets or default_lora_targets(model))

    def target_modules(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The (name, module) pairs the targets match: the frozen layers, or the :class:`LoRALayer` around them once
        the model is prepared."""
        targets = self.targets(model)
        found = [(n, m) for n, m in model.named_modules() if matches(n, targets)]
        if not found:
            raise UserError(f"method.lora.targets {targets} match no module of the {model.config.model_type} model "
                            "(GPT-2: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj; Llama: q_proj, k_proj, v_proj, "
                            "o_proj, ...)")
        return found

    def describe(self, model: nn.Module) -> dict:
        return {**super().describe(model), "targets": self.targets(model)}

    def lr_scale(self, name: str) -> float:
        """LoRA+ (``method.lora.lr_ratio``): B learns ``lr_ratio`` times faster than A, as PEFT's
        ``create_loraplus_optimizer`` sets it (which puts DoRA's magnitude, a vector, in B's group too)."""
        return self.settings.lr_ratio if "lora_B" in name or "lora_magnitude" in name else 1.0

    def _adapt(self, model: nn.Module) -> None:
        for name, module in self.target_modules(model):
            replace_module(model, name, LoRALayer(module, self.settings.rank, self.settings.alpha, self.settings.dropout,
                                                  self.settings.rslora, self.settings.dora))

    def peft_config(self, model: nn.Module) -> LoraConfig:
        """PEFT's config of this adapter on ``model``; its layers' weights stored [in, out] (GPT-2's Conv1D) or not."""
        _, first = self.target_modules(model)[0]
        base = first.base if isinstance(first, LoRALayer) else first
        return LoraConfig(r=self.settings.rank, lora_alpha=self.settings.alpha, lora_dropout=self.settings.dropout,
                          target_modules=self.targets(model), fan_in_fan_out=isinstance(base, Conv1D),
                          task_type="CAUSAL_LM", use_rslora=self.settings.rslora, use_dora=self.settings.dora,
                          base_model_name_or_path=self.base_model_name(), bias="none")

    def layers(self, model: nn.Module) -> dict[str, LoRALayer]:
        return {n: m for n, m in model.named_modules() if isinstance(m, LoRALayer)}

    # --- PEFT-format save / load ----------------------------------------------------------
    def peft_state_dict(self, model) -> dict[str, torch.Tensor]:
        out = {}
        for n, m in self.layers(model).items():
            out[f"{PEFT_PREFIX}{n}.lora_A.weight"] = m.lora_A.detach().T
            out[f"{PEFT_PREFIX}{n}.lora_B.weight"] = m.lora_B.detach().T
            if m.lora_magnitude is not None:
                out[f"{PEFT_PREFIX}{n}.{MAGNITUDE}"] = m.lora_magnitude.detach()
        return out

    def load_peft_state_dict(self, model, state: dict[str, torch.Tensor]) -> None:
        own = self.peft_state_dict(model)
        if set(own) != set(state):
            extra = sorted(set(state) - set(own))[:1] or sorted(set(own) - set(state))[:1]
            raise UserError(f"adapter does not match method.lora.targets of this run (e.g. {extra[0]})")
        layers = self.layers(model)
        with torch.no_grad():
            for k, v in state.items():
                mod, kind = k[len(PEFT_PREFIX):].removesuffix(".weight").rsplit(".", 1)
                if kind == MAGNITUDE:
                    layers[mod].lora_magnitude.copy_(v)
                else:
                    getattr(layers[mod], kind).copy_(v.T)

    def save_adapter(self, model, folder: Path) -> None:
        """The adapter in PEFT's format: ``adapter_model.safetensors`` and ``adapter_config.json``."""
        save_file_atomic(self.peft_state_dict(model), Path(folder) / "adapter_model.safetensors", {"format": "pt"})
        self.peft_config(model).save_pretrained(str(folder))

    def save(self, model, run_dir: Path) -> None:
        self.save_adapter(model, run_dir)
        self.write_method_file(run_dir, model)

    def merge_and_unload(self, model: nn.Module) -> nn.Module:
        """Fold every ΔW into its base weight and put the plain base layers back: the base architecture with
        new weights, which transformers saves and loads like any model."""
        for name, layer in self.layers(model).items():
            layer.merge()
            replace_module(model, name, layer.base)
        return model

    def export(self, model, folder: Path, merge: bool = True) -> tuple[str, str]:
        if not merge:
            self.save_adapter(model, folder)
            note = "LoRA kept as a PEFT adapter (--no-merge): load the base model, then this adapter."
            if is_quantized(model):
                note += (f" It was trained on the base quantized to {self.cfg.quantization()} (bitsandbytes): load the "
                         "base quantized alike for the model as evaluated, or in full precision for a slightly "
                         "different one.")
            return "adapter", note
        if is_quantized(model):
            self.merged_full_precision(model).save_pretrained(str(folder))
            return "model", ("LoRA trained on the quantized base, merged into the full-precision base weights: a plain "
                             "model of the base architecture.")
        self.merge_and_unload(model).save_pretrained(str(folder))
        return "model", "LoRA merged into the base weights: a plain model of the base architecture."

    def merged_full_precision(self, model: nn.Module) -> nn.Module:
        """The adapter trained on a quantized base, folded into the base loaded again in full precision (merging into
        4-bit weights would round the update away): the model ``export`` writes.  It differs from the trained one by
        the quantization error of the base, which ``peftsum export`` measures."""
        full = load_model(self.base_model_path(), self.cfg.model.trust_remote_code,
                          attn_implementation=self.cfg.model.attn_implementation)
        set_dropout(full, self.cfg.model.dropout)
        plain = type(self)(self.cfg, self.tokenizer)
        plain.prepare_model(full)
        plain.load_peft_state_dict(full, self.peft_state_dict(model))
        return plain.merge_and_unload(full)

    def load(self, model, run_dir: Path) -> None:
        self.load_peft_state_dict(model, safe_load_file(Path(run_dir) / "adapter_model.safetensors"))


class QLoRA(LoRA):
    """QLoRA (Dettmers et al. 2023): LoRA (``method.lora``'s settings) on the base quantized as it loads, NF4 with
    double quantization where ``model.quantize`` says none (:func:`peftsum.model.loading.quantization_config`).  Only
    the frozen base changes: the row beside LoRA's shows what 4-bit weights cost in quality and save in memory."""

    name = "qlora"
    color = "#98df8a"
    rationale = ("LoRA's settings on the base quantized to 4-bit NF4 with double quantization as it loads (Dettmers et "
                 "al. 2023, bitsandbytes): only the frozen weights change, so its row beside LoRA's shows what 4-bit "
                 "weights cost in quality and save in memory.")
    in_defaults = False  # it needs bitsandbytes: compare --methods names it
