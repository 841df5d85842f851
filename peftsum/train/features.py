"""The frozen trunk's features, computed once (last-layer with an untied head and no trainable block)."""

from __future__ import annotations

import torch

from ..data.collate import collate, seq_lengths, sorted_batches


class FeatureCache:
    """Final hidden states of a frozen trunk at the summary-predicting positions, one block per
    example, computed once (no dropout); the head then trains on them for every epoch."""

    def __init__(self, summary_lm, dataset, batch_size: int, device, pad_id: int, dtype, autocast):
        feats, targets, self.lengths = [], [], []
        ex_lengths = seq_lengths(dataset)
        order = [None] * len(dataset)
        summary_lm.eval()
        with torch.no_grad():
            for idx in sorted_batches(ex_lengths, batch_size):
                padded = collate([dataset[i] for i in idx], pad_id)
                with autocast():
                    h = summary_lm.hidden_states(padded["input_ids"].to(device), padded["attention_mask"].to(device))
                shifted = padded["labels"][:, 1:].to(device)
                for row, i in enumerate(idx):
                    keep = shifted[row] != -100
                    order[i] = (h[row, :-1][keep].to(dtype).cpu(), shifted[row][keep].cpu())
        offsets = [0]
        for f, t in order:
            feats.append(f)
            targets.append(t)
            self.lengths.append(len(t))
            offsets.append(offsets[-1] + len(t))
        self.features = torch.cat(feats)
        self.targets = torch.cat(targets)
        self.offsets = offsets

    def batch(self, idx, device) -> dict:
        f = torch.cat([self.features[self.offsets[i]: self.offsets[i + 1]] for i in idx])
        t = torch.cat([self.targets[self.offsets[i]: self.offsets[i + 1]] for i in idx])
        return {"features": f.to(device), "targets": t.to(device)}

    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()
