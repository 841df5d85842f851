"""Evaluation loss and ROUGE.

Loss: mean negative log-likelihood over *all* summary tokens of a split (token-weighted: the sum of
NLLs divided by the number of tokens, not a mean of batch means), and its perplexity.
ROUGE: Google's ``rouge-score`` (Porter stemmer on), F1 x 100.  The headline ROUGE-L is the summary-level
variant CNN/DailyMail papers report (rouge-score's ``rougeLsum``, "the ROUGE-L reported in Get To The
Point": a union LCS over the reference's sentences, one per line), on sentences split by NLTK's Punkt
(:func:`peftsum.data.text.split_sentences`).  rouge-score's sentence-level ``rougeL`` (one LCS over the
whole text, sentence order mattering) is kept under its own name.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from accelerate.utils import reduce
from rouge_score import rouge_scorer
from torch.distributed.fsdp import FSDPModule

from ..data.collate import collate, seq_lengths, sorted_batches, to_device
from ..data.text import SPLITTER, split_sentences
from ..utils import distributed_state, in_halves
from .registry import HEADLINE, Metric, register

ROUGE_KEYS = ("rouge1", "rouge2", "rougeLsum", "rougeL")
LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeLsum": "ROUGE-L", "rougeL": "ROUGE-L (sentence-level)"}
assert HEADLINE in ROUGE_KEYS
ROUGE_PROTOCOL = ("Scores by Google's rouge-score (Porter stemmer on). ROUGE-L is the summary-level "
                  "ROUGE-L of CNN/DailyMail papers (rouge-score's rougeLsum: a union LCS over sentences, one per "
                  f"line) on sentences split by {SPLITTER}; the sentence-level variant (rougeL, one LCS over the "
                  "whole text) is shown apart and named so.")


def _batch(dataset, idx: list[int], pad_id: int, device) -> dict:
    padded = collate([dataset[i] for i in idx], pad_id)
    return {k: to_device(padded[k], device) for k in ("input_ids", "attention_mask", "labels")}


@torch.no_grad()
def evaluate_loss(summary_lm, dataset, batch_size: int, device, pad_id: int, autocast=None, features=None) -> dict:
    """Token-weighted NLL of the summary tokens over ``dataset`` (or over cached ``features``).

    Under several processes each takes every N-th batch (with cached features: the shard it holds); the
    sums of NLL and of tokens are added up across processes, so every process returns the whole split's loss."""
    was_training = summary_lm.training
    summary_lm.eval()
    dist = distributed_state()
    total, n = torch.zeros((), dtype=torch.float64), 0
    ctx = autocast or contextlib.nullcontext
    if features is not None:  # every process holds its own shard of the split: it takes all of it
        batches = [[features.indices[k] for k in pos] for pos in sorted_batches(features.lengths, batch_size)]
    else:
        every = sorted_batches(seq_lengths(dataset), batch_size)
        batches = every[dist.process_index::dist.num_processes]
        if isinstance(summary_lm, FSDPModule):  # sharded: a forward is a collective, so every process runs as many
            batches += [None] * (math.ceil(len(every) / dist.num_processes) - len(batches))
    sharded = isinstance(summary_lm, FSDPModule)

    def losses(idx: list[int]) -> list[tuple[torch.Tensor, int]]:
        batch = features.batch(idx, device) if features is not None else _batch(dataset, idx, pad_id, device)
        with ctx():
            nll, k = summary_lm(**batch)
        return [(nll.double().cpu(), k)]

    for idx in batches:
        if idx is None:  # a forward only to keep in step with the other processes; its loss is not counted
            with ctx():
                summary_lm(**_batch(dataset, every[0], pad_id, device))
            continue
        # out of memory, the batch in halves (its summed loss is the same); sharded, a forward is a collective
        parts = losses(idx) if sharded else in_halves(losses, idx, "the loss of a batch", ADVICE)
        for nll, k in parts:
            total += nll
            n += k
    summary_lm.train(was_training)
    if dist.num_processes > 1:
        sums = reduce(torch.tensor([total.item(), float(n)], dtype=torch.float64, device=dist.device), "sum")
        total, n = sums[0].cpu(), int(sums[1].item())
    mean = (total / max(n, 1)).item()
    return {"loss": mean, "perplexity": math.exp(min(mean, 50)), "tokens": n}


ADVICE = ("lower eval.batch_size, shorten data.max_source_tokens, or quantize the base (model.quantize nf4); "
          "`peftsum plan --device-memory SIZE` says what fits")

_SCORER = None


def scorer():
    global _SCORER
    if _SCORER is None:
        _SCORER = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    return _SCORER


def for_lsum(text: str) -> str:
    """One sentence per line, as ROUGE-Lsum expects."""
    return "\n".join(split_sentences(text))


@functools.lru_cache(maxsize=4096)
def rouge_f1(prediction: str, reference: str) -> dict[str, float]:
    """The four ROUGE F1 x 100 of one summary (computed once for the four registered ROUGE metrics)."""
    s = scorer().score(for_lsum(reference), for_lsum(prediction))
    return {k: s[k].fmeasure * 100 for k in ROUGE_KEYS}


def rouge_per_example(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    scores = [rouge_f1(p, r) for p, r in zip(predictions, references)]
    return {k: [s[k] for s in scores] for k in ROUGE_KEYS}


for _key in ROUGE_KEYS:
    register(Metric(_key, LABELS[_key], "overlap", per_example=lambda p, r, a, key=_key: rouge_f1(p, r)[key],
                    about=ROUGE_PROTOCOL if _key == HEADLINE else ""))
