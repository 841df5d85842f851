"""Any PEFT tuner from its config JSON (``--method peft --set method.peft.config=FILE``), through the same loop,
evaluation, cost accounting and report as the built-in methods.

``FILE`` is a PEFT config as ``adapter_config.json`` holds it (or a folder with one), e.g.
``{"peft_type": "IA3", "target_modules": ["c_attn", "mlp.c_proj"], "feedforward_modules": ["mlp.c_proj"]}``.
Three kinds of tuner, three ways in:

* **Injected layers** (LoRA, IA³, LoHa, LoKr, BOFT, ...): ``peft.inject_adapter_in_model`` puts the tuner's
  layers into the model; the forward pass, the fast greedy generation and everything else are unchanged.
* **Soft prompts** (prompt tuning, P-tuning): PEFT's prompt encoder gives the virtual token embeddings, which
  :meth:`embed` prepends exactly as PEFT's own forward does (positions 0..P-1 over the prompt); the fast greedy
  path applies.
* **Prefix tuning** (Li & Liang, 2021): the prefix is a key/value cache in front of every layer
  (``PeftModel.get_prompt``), so the trunk runs with that cache as PEFT's forward runs it.  Generation falls
  back from the fast batched loop (it has no place for a prefix in its cache) to a plain greedy loop, one
  article at a time with the prefix cache (:meth:`PeftPrefixTuner.generate_ids`); greedy only, the n-gram rule on
  the new tokens as for every method; a test checks its tokens against step-by-step decoding with PEFT's
  own forward.

Weights are saved in PEFT's format, so ``PeftModel.from_pretrained(base, RUN)`` loads them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import (
    PeftConfig,
    get_peft_config,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

from ..errors import UserError
from ..model.arch import cache_kwarg, replace_module, trunk
from ..utils import safe_load_file, save_file_atomic
from .base import Method, OwnTrunk
from .lora import PEFT_PREFIX

ADAPTER_CONFIG = "adapter_config.json"


def read_peft_config(path: str | Path) -> PeftConfig:
    """A PEFT config from a JSON file (or a folder holding ``adapter_config.json``); a bad one is a UserError."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / ADAPTER_CONFIG
    if not path.is_file():
        raise UserError(f"method.peft.config: no PEFT config file at {path}")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"method.peft.config {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or "peft_type" not in data:
        raise UserError(f"method.peft.config {path} must be a JSON object with a peft_type (LORA, IA3, PREFIX_TUNING, ...)")
    data = {**data, "task_type": "CAUSAL_LM"}
    data.pop("auto_mapping", None)
    try:
        return get_peft_config(data)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"method.peft.config {path}: PEFT does not accept it: {str(e).splitlines()[0]}") from None


def merge_peft_layers(model: nn.Module) -> nn.Module:
    """Fold every layer PEFT injected (LoRA, IA³, ...) into its base layer and put the base layer back."""
    for name, module in [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]:
        module.merge()
        replace_module(model, name, module.get_base_layer())
    return model


class PeftTuner(Method):
    adapter_folder = True

    def __init__(self, cfg, tokenizer=None, compute_dtype=None):
        super().__init__(cfg, tokenizer, compute_dtype)
        self.settings = cfg.method.peft
        self.name = self.settings.name or "peft"
        self.peft_config = read_peft_config(self.settings.config)
        kinds = {"PREFIX_TUNING": "prefix", "PROMPT_TUNING": "prompt", "P_TUNING": "prompt"}
        self.kind = kinds.get(self.peft_config.peft_type) if self.peft_config.is_prompt_learning else "layers"
        if self.kind is None:
            raise UserError(f"PEFT tuner {self.peft_config.peft_type} is not supported for causal LMs here "
                            "(supported prompt-learning tuners: PROMPT_TUNING, P_TUNING, PREFIX_TUNING)")
        self.num_virtual_tokens = self.peft_config.num_virtual_tokens if self.kind != "layers" else 0
        dec = cfg.eval.decoding
        if self.kind == "prefix" and (dec.num_beams > 1 or dec.do_sample):
            raise UserError(f"{self.name}: prefix tuning generates greedily here (its key/value prefix is not on the "
                            "batched beam-search path, and PEFT's generate() does not reproduce its forward); set "
                            "--eval.decoding.num_beams 1 --eval.decoding.do_sample false for it")
        self.peft_model = None

    # --- preparing the model ----------------------------------------------------------------
    def _adapt(self, model: nn.Module) -> None:
        if self.kind == "layers":
            try:
                inject_adapter_in_model(self.peft_config, model)
            except ValueError as e:
                raise UserError(f"PEFT could not apply {self.settings.config} to this "
                                f"{model.config.model_type} model: {str(e).splitlines()[0]}") from None
            return
        self.peft_model = get_peft_model(model, self.peft_config)
        # the prompt encoder as a submodule of the model: devices, checkpoints, DDP and counts see it
        model.peft_prompt_encoder = self.peft_model.prompt_encoder
        for p in model.peft_prompt_encoder.parameters():
            p.requires_grad_(True)

    def describe(self, model: nn.Module | None) -> dict:
        d = {k: v for k, v in self.peft_config.to_dict().items() if v is not None and k not in
             ("base_model_name_or_path", "revision", "inference_mode", "peft_version", "task_type", "auto_mapping")}
        return {"config": Path(self.settings.config).name, **{k: str(v) if not isinstance(
            v, (int, float, str, bool, list)) else v for k, v in d.items()}, "lr": self.settings.lr}

    # --- the forward hooks ------------------------------------------------------------------
    def embed(self, model, input_ids, attention_mask):
        emb = model.get_input_embeddings()(input_ids)
        if self.kind != "prompt":
            return emb, attention_mask
        B = input_ids.shape[0]
        prompt = self.peft_model.get_prompt(batch_size=B).to(emb.dtype)
        ones = attention_mask.new_ones(B, self.num_virtual_tokens)
        return torch.cat([prompt, emb], dim=1), torch.cat([ones, attention_mask], dim=1)

    # --- weights ------------------------------------------------------------------------------
    def adapter_state(self, model) -> dict[str, torch.Tensor]:
        if self.kind == "layers":
            return {PEFT_PREFIX + k: v for k, v in get_peft_model_state_dict(model).items()}
        return get_peft_model_state_dict(self.peft_model)

    def save_adapter(self, model, folder: Path) -> None:
        save_file_atomic({k: v.detach().contiguous() for k, v in self.adapter_state(model).items()},
                         Path(folder) / "adapter_model.safetensors", {"format": "pt"})
        config = self.peft_model.peft_config["default"] if self.peft_model is not None else self.peft_config
        config.base_model_name_or_path = self.base_model_name()
        config.save_pretrained(str(folder))

    def save(self, model, run_dir: Path) -> None:
        self.save_adapter(model, run_dir)
        self.write_method_file(run_dir, model)

    def load(self, model, run_dir: Path) -> None:
        state = safe_load_file(Path(run_dir) / "adapter_model.safetensors")
        if self.kind != "layers":  # PEFT loads the virtual tokens' table from "prompt_embeddings"
            if "prompt_embeddings" not in state:
                raise UserError(f"{run_dir}: the saved adapter holds no prompt_embeddings for {self.peft_config.peft_type}")
            set_peft_model_state_dict(self.peft_model, state)
            return
        state = {k[len(PEFT_PREFIX):] if k.startswith(PEFT_PREFIX) else k: v for k, v in state.items()}
        result = set_peft_model_state_dict(model, state)
        own = {n for n, _ in self.trainable_parameters(model)}  # every tensor the tuner trains must be loaded
        missing = sorted(own & set(getattr(result, "missing_keys", [])))
        if missing:
            raise UserError(f"{run_dir}: the saved adapter does not match method.peft.config (e.g. {missing[0]})")

    def export(self, model, folder: Path, merge: bool = True) -> tuple[str, str]:
        if merge and self.kind == "layers" and any(isinstance(m, BaseTunerLayer) for m in model.modules()):
            try:
                merge_peft_layers(model)
            except (NotImplementedError, ValueError) as e:
                raise UserError(f"{self.peft_config.peft_type} cannot be merged ({str(e).splitlines()[0]}); "
                                "export with --no-merge") from None
            model.save_pretrained(str(folder))
            return "model", f"{self.peft_config.peft_type} merged into the base weights."
        self.save_adapter(model, folder)
        why = "--no-merge" if self.kind == "layers" else "its virtual tokens are extra input and cannot be merged"
        return "adapter", f"{self.peft_config.peft_type} written as a PEFT adapter ({why})."


class PeftPrefixTuner(OwnTrunk, PeftTuner):
    """A PEFT prefix-tuning config: the key/value prefix needs its own trunk call and its own generation loop."""

    def hidden_states(self, model, input_ids, attention_mask) -> torch.Tensor:
        """The trunk with the prefix's key/value cache in front, as PEFT's forward runs it."""
        B = input_ids.shape[0]
        mask = torch.cat([attention_mask.new_ones(B, self.num_virtual_tokens), attention_mask], dim=1)
        body = trunk(model)
        return body(input_ids=input_ids, attention_mask=mask, use_cache=True,
                    **{cache_kwarg(body): self.peft_model.get_prompt(batch_size=B)}).last_hidden_state

    @torch.no_grad()
    def generate_ids(self, input_ids, attention_mask, decoding, eos_id: int, pad_id: int) -> list[list[int]]:
        """Prefix tuning's greedy decoding: each article alone (no padding), the prefix cache in front, the cache
        growing by a token per step, the n-gram rule on the new tokens.  (PEFT 0.21's own ``generate()`` does not
        reproduce PEFT's forward pass for prefix tuning under transformers 5.24: transformers warns that it ignores
        one of the two caches it is given, and the tokens differ from the first one on; the test against
        step-by-step decoding with PEFT's forward caught it.)"""
        model = self.peft_model.get_base_model()
        kw = cache_kwarg(model)
        no_repeat = NoRepeatNGramLogitsProcessor(decoding.no_repeat_ngram_size) if decoding.no_repeat_ngram_size else None
        out = []
        for ids, m in zip(input_ids, attention_mask):
            ids = ids[m.bool()][None]
            cache = self.peft_model.get_prompt(batch_size=1)
            mask = torch.ones(1, self.num_virtual_tokens + ids.shape[1], dtype=torch.long, device=ids.device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **{kw: cache}).logits
            new: list[int] = []
            for _ in range(decoding.max_new_tokens):
                scores = logits[:, -1].float()
                if len(new) < decoding.min_new_tokens:
                    scores[:, eos_id] = -float("inf")
                if no_repeat is not None:
                    scores = no_repeat(torch.tensor([new], dtype=torch.long, device=ids.device), scores)
                token = int(scores.argmax(-1))
                if token == eos_id:
                    break
                new.append(token)
                mask = torch.cat([mask, mask.new_ones(1, 1)], 1)
                logits = model(input_ids=torch.tensor([[token]], device=ids.device), attention_mask=mask,
                               use_cache=True, **{kw: cache}).logits
            out.append(new)
        return out


def peft_tuner_class(cfg) -> type[PeftTuner]:
    """The class for ``method.peft.config``: prefix tuning runs its own trunk (:class:`OwnTrunk`)."""
    return PeftPrefixTuner if read_peft_config(cfg.method.peft.config).peft_type == "PREFIX_TUNING" else PeftTuner
