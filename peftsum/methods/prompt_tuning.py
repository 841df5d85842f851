"""Soft-prompt tuning (Lester et al., 2021).

A new embedding table P of shape [num_prompts, n_embd], separate from GPT-2's parameters, is
prepended to the input embeddings of every sequence: the transformer sees [P; E(x)].  Every GPT-2
parameter is frozen; the optimizer sees only P.  The attention mask is extended with ones, labels
with -100 (the loop drops the prefix positions before the loss), positions run 0..P-1 over the
prompt and continue over the text, in training and in generation alike.

Initialisation: ``text`` (the embeddings of "[SUMMARIZE]" — 6 BPE tokens — cycled to num_prompts
rows), ``vocab`` (embeddings of randomly drawn vocabulary tokens), ``random`` (uniform [-0.5, 0.5]).
Saved in HF PEFT's prompt-tuning format (``prompt_embeddings``) so PEFT loads it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PromptTuningConfig
from torch import nn

from ..data.tokenize import encode
from ..model.arch import attention_heads, decoder_blocks, hidden_size
from ..model.loading import load_tokenizer
from ..utils import safe_load_file, save_file_atomic
from .base import Method


class SoftPrompt(nn.Module):
    def __init__(self, num_prompts: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_prompts, dim))

    def forward(self, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype).unsqueeze(0).expand(batch_size, -1, -1)


class PromptTuning(Method):
    name = "prompt-tuning"
    adapter_folder = True
    soft_prompt = True
    color = "#1f77b4"
    rationale = ("AdamW on the soft prompt only. Lester et al. (2021) needed a very large learning rate (0.3 with "
                 "Adafactor): the prompt starts far from a useful point and only 20 vectors move. With AdamW's "
                 "normalised steps we default to 3e-2 on GPT-2 small (a starting point, not tuned on CNN/DailyMail "
                 "here); init from the text \"[SUMMARIZE]\" (6 BPE tokens, cycled to 20 rows).")

    @classmethod
    def search_space(cls, sweep_cfg) -> list[tuple[str, list]]:
        return [("num_prompts", sweep_cfg.num_prompts)]

    def __init__(self, cfg, tokenizer=None, compute_dtype=None):
        super().__init__(cfg, tokenizer, compute_dtype)
        self.settings = cfg.method.prompt_tuning
        self.num_virtual_tokens = self.settings.num_prompts

    def _adapt(self, model: nn.Module) -> None:
        wte = model.get_input_embeddings().weight
        prompt = SoftPrompt(self.settings.num_prompts, wte.shape[1]).to(wte.device)
        with torch.no_grad():
            prompt.weight.copy_(self.initial_prompt(wte))
        model.soft_prompt = prompt  # a submodule: checkpoints, devices and DDP see it like any parameter

    def initial_prompt(self, wte: torch.Tensor) -> torch.Tensor:
        n = self.settings.num_prompts
        g = torch.Generator().manual_seed(self.cfg.train.seed)
        if self.settings.init == "random":
            return torch.rand(n, wte.shape[1], generator=g) * 1.0 - 0.5
        if self.settings.init == "vocab":
            ids = torch.randint(0, min(wte.shape[0], 5000), (n,), generator=g)
            return wte[ids].detach().float().cpu()
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.cfg.model.tokenizer or self.base_model_path())
        ids = encode(self.tokenizer, self.settings.init_text)
        ids = [ids[i % len(ids)] for i in range(n)]  # cycle (or cut) the text's tokens to n rows
        return wte[torch.tensor(ids)].detach().float().cpu()

    def embed(self, model, input_ids, attention_mask):
        emb = model.get_input_embeddings()(input_ids)
        B = input_ids.shape[0]
        prefix = model.soft_prompt(B, emb.dtype)
        ones = attention_mask.new_ones(B, self.settings.num_prompts)
        return torch.cat([prefix, emb], dim=1), torch.cat([ones, attention_mask], dim=1)

    # --- PEFT-format save / load ----------------------------------------------------------
    def peft_config(self, model):
        return PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=self.settings.num_prompts, token_dim=hidden_size(model),
            num_transformer_submodules=1, num_attention_heads=attention_heads(model.config),
            num_layers=len(decoder_blocks(model)),
            prompt_tuning_init="RANDOM", base_model_name_or_path=self.base_model_name())

    def save_adapter(self, model, folder: Path) -> None:
        save_file_atomic({"prompt_embeddings": model.soft_prompt.weight}, Path(folder) / "adapter_model.safetensors",
                         {"format": "pt"})
        self.peft_config(model).save_pretrained(str(folder))

    def save(self, model, run_dir: Path) -> None:
        self.save_adapter(model, run_dir)
        self.write_method_file(run_dir, model)

    def export(self, model, folder: Path, merge: bool = True) -> tuple[str, str]:
        self.save_adapter(model, folder)
        return "adapter", ("Prompt tuning cannot be merged into the model's weights (the soft prompt is extra input, "
                           "not a change of a weight): this is a PEFT adapter; load the base model, then this adapter.")

    def load(self, model, run_dir: Path) -> None:
        state = safe_load_file(Path(run_dir) / "adapter_model.safetensors")
        with torch.no_grad():
            model.soft_prompt.weight.copy_(state["prompt_embeddings"])

