"""The report's summaries, side by side: K seeded test articles (the reference, Lead-3 and every method's summary,
each with its headline ROUGE), then the K articles where the methods' scores spread the most.  Markdown
for ``report.md`` and the PDF, collapsible ``<details>`` blocks (escaped text) for ``report.html``."""

from __future__ import annotations

import html

import numpy as np

from ..evaluate.registry import HEADLINE, label
from .collect import MethodRuns


def pick_examples(runs: list[MethodRuns], k: int, seed: int) -> dict[str, list[dict]]:
    """``{"random": [...], "disagree": [...]}``: each an article's id, reference, spread of the headline ROUGE
    across methods and one row per method (method, summary, score), from each method's first seed."""
    if k <= 0 or not runs or not runs[0].predictions:
        return {"random": [], "disagree": []}
    by_method = {r.method: {p["id"]: p for p in r.predictions} for r in runs}
    ids = [p["id"] for p in runs[0].predictions]

    def article(i) -> dict:
        rows = [(m, preds[i]["prediction"], preds[i][HEADLINE]) for m, preds in by_method.items()]
        scores = [s for _, _, s in rows]
        return {"id": i, "reference": by_method[runs[0].method][i]["reference"], "rows": rows,
                "spread": float(max(scores) - min(scores))}

    chosen = sorted(np.random.default_rng(seed).choice(len(ids), size=min(k, len(ids)), replace=False).tolist())
    random = [article(ids[j]) for j in chosen]
    spread = sorted((article(i) for i in ids), key=lambda a: (-a["spread"], str(a["id"])))
    return {"random": random, "disagree": spread[:k] if len(runs) > 1 else []}


TITLES = {"random": "Seeded test articles", "disagree": "Where the methods disagree most"}


def _one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.splitlines() if line.strip()) or "(empty)"


def examples_markdown(picked: dict[str, list[dict]], k: int, seed: int) -> list[str]:
    if not picked["random"]:
        return []
    name = label(HEADLINE)
    lines = ["## Summaries side by side", "",
             f"{len(picked['random'])} test articles drawn with seed {seed} (`eval.examples: {k}`), then the "
             f"{len(picked['disagree'])} whose {name} spreads the most across methods. Each summary is followed "
             f"by its {name} against the reference; ' / ' separates lines.", ""]
    for group, articles in picked.items():
        if not articles:
            continue
        lines += [f"### {TITLES[group]}", ""]
        for a in articles:
            lines += [f"**Article `{a['id']}`** ({name} spread {a['spread']:.1f})", "",
                      f"- *reference*: {_one_line(a['reference'])}"]
            lines += [f"- **{m}** ({s:.1f}): {_one_line(p)}" for m, p, s in a["rows"]]
            lines.append("")
    return lines


def examples_html(picked: dict[str, list[dict]], k: int, seed: int) -> str:
    if not picked["random"]:
        return ""
    name = html.escape(label(HEADLINE))
    e = html.escape
    out = ["<h2>Summaries side by side</h2>",
           f"<p>{len(picked['random'])} test articles drawn with seed {seed} (<code>eval.examples: {k}</code>), then "
           f"the {len(picked['disagree'])} whose {name} spreads the most across methods. Click an article to open "
           "it.</p>"]
    for group, articles in picked.items():
        if not articles:
            continue
        out.append(f"<h3>{e(TITLES[group])}</h3>")
        for a in articles:
            rows = "".join(f"<tr><td>{e(m)}</td><td>{s:.1f}</td><td>{e(p).replace(chr(10), '<br>')}</td></tr>"
                           for m, p, s in a["rows"])
            out.append(f"<details class='example'><summary>Article <code>{e(str(a['id']))}</code> — {name} spread "
                       f"{a['spread']:.1f}</summary><table><tr><th>method</th><th>{name}</th><th>summary</th></tr>"
                       f"<tr><td><em>reference</em></td><td></td><td>{e(a['reference']).replace(chr(10), '<br>')}"
                       f"</td></tr>{rows}</table></details>")
    return "\n".join(out)
