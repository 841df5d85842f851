"""Last-layer fine-tuning: train the LM head (and optionally the last N blocks), freeze the rest.

GPT-2 ties ``lm_head.weight`` to ``transformer.wte.weight``.  The assignment's recipe (unfreeze
``model.lm_head``) therefore trains all 38.6M input-embedding weights too, changes what every layer
sees, and needs a full backward pass through the trunk.  By default we *untie*: the head becomes a
new parameter initialised as a copy of wte, and only it trains; wte and the trunk stay bit-identical.
With a frozen trunk its final hidden states do not change during training, so the loop may compute
them once and train the head on the cache (:class:`CachedLastLayer`, the class ``method_class`` picks for a frozen
trunk): the same loss, a fraction of the work.

``blocks: N`` also trains the last N transformer blocks and the final norm (GPT-2's ``ln_f``).  ``tied: true`` reproduces the
assignment's literal recipe, with a warning that says what it trains.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from ..errors import UserError
from ..model.arch import decoder_blocks, final_norm
from ..utils import safe_load_file, save_file_atomic
from .base import CachedTrunk, Method

log = logging.getLogger(__name__)


def frozen_trunk(settings) -> bool:
    """Only the (untied) head trains: the trunk below it is frozen."""
    return settings.blocks == 0 and not settings.tied


class LastLayer(Method):
    name = "last-layer"
    color = "#ff7f0e"
    rationale = ("AdamW 1e-4 on an untied copy of the LM head: the assignment's recipe would train the tied input "
                 "embeddings too. The trunk is frozen, so its features are computed once and cached.")

    @classmethod
    def search_space(cls, sweep_cfg) -> list[tuple[str, list]]:
        return [("blocks", sweep_cfg.last_layer_blocks)]

    def __init__(self, cfg, tokenizer=None, compute_dtype=None):
        super().__init__(cfg, tokenizer, compute_dtype)
        self.settings = cfg.method.last_layer
        self.frozen_trunk = frozen_trunk(self.settings)  # no gradient flows back through the blocks

    def _adapt(self, model: nn.Module) -> None:
        head = model.get_output_embeddings()
        wte = model.get_input_embeddings()
        if self.settings.tied:
            log.warning("last_layer.tied: training lm_head as the assignment's recipe does; GPT-2 ties it to "
                        "transformer.wte, so this also trains the %d input-embedding weights and needs a "
                        "backward pass through the whole trunk", wte.weight.numel())
        elif head.weight is wte.weight:
            head.weight = nn.Parameter(wte.weight.detach().clone())
            model.config.tie_word_embeddings = False
        head.weight.requires_grad_(True)
        if getattr(head, "bias", None) is not None:
            head.bias.requires_grad_(True)
        if self.settings.blocks:
            blocks = decoder_blocks(model)
            if self.settings.blocks > len(blocks):
                raise UserError(f"method.last_layer.blocks={self.settings.blocks} but the model has {len(blocks)} blocks")
            for block in blocks[-self.settings.blocks:]:
                block.requires_grad_(True)
            norm = final_norm(model)
            if norm is not None:
                norm.requires_grad_(True)

    def train_mode(self, model: nn.Module) -> None:
        if self.frozen_trunk:  # a fixed feature extractor: no dropout, as in the cached path
            model.eval()
        else:
            model.train()

    def save(self, model, run_dir: Path) -> None:
        run_dir = Path(run_dir)
        save_file_atomic(self.state_dict(model), run_dir / "last_layer.safetensors", {"format": "pt"})
        self.write_method_file(run_dir, model)

    def load(self, model, run_dir: Path) -> None:
        self.load_state_dict(model, safe_load_file(Path(run_dir) / "last_layer.safetensors"))


class CachedLastLayer(CachedTrunk, LastLayer):
    """Last-layer with a frozen trunk: the loop trains the head on the trunk's features, computed once."""
