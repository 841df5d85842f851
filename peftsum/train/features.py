"""The frozen trunk's features, computed once (last-layer with an untied head and no trainable block)."""

from __future__ import annotations

import torch

from ..data.collate import collate, seq_lengths, sorted_batches
from ..model.arch import hidden_size


def shard(n: int, rank: int, world: int) -> list[int]:
    """The examples a process owns of a split of ``n``: every ``world``-th from ``rank``.  Under several
    processes each builds (and keeps) only its shard's features, and trains and validates on them."""
    return list(range(rank, n, world))


class FeatureCache:
    """Final hidden states of a frozen trunk at the summary-predicting positions, one block per owned
    example (``indices``: the whole split by default), computed once (no dropout); the head then trains
    on them for every epoch.  ``lengths[k]`` is the number of summary positions of ``indices[k]``."""

    def __init__(self, summary_lm, dataset, batch_size: int, device, pad_id: int, dtype, autocast,
                 indices: list[int] | None = None):
        self.indices = list(range(len(dataset))) if indices is None else list(indices)
        self.position = {i: k for k, i in enumerate(self.indices)}
        all_lengths = seq_lengths(dataset)
        order = [None] * len(self.indices)
        summary_lm.eval()
        with torch.no_grad():
            for pos in sorted_batches([all_lengths[i] for i in self.indices], batch_size):
                padded = collate([dataset[self.indices[k]] for k in pos], pad_id)
                with autocast():
                    h = summary_lm.hidden_states(padded["input_ids"].to(device), padded["attention_mask"].to(device))
                shifted = padded["labels"][:, 1:].to(device)
                for row, k in enumerate(pos):
                    keep = shifted[row] != -100
                    order[k] = (h[row, :-1][keep].to(dtype).cpu(), shifted[row][keep].cpu())
        feats, targets, self.lengths, offsets = [], [], [], [0]
        for f, t in order:
            feats.append(f)
            targets.append(t)
            self.lengths.append(len(t))
            offsets.append(offsets[-1] + len(t))
        self.features = torch.cat(feats) if feats else torch.zeros(0, hidden_size(summary_lm.model), dtype=dtype)
        self.targets = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long)
        self.offsets = offsets

    def owns(self, i: int) -> bool:
        return i in self.position

    def batch(self, idx, device) -> dict:
        """The features and targets of the examples ``idx`` (indices into the split, all owned); none: an empty
        batch, whose loss is 0 and whose backward still takes part in the gradient's all-reduce."""
        spans = [(self.offsets[self.position[i]], self.offsets[self.position[i] + 1]) for i in idx]
        if not spans:
            return {"features": self.features[:0].to(device), "targets": self.targets[:0].to(device)}
        f = torch.cat([self.features[a:b] for a, b in spans])
        t = torch.cat([self.targets[a:b] for a, b in spans])
        return {"features": f.to(device), "targets": t.to(device)}

    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()
