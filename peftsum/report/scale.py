"""The grid's report (``compare --models --train-sizes``): each method's quality, its gap to full fine-tuning and
its cost against model size and training-set size, and how abstractive its summaries are (novel bigrams and
extractive density, beside the reference summaries') against both.

Every cell is an ordinary comparison (its own report, intervals and paired differences on the cell's test
articles, which are the same in every cell); this report puts the cells side by side: ``results.csv`` with one
tidy row per cell and method, ``scale_quality.png``, ``scale_gap.png``, ``scale_novelty.png``, ``scale_cost.png``, ``report.md`` and
``report.html``.  Against model size the lines are at the largest training set; against training-set size, on
the largest model.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..config import DEMO_PRESETS
from ..errors import UserError
from ..evaluate.registry import HEADLINE, label
from ..experiment.grid import read_grid
from ..methods import REGISTRY
from ..utils import atomic_path, write_text
from . import plots
from .collect import MethodRuns, collect, with_intervals
from .render import BANNER, fill_section, render_html, write_csv
from .tables import fmt, human, md_table

# the gap of each PEFT method is to full fine-tuning: the registry's reference entry
REFERENCE = next(name for name, cls in REGISTRY.items() if cls.gap_reference)
NOVELTY = ("novel_2gram", "density")  # how abstractive: new bigrams, and the length of copied fragments
SCALE_START, SCALE_END = "<!-- scale:start -->", "<!-- scale:end -->"


@dataclass
class GridCell:
    name: str
    model: str
    train_size: int
    params: int | None  # the base model's parameters
    runs: list[MethodRuns]
    boot: dict


def base_params(runs: list[MethodRuns]) -> int | None:
    """The base model's parameters: a run's total less what its method added (None where no run loads a model)."""
    sizes = [r.result.params.total - r.result.params.added for r in runs if r.result.params.total]
    return max(sizes) if sizes else None


def collect_grid(out: Path) -> tuple[dict, list[GridCell]]:
    """The grid's cells that have finished runs, each with its intervals (the cell's own bootstrap)."""
    grid = read_grid(out)
    cells = []
    for c in grid["cells"]:
        folder = Path(out) / c["name"]
        if not folder.is_dir():
            continue
        runs = collect(folder)
        runs, boot = with_intervals(runs, runs[0].result.config.eval.bootstrap)
        cells.append(GridCell(c["name"], c["model"], c["train_size"], base_params(runs), runs, boot))
    if not cells:
        raise UserError(f"no finished cells under {out}")
    return grid, cells


def gap(cell: GridCell, method: str, key: str = HEADLINE) -> dict | None:
    """``method`` minus full fine-tuning in ``cell``: the paired difference on the same test articles, its 95 %
    interval and Holm-adjusted p (the cell's own pairs); None without full fine-tuning."""
    pairs = cell.boot["pairs"]
    if (method, REFERENCE) in pairs:
        d = pairs[(method, REFERENCE)][key]
        return {"diff": d["diff"], "low": d["low"], "high": d["high"], "p_holm": d["p_holm"]}
    if (REFERENCE, method) in pairs:
        d = pairs[(REFERENCE, method)][key]
        return {"diff": -d["diff"], "low": -d["high"], "high": -d["low"], "p_holm": d["p_holm"]}
    return None


def tidy_rows(cells: list[GridCell]) -> list[dict]:
    """``results.csv``: one row per cell and method."""
    rows = []
    for c in cells:
        for r in c.runs:
            res, ci, g = r.result, r.ci, gap(c, r.method)
            cost = res.cost
            rows.append({
                "model": c.model, "model_params": c.params, "train_size": c.train_size, "method": r.method,
                "seeds": len(r.seeds), HEADLINE: ci[HEADLINE][0], f"{HEADLINE}_lo": ci[HEADLINE][1],
                f"{HEADLINE}_hi": ci[HEADLINE][2], **{k: v[0] for k, v in ci.items() if k != HEADLINE},
                "val_loss": res.eval.val_loss, "test_loss": res.eval.test_loss,
                f"gap_to_{REFERENCE}": g["diff"] if g else None, f"gap_to_{REFERENCE}_lo": g["low"] if g else None,
                f"gap_to_{REFERENCE}_hi": g["high"] if g else None, f"gap_to_{REFERENCE}_p_holm": g["p_holm"] if g else None,
                "trainable": res.params.trainable, "train_seconds": cost.train_seconds,
                "train_flops": cost.train_flops,
                "training_state_bytes": cost.training_state_bytes,
                "peak_memory_bytes": cost.peak_memory_bytes, "cell": c.name})
    return rows


def _slices(cells: list[GridCell]) -> tuple[list[GridCell], list[GridCell]]:
    """The cells along model size (at the largest training set) and along training-set size (on the largest
    model, by parameters)."""
    largest_n = max(c.train_size for c in cells)
    largest_model = max(cells, key=lambda c: c.params or 0).model
    by_model = [c for c in cells if c.train_size == largest_n and c.params]
    by_data = [c for c in cells if c.model == largest_model]
    return by_model, by_data


def figures(out: Path, cells: list[GridCell]) -> dict[str, Path]:
    by_model, by_data = _slices(cells)
    quality, gaps, cost, novelty = {}, {}, {}, {}
    for axis, slice_ in (("params", by_model), ("examples", by_data)):
        for c in slice_:
            x = c.params if axis == "params" else c.train_size
            for r in c.runs:
                ci = r.ci[HEADLINE]
                quality.setdefault(r.method, []).append((f"rouge-{axis}", x, ci[0], ci[1], ci[2]))
                quality[r.method].append((f"loss-{axis}", x, r.result.eval.val_loss, None, None))
                for key in NOVELTY:
                    if key in r.ci:
                        novelty.setdefault(r.method, []).append((f"{key}-{axis}", x, *r.ci[key]))
                g = gap(c, r.method) if r.result.trained and r.method != REFERENCE else None
                if g:
                    gaps.setdefault(r.method, []).append((axis, x, g["diff"], g["low"], g["high"]))
                if axis == "params" and r.result.trained:
                    k = r.result.cost
                    cost.setdefault(r.method, []).extend([
                        ("time", x, k.train_seconds, None, None), ("state", x, k.training_state_bytes / 2**20, None, None),
                        ("flops", x, k.train_flops, None, None)])
    name = label(HEADLINE)
    figs = {"quality": plots.scale_lines(quality, out / "scale_quality.png", [
        ("rouge-params", f"{name} (95 % CI)", "model parameters", True),
        ("rouge-examples", f"{name} (95 % CI)", "training examples", True),
        ("loss-params", "validation loss", "model parameters", True),
        ("loss-examples", "validation loss", "training examples", True)],
        "quality against model size (largest training set) and training-set size (largest model)")}
    if gaps:
        figs["gap"] = plots.scale_lines(gaps, out / "scale_gap.png", [
            ("params", f"{name}: method − full (95 % CI)", "model parameters", True),
            ("examples", f"{name}: method − full (95 % CI)", "training examples", True)],
            "each method's gap to full fine-tuning (paired, on the same test articles)")
    if novelty:
        figs["novelty"] = plots.scale_lines(novelty, out / "scale_novelty.png", [
            (f"{key}-{axis}", f"{label(key)} (95 % CI)", x_label, True)
            for key in NOVELTY for axis, x_label in (("params", "model parameters"), ("examples", "training examples"))
            if any(p[0] == f"{key}-{axis}" for pts in novelty.values() for p in pts)],
            "how abstractive the summaries are, against model size and training-set size (references: "
            + ", ".join(f"{label(k)} {cells[0].boot['references'][k][0]:.2f}" for k in NOVELTY
                        if k in cells[0].boot.get("references", {})) + ")")
    if cost:
        figs["cost"] = plots.scale_lines(cost, out / "scale_cost.png", [
            ("time", "training seconds", "model parameters", True), ("state", "training state (MiB)",
                                                                     "model parameters", True),
            ("flops", "training FLOPs", "model parameters", True)], "cost against model size (largest training set)")
    return figs


TITLES = {"quality": "Quality against scale", "gap": "Gap to full fine-tuning against scale",
          "novelty": "How abstractive the summaries are, against scale", "cost": "Cost against model size"}


def render_markdown(grid: dict, cells: list[GridCell], figs: dict[str, Path]) -> str:
    r0 = cells[0].runs[0].result
    parts = ["# peftsum scale report", ""]
    if _is_demo(cells):
        parts += [f"> **{BANNER}**", ""]
    missing = [c["name"] for c in grid["cells"] if c["name"] not in {x.name for x in cells}]
    parts += [f"Every method on {len(grid['models'])} model(s) x {len(grid['train_sizes'])} training-set size(s), "
              f"the same protocol and seeds ({grid['seeds']} per trained method) in every cell; a smaller training "
              "set is the first examples of the same seeded shuffle (inside the larger ones), and validation "
              f"({r0.data.validation}) and test ({r0.data.test}) are the same articles everywhere. Intervals: each "
              "cell's paired bootstrap on its test articles; the gap to full fine-tuning is the paired difference "
              "(method − full) with its 95 % interval and Holm-adjusted p over the cell's pairs.", ""]
    if missing:
        parts += [f"Not finished yet: {', '.join(missing)}.", ""]
    head = ["model", "params", "train", "method", f"{label(HEADLINE)} [95% CI]", "val loss",
            "− full [95% CI]", "train time", "training state", "train FLOPs"]
    body = []
    for row, (c, r) in zip(tidy_rows(cells), [(cell, run) for cell in cells for run in cell.runs]):
        g = f"{row['gap_to_full']:+.2f} [{row['gap_to_full_lo']:+.2f}, {row['gap_to_full_hi']:+.2f}]" \
            if row["gap_to_full"] is not None else "–"
        body.append([c.model, human(c.params) if c.params else "–", str(c.train_size), r.method,
                     f"{row[HEADLINE]:.2f} [{fmt(row[HEADLINE + '_lo'], '.2f')}, {fmt(row[HEADLINE + '_hi'], '.2f')}]",
                     fmt(row["val_loss"], ".4f"), g,
                     f"{row['train_seconds']:.1f} s" if r.result.trained else "–",
                     f"{human(row['training_state_bytes'])}B" if r.result.trained else "–",
                     human(row["train_flops"]) if row["train_flops"] else "–"])
    parts += ["## Every cell", "", md_table([head, *body]), ""]
    for k, p in figs.items():
        parts += [f"## {TITLES[k]}", "", f"![{TITLES[k]}]({p.name})", ""]
    parts += ["## Each cell's own report", "",
              *[f"- [{c.name}]({c.name}/report.html): {c.model}, {c.train_size} training examples" for c in cells], ""]
    return "\n".join(parts)


def build_grid_report(out: Path, analysis_file: Path | None = None) -> list[Path]:
    out = Path(out)
    grid, cells = collect_grid(out)
    write_csv(out / "results.csv", tidy_rows(cells))
    figs = figures(out, cells)
    md = render_markdown(grid, cells, figs)
    write_text(out / "report.md", md)
    write_text(out / "report.html", render_html(md, figs))
    paths = [out / "results.csv", out / "report.md", out / "report.html", *figs.values()]
    if analysis_file is not None:
        fill_scale_analysis(analysis_file, cells, figs, out)
        paths.append(analysis_file)
    return paths


def fill_scale_analysis(path: Path, cells: list[GridCell], figs: dict[str, Path], out: Path) -> None:
    """docs/analysis.md section 2: the measured gap of prompt tuning (and every PEFT method) to full fine-tuning
    against model size, beside the literature's figure."""
    fill_section(path, SCALE_START, SCALE_END, lambda: _scale_section(path, cells, figs, out))


def _scale_section(path: Path, cells: list[GridCell], figs: dict[str, Path], out: Path) -> list[str]:
    by_model, by_data = _slices(cells)
    lines = ["", f"_Filled by `peftsum report {out.name} --analysis` from a grid of {len(cells)} cells "
             f"(device {cells[0].runs[0].result.cost.device})._", ""]
    if _is_demo(cells):
        lines += [f"> **Measured on the {BANNER}.** The shape of the curves, not their values, is what compares "
                  "with the literature.", ""]
    head = ["model", "params", "train", *[f"{m} − full" for m in _peft_methods(cells)]]
    body = []
    shown = {c.name: c for c in [*by_model, *by_data]}.values()  # the cells the figures show
    for c in sorted(shown, key=lambda c: (c.params or 0, c.train_size)):
        row = [c.model, human(c.params) if c.params else "–", str(c.train_size)]
        for m in _peft_methods(cells):
            g = gap(c, m)
            row.append(f"{g['diff']:+.2f} [{g['low']:+.2f}, {g['high']:+.2f}]" if g else "–")
        body.append(row)
    lines += [f"{label(HEADLINE)} of each method minus full fine-tuning's on the same test articles (95 % paired "
              "bootstrap interval):", "", md_table([head, *body]), ""]
    if "gap" in figs:  # a copy beside the analysis file, linked relatively
        copy = path.parent / "figures" / f"{out.name}_{figs['gap'].name}"
        copy.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(copy) as tmp:
            shutil.copyfile(figs["gap"], tmp)
        lines += [f"![each method's gap to full fine-tuning against scale]({copy.relative_to(path.parent).as_posix()})",
                  ""]
    return lines


def _is_demo(cells: list[GridCell]) -> bool:
    return any(r.result.preset in DEMO_PRESETS for c in cells for r in c.runs)


def _peft_methods(cells: list[GridCell]) -> list[str]:
    return list(dict.fromkeys(r.method for c in cells for r in c.runs if r.result.trained and r.method != REFERENCE))
