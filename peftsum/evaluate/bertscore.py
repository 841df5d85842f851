"""BERTScore (Zhang et al. 2020): a model-based metric through the same registry as ROUGE.

The F1 of greedy cosine matches between the contextual embeddings of the summary's and the reference's tokens, x
100, by the ``bert-score`` package (``pip install 'peftsum[bertscore]'``).  Off by default: it runs a model over
every summary.  ``--set eval.metrics=[rougeLsum,bertscore]`` turns it on; ``eval.bertscore.model`` is a hub id or a
local folder.  The package's default for English, and the literature's, is ``roberta-large`` with the embeddings of
layer 17 (``eval.bertscore.num_layers``; a model the package does not know needs it).  No baseline rescaling
(``rescale_with_baseline``): the raw F1, as the paper's tables report it.

Nothing here imports ``bert_score`` or its model until the metric is computed: a run without it pays nothing.
"""

from __future__ import annotations

import importlib.util

from ..errors import UserError
from .registry import Metric, register


def check(eval_cfg) -> None:
    """Before a run: the package is installed, and the layer is known (bert-score's table, or eval.bertscore)."""
    if importlib.util.find_spec("bert_score") is None:
        raise UserError("eval.metrics names bertscore, which needs the bert-score package: "
                        "pip install 'peftsum[bertscore]'")
    settings = eval_cfg.bertscore
    if settings.num_layers is None:
        from bert_score.utils import model2layers

        if settings.model not in model2layers:
            raise UserError(f"eval.bertscore.model {settings.model!r} is not in bert-score's table of models and "
                            "layers: set eval.bertscore.num_layers (the layer whose embeddings are matched)")


def bertscore_f1(predictions: list[str], references: list[str], articles: list[str], eval_cfg) -> list[float]:
    check(eval_cfg)
    import bert_score

    if not predictions:
        return []
    settings = eval_cfg.bertscore
    # bert-score scores an empty candidate 0 with a warning per call; a model that wrote nothing gets that 0 here too
    _, _, f1 = bert_score.score(predictions, references, model_type=settings.model, num_layers=settings.num_layers,
                                batch_size=settings.batch_size, device=settings.device, lang="en", verbose=False)
    return [100.0 * float(x) for x in f1]


register(Metric("bertscore", "BERTScore F1", "overlap", batch=bertscore_f1, needs_model=True, check=check,
                about="BERTScore F1 x 100 (bert-score, eval.bertscore.model, no baseline rescaling)"))
