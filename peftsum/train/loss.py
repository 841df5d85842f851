"""The one loss every method trains and is evaluated with.

``SummaryLM`` wraps a prepared model and its method.  Its forward returns the *sum* of the negative
log-likelihoods of the summary tokens and how many there were, so callers can weight by tokens
exactly (a mean over an accumulation group, a split, or several ranks — never a mean of batch means).

Position t predicts token t+1: labels are shifted by one; prompt, soft-prompt and padding positions
carry -100 and are dropped *before* the LM head, so the 50,257-way projection runs only on the summary
positions.  With a frozen trunk (:class:`~peftsum.methods.base.CachedTrunk`) the caller may pass cached final hidden states
(``features``) and their ``targets`` instead of tokens; the head and the loss are the same code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..methods.base import OwnTrunk
from ..model.arch import trunk


def right_padded(mask: torch.Tensor | None) -> bool:
    """True when every row is ones followed only by zeros (padding at the end, or none)."""
    return mask is not None and bool((mask[:, 1:] <= mask[:, :-1]).all())


class SummaryLM(nn.Module):
    def __init__(self, model: nn.Module, method):
        super().__init__()
        self.model = model
        self.method = method

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The model's decoder block classes: the units FSDP shards separately (Accelerate's auto-wrap reads it)."""
        return getattr(self.model, "_no_split_modules", None)

    def hidden_states(self, input_ids, attention_mask) -> torch.Tensor:
        if isinstance(self.method, OwnTrunk):  # prefix tuning: its own trunk call
            return self.method.hidden_states(self.model, input_ids, attention_mask)
        emb, mask = self.method.embed(self.model, input_ids, attention_mask)
        if right_padded(mask):
            # Causal attention already keeps every real token from seeing the padding after it, so
            # the mask changes nothing where the loss reads (exactly: tests compare against unpadded
            # one-at-a-time losses). Without it SDPA may pick mask-free causal kernels (FlashAttention on
            # CUDA takes no mask); on the 2-core CPU the difference was within noise (docs/performance.md).
            mask = None
        h = trunk(self.model)(inputs_embeds=emb, attention_mask=mask, use_cache=False).last_hidden_state
        return h[:, self.method.num_virtual_tokens:]

    def summary_features(self, input_ids, attention_mask, labels):
        """Final hidden states at the positions that predict a summary token, and those tokens."""
        h = self.hidden_states(input_ids, attention_mask)
        shifted = labels[:, 1:]
        keep = shifted != -100
        return h[:, :-1][keep], shifted[keep]

    def forward(self, input_ids=None, attention_mask=None, labels=None, features=None, targets=None,
                **_ignored):
        if features is None:
            features, targets = self.summary_features(input_ids, attention_mask, labels)
        logits = self.model.get_output_embeddings()(features)
        nll = F.cross_entropy(logits.float(), targets, reduction="sum")
        return nll, targets.numel()
