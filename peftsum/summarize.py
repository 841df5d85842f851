"""``peftsum summarize``: articles in, summaries out, with a saved run or a baseline.

The same prompt builder, generation path, eval mode and autocast as the evaluation, so an article of
the test split gets exactly the summary ``predictions.jsonl`` holds for it; ``--metrics`` adds the
statistics of the registry that need no reference (novel n-grams, fragments, repetition, length).  Nothing of the training
data is loaded: one article, a file of them, or a folder of ``.txt`` files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .config import load_config
from .data.sources import load_articles
from .data.text import clean_text, lead3
from .errors import UserError
from .evaluate.generate import Summary, generate_summaries
from .evaluate.registry import per_article, selected
from .experiment import Components, accelerator_for, load_components, load_trained
from .methods import REGISTRY, ModelFree
from .utils import atomic_path


def read_article(file: str) -> str:
    if file == "-":
        text = sys.stdin.read()
    else:
        path = Path(file)
        if not path.is_file():
            raise UserError(f"article file not found: {file}")
        text = path.read_text(encoding="utf-8", errors="replace")
    text = clean_text(text, keep_lines=True)
    if not text:
        raise UserError("the article is empty")
    return text


def _components(run: str, model: str | None, preset: str | None) -> Components | None:
    """The run's model, or a baseline's by its name (zero-shot: the base model, ``model`` or the preset's); None for a
    method without a model (Lead-3)."""
    baseline = REGISTRY.get(run)
    if baseline is not None and not baseline.trained():
        if issubclass(baseline, ModelFree):
            return None
        overrides = [("method.name", run)]
        if model:
            overrides += [("model.name", model), ("model.tokenizer", None)]
        cfg = load_config(preset or ("demo" if not model else None), None, overrides)
        parts = load_components(cfg, accelerator_for(cfg).device)
        parts.model.eval()
        return parts
    if not Path(run).is_dir():
        names = " / ".join(m for m, cls in REGISTRY.items() if not cls.trained())
        raise UserError(f"{run!r} is neither a run directory nor one of {names}")
    parts = load_trained(Path(run))
    return None if isinstance(parts.method, ModelFree) else parts


def summarize_articles(parts: Components | None, articles: list[str], progress: bool = False) -> list[Summary]:
    """Each article's summary and its length in tokens (None for Lead-3, which generates nothing)."""
    if parts is None:
        return [Summary(lead3(a), None, False) for a in articles]
    accelerator = accelerator_for(parts.cfg)
    return generate_summaries(parts.model, parts.method, parts.tokenizer, parts.prompts.prompts(articles),
                              parts.method.decoding(), parts.cfg.eval.batch_size, accelerator.device,
                              accelerator.autocast, progress=progress, compile=parts.cfg.eval.compile)


def article_statistics(summaries: list[str], articles: list[str]) -> list[dict[str, float]]:
    """Each summary's registered metrics that need neither a reference nor a model, against its article."""
    values = per_article([m for m in selected(None) if not m.needs_reference], summaries, summaries, articles)
    return [{k: v[j] for k, v in values.items()} for j in range(len(summaries))]


def summarize_cli(run: str, file: str = "-", *, input: str | None = None, output: str | None = None,
                  text_column: str | None = None, id_column: str | None = None, model: str | None = None,
                  preset: str | None = None, metrics: bool = False) -> None:
    """``peftsum summarize``: one article (``file``, - for stdin) printed, or ``input``'s articles as JSON lines
    (to ``output`` or stdout); ``metrics``: each summary's statistics against its article too."""
    if input is None and output is not None:
        raise UserError("--output goes with --input FILE (a CSV / JSONL / Parquet file or a folder of .txt files)")
    if input is None:
        article = read_article(file)
        text = summarize_articles(_components(run, model, preset), [article])[0][0]
        print(text)
        if metrics:
            labels = {m.name: m for m in selected(None)}
            print("\n" + "\n".join(f"{labels[k].label}: {v:{labels[k].fmt}}"
                                    for k, v in article_statistics([text], [article])[0].items()))
        return
    rows = load_articles(input, text_column or "article", id_column or "id")
    parts = _components(run, model, preset)
    summaries = summarize_articles(parts, [r["article"] for r in rows], progress=True)
    stats = article_statistics([s.text for s in summaries], [r["article"] for r in rows]) if metrics else None
    lines = "".join(json.dumps({"id": r["id"], "prediction": text, "generated_tokens": n,
                                **({"metrics": stats[j]} if stats else {})}) + "\n"
                    for j, (r, (text, n, _)) in enumerate(zip(rows, summaries)))
    if output is None:
        sys.stdout.write(lines)
        return
    with atomic_path(output) as tmp:
        tmp.write_text(lines, encoding="utf-8")
    print(f"wrote {len(rows)} summaries to {output}", file=sys.stderr)
