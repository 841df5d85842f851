"""Batches: dynamic padding to the longest sequence of the batch, and a length-grouped sampler.

Batches are lists of example indices fixed per (seed, epoch), so a run can resume exactly at a
given step, and data-parallel ranks can take disjoint shares of the same global batch.
"""

from __future__ import annotations

import numpy as np
import torch


def seq_lengths(dataset) -> list[int]:
    """Token count of each example: the ``length`` column written at tokenization (cheap to read),
    or counted from ``input_ids`` for datasets built elsewhere."""
    if "length" in dataset.column_names:
        return list(dataset["length"])
    return [len(x) for x in dataset["input_ids"]]


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A host batch onto ``device``: on CUDA from pinned (page-locked) memory and without blocking, so the copy
    overlaps the device's work and the host goes on preparing the next batch (the copy is ordered on the stream
    before the kernels that read it); elsewhere a plain copy."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def collate(features: list[dict], pad_id: int, left_pad: bool = False, with_target: bool = True) -> dict:
    """Pad ``input_ids`` (or only the prompt when ``with_target`` is False, for generation).

    Returns input_ids, attention_mask and labels (-100 on prompt and padding).
    """
    seqs = [f["input_ids"] if with_target else f["input_ids"][: f["prompt_len"]] for f in features]
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    labels = torch.full((len(seqs), T), -100, dtype=torch.long)
    for i, (f, s) in enumerate(zip(features, seqs)):
        off = T - len(s) if left_pad else 0
        ids[i, off: off + len(s)] = torch.as_tensor(s)
        mask[i, off: off + len(s)] = 1
        if with_target:
            p = f["prompt_len"]
            labels[i, off + p: off + len(s)] = torch.as_tensor(s[p:])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def epoch_batches(lengths: list[int] | np.ndarray, batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True, shuffle: bool = True) -> list[list[int]]:
    """Index batches for one epoch.  With ``group_by_length`` examples are shuffled, cut into
    mega-batches of 50 batches, sorted by length inside each, and the batches shuffled again: little
    padding, still random."""
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(n) if shuffle else np.arange(n)
    if group_by_length:
        lengths = np.asarray(lengths)
        mega = batch_size * 50
        chunks = [order[i: i + mega] for i in range(0, n, mega)]
        order = np.concatenate([c[np.argsort(-lengths[c], kind="stable")] for c in chunks])
    batches = [order[i: i + batch_size].tolist() for i in range(0, n, batch_size)]
    if group_by_length and shuffle:
        perm = rng.permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def sorted_batches(lengths, batch_size: int) -> list[list[int]]:
    """Evaluation batches: longest first, so padding is minimal and memory peaks early."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i: i + batch_size].tolist() for i in range(0, len(order), batch_size)]
