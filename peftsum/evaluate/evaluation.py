"""The one evaluation path, for every method and every caller (the end of a run, ``peftsum eval``).

On a split: the token-weighted loss of the summary tokens (methods with a model), the summaries
(generated for methods with a model, Lead-3's first sentences otherwise), every selected metric of the
registry (``eval.metrics``: ROUGE against the references, and what the summaries are: novel n-grams,
extractive fragments, repetition, length; the references' own values beside), and the length of what
was produced in tokens, since ROUGE rewards length: the mean number of generated tokens and the share of
summaries cut at the decoding's ``max_new_tokens``.
"""

from __future__ import annotations

import numpy as np

from ..data.text import lead3
from ..data.tokenize import encode
from .generate import generate_summaries
from .metrics import evaluate_loss
from .registry import score_all, selected


def prompts_of(dataset) -> list[list[int]]:
    """The stored prompt of each example (its tokens before the summary), as the tokenization built it."""
    return [ids[:n] for ids, n in zip(dataset["input_ids"], dataset["prompt_len"])]


def evaluate_split(summary_lm, model, method, tokenizer, dataset, cfg_eval, device, autocast=None,
                   progress: bool = False) -> tuple[dict, list[dict]]:
    """Metrics of ``dataset`` (``metrics``: each selected metric's mean) and one row per example: id, reference,
    prediction, generated tokens, each metric's value, and ``reference_metrics``: the reference's own values of the
    metrics that need no reference.

    ``summary_lm`` is None for methods without a model (Lead-3): no loss, and the summary is the
    article's first three sentences (its length counted in the same tokenizer's tokens)."""
    chosen = selected(cfg_eval.metrics)  # an unknown name fails here, before anything is generated
    metrics: dict = {"loss": None, "perplexity": None, "tokens": None}
    if summary_lm is not None:
        metrics.update(evaluate_loss(summary_lm, dataset, cfg_eval.batch_size, device, tokenizer.pad_token_id,
                                     autocast))
        decoding = method.decoding()
        generated = generate_summaries(model, method, tokenizer, prompts_of(dataset), decoding, cfg_eval.batch_size,
                                       device, autocast, progress=progress, compile=cfg_eval.compile)
        predictions = [s.text for s in generated]
        lengths = [s.tokens for s in generated]
        hit_max = float(np.mean([s.at_limit for s in generated])) if generated else None
    else:
        predictions = [lead3(a) for a in dataset["article"]]
        lengths = [len(ids) for ids in encode(tokenizer, predictions)] if predictions else []
        hit_max = None  # nothing is generated, so nothing is cut
    references = list(dataset["highlights"])
    per_example, of_references = score_all(chosen, predictions, references, list(dataset["article"]), cfg_eval)
    metrics.update(metrics={k: float(np.mean(v)) if v else float("nan") for k, v in per_example.items()},
                   examples=len(predictions), mean_generated_tokens=float(np.mean(lengths)) if lengths else None,
                   hit_max_new_tokens=hit_max)
    rows = [{"id": i, "reference": r, "prediction": p, "generated_tokens": n,
             **{k: per_example[k][j] for k in per_example}, "reference_metrics": of_references[j]}
            for j, (i, r, p, n) in enumerate(zip(dataset["id"], references, predictions, lengths))]
    return metrics, rows
