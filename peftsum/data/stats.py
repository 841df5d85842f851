"""``peftsum data``: per-split size, what was dropped and why, token-length percentiles, truncation."""

from __future__ import annotations

import numpy as np

from .sources import SPLITS, describe_source
from .text import has_byline
from .tokenize import load_tokenized


def split_stats(ds) -> dict:
    art = np.asarray(ds["article_tokens"])
    summ = np.asarray(ds["summary_tokens"])
    pct = lambda a: {f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 99)}  # noqa: E731
    return {"examples": len(ds), "article_tokens": pct(art), "summary_tokens": pct(summ),
            "source_truncated": float(np.mean(ds["source_truncated"])),
            "target_truncated": float(np.mean(ds["target_truncated"])),
            "bylines": sum(map(has_byline, ds["article"]))}


def compute_stats(cfg_data, tokenizer, positions: int = 1024, reserve: int = 0, generated: int = 0) -> dict:
    """Statistics of the prepared splits as ``tokenizer`` sees them, with the budget every method reads
    (``reserve`` positions for soft tokens, ``generated`` new tokens at most)."""
    dd, report, budget = load_tokenized(cfg_data, tokenizer, positions, 0, reserve, generated)
    return {"source": describe_source(cfg_data.source), "budget": budget.__dict__, "report": report,
            "splits": {s: split_stats(dd[s]) for s in SPLITS}}


def format_stats(st: dict) -> str:
    b = st["budget"]
    lines = [f"source: {st['source']}",
             f"budget: article <= {b['source']} tokens, summary <= {b['target']} tokens (+ eos; {b['summary']} "
             f"positions kept for the summary or its generation), template {b['separator']} tokens, "
             f"{b['reserve']} reserved for soft tokens, positions {b['n_positions']}", ""]
    head = f"{'split':<11}{'rows':>8}{'empty art':>10}{'empty sum':>10}{'leaked':>8}{'kept':>8}"
    head += f"{'article p50/p90/p99':>24}{'summary p50/p90/p99':>22}{'trunc art':>10}{'trunc sum':>10}{'byline':>8}"
    lines.append(head)
    for s in SPLITS:
        r = st["report"]["splits"][s]
        x = st["splits"][s]
        a, m = x["article_tokens"], x["summary_tokens"]
        lines.append(
            f"{s:<11}{r['rows']:>8}{r['empty_article']:>10}{r['empty_summary']:>10}{r['leaked']:>8}{r['kept']:>8}"
            f"{a['p50']:>10.0f}/{a['p90']:.0f}/{a['p99']:.0f}".ljust(0)
            + f"{'':>4}{m['p50']:>8.0f}/{m['p90']:.0f}/{m['p99']:.0f}"
            + f"{x['source_truncated'] * 100:>9.1f}%{x['target_truncated'] * 100:>9.1f}%{x['bylines']:>8}")
    lines.append("")
    lines.append("rows: in the source; empty: dropped for an empty article / summary; leaked: dropped because the "
                 "id or article also appears in a higher-priority split (test > validation > train); kept: the "
                 "seeded subset used; byline: kept articles that open with a Daily Mail byline / time-stamp header "
                 "(removed for Lead-3 only: the prompts give every method the article as the data set has it)")
    return "\n".join(lines)
