"""The comparison report, built from the run directories alone (``peftsum report DIR`` rebuilds it
without training): ``results.csv`` (numbers), ``results_config.csv`` (each run's settings), the figures,
``report.md``, the same as self-contained HTML (markdown-it-py) and as PDF (fpdf2).
"""

from __future__ import annotations

import base64
import csv
from collections.abc import Callable
from pathlib import Path

from fpdf import FPDF
from markdown_it import MarkdownIt

from ..config import DEMO_PRESETS
from ..errors import UserError
from ..evaluate.metrics import ROUGE_PROTOCOL
from ..evaluate.registry import GROUPS, HEADLINE, label
from ..methods import ModelFree, entry
from ..utils import atomic_path, write_text
from . import plots
from .collect import collect, flatten, with_intervals
from .examples import examples_html, examples_markdown, pick_examples
from .sweep import tuning_section
from .tables import (
    csv_rows,
    hyper_table,
    in_group,
    md_table,
    memory_table,
    pairs_table,
    results_table,
    summary_table,
)

BANNER = ("synthetic demo corpus and a small GPT-2 — a demonstration of the pipeline, not CNN/DailyMail results")



def rationale(method: str) -> str:
    """Why a method's defaults are what they are (its registry entry's words; none for a PEFT tuner's run)."""
    return entry(method).rationale


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)


def build_report(out: Path, analysis_file: Path | None = None) -> list[Path]:
    runs = collect(out)
    cfg0 = runs[0].result.config
    runs, boot = with_intervals(runs, cfg0.eval.bootstrap)
    write_csv(out / "results.csv", csv_rows(runs, boot))
    write_csv(out / "results_config.csv", [{"method": r.method, **flatten(r.result.config.to_dict())} for r in runs])
    figs = make_figures(out, runs, boot)
    k, seed = cfg0.eval.examples, cfg0.data.seed
    picked = pick_examples(runs, k, seed)
    md = render_markdown(runs, boot, figs, out)
    examples_md = examples_markdown(picked, k, seed)
    write_text(out / "report.md", "\n".join([md, *examples_md]))
    write_text(out / "report.html", render_html(md, figs, examples_html(picked, k, seed)))
    render_pdf(out / "report.pdf", runs, boot, figs, examples_md)
    paths = [out / "results.csv", out / "results_config.csv", out / "report.md", out / "report.html", out / "report.pdf", *figs.values()]
    if analysis_file is not None:
        fill_analysis(analysis_file, runs, boot)
        paths.append(analysis_file)
    return paths


def summary_rows(runs):
    return [{"method": r.method, "headline": r.result.eval.value(HEADLINE), "trainable": r.result.params.trainable,
             "train_seconds": r.result.cost.train_seconds, "peak_memory_bytes": r.result.cost.peak_memory_bytes,
             **{k: getattr(r.result.cost, k) for k in ("weights_bytes", "gradient_bytes", "optimizer_bytes",
                                                       "train_peak_bytes", "eval_peak_bytes")},
             "ci": r.ci, "per_seed": [dict(s.result.eval.metrics) for s in r.seeds]} for r in runs]


def fragment_points(runs, boot) -> dict[str, tuple[list, list, list]]:
    """Each summary's (coverage, density, compression), per method (its first seed) and for the references."""
    names = {m.name for m in boot["metrics"]}
    if not {"coverage", "density", "compression"} <= names:
        return {}
    keys = ("coverage", "density", "compression")
    points = {r.method: tuple([p[k] for p in r.predictions] for k in keys) for r in runs}
    refs = [p.get("reference_metrics", {}) for p in runs[0].predictions]
    if all(all(k in x for k in keys) for x in refs):
        points["references"] = tuple([x[k] for x in refs] for k in keys)
    return points


def make_figures(out: Path, runs, boot) -> dict[str, Path]:
    curves = {}
    for r in runs:
        tr = [m for m in r.metrics if m.get("type") == "train"]
        va = [m for m in r.metrics if m.get("type") == "eval"]
        if tr or va:
            curves[r.method] = {"train_steps": [m["step"] for m in tr], "train_loss": [m["loss"] for m in tr],
                                   "val_steps": [m["step"] for m in va], "val_loss": [m["val_loss"] for m in va]}
    rows = summary_rows(runs)
    figs = {}
    if curves:
        figs["loss"] = plots.loss_curves(curves, out / "loss_curves.png")
    labels = {m.name: m.label for m in boot["metrics"]}
    overlap = [m.name for m in in_group(boot["metrics"], "overlap")]
    figs["rouge"] = plots.metric_bars(rows, out / "rouge.png", overlap, labels, "F1 x 100 (95% bootstrap CI)")
    summary = [m.name for m in in_group(boot["metrics"], "summary")]
    if summary:
        figs["summary"] = plots.summary_panels(rows, boot["references"], out / "summary_stats.png", summary, labels)
    points = fragment_points(runs, boot)
    if points:
        figs["fragments"] = plots.coverage_density(points, out / "coverage_density.png")
    figs["cost"] = plots.quality_vs_cost(rows, out / "quality_vs_cost.png", label(HEADLINE))
    figs["memory"] = plots.memory_bars(rows, out / "memory.png",
                                       "CUDA max allocated" if runs[0].result.cost.reserved_peak_bytes is not None
                                       else "peak RSS of the process")
    lengths = {r.method: [p["generated_tokens"] for p in r.predictions if p.get("generated_tokens") is not None]
               for r in runs}
    if any(lengths.values()):
        limit = runs[0].result.config.eval.decoding.max_new_tokens
        figs["lengths"] = plots.length_distribution({m: v for m, v in lengths.items() if v}, out / "lengths.png", limit)
    if (out / "sweep.json").is_file() and (out / "sweep_lr.png").is_file():  # compare --config a sweep's best.yaml
        figs["sweep"] = out / "sweep_lr.png"
    return figs


FIGURE_TITLES = {"loss": "Loss curves", "rouge": "Agreement with the reference, with 95 % intervals",
                 "summary": "What the summaries are, with 95 % intervals (dashed: the reference summaries)",
                 "fragments": "Extractive fragments: coverage against density (Grusky et al. 2018)",
                 "cost": "Quality against cost", "memory": "Memory: the training state by its parts, and the measured peaks",
                 "sweep": "Sweep: validation loss against learning rate", "lengths": "Generated summary lengths"}


def render_markdown(runs, boot, figs, out: Path) -> str:
    """report.md: the results, what the summaries are, memory, significance, tuning, figures, hyperparameters."""
    r0 = runs[0].result
    demo = any(r.result.preset in DEMO_PRESETS for r in runs)
    parts = ["# peftsum comparison report", "", *([f"> **{BANNER}**", ""] if demo else [])]
    parts += results_section(runs, boot)
    parts += summary_section(runs, boot)
    parts += ["## Memory", "", "The training state by its parts, in exact bytes of the tensors (the weights include "
              "the frozen ones; gradients and optimizer state exist for the trained ones only), beside the measured "
              "peaks of training and of evaluation, each from the start of its phase "
              f"({r0.cost.memory_measure or 'see results.json'}).", "", md_table(memory_table(runs)), ""]
    parts += significance_section(boot)
    parts += tuning_section(out)
    parts += ["## Figures", ""]
    for k, p in figs.items():
        parts += [f"### {FIGURE_TITLES[k]}", "", f"![{FIGURE_TITLES[k]}]({p.name})", ""]
    parts += hyperparameter_section(runs, demo)
    parts += ["## Notes on correctness", "",
              "- GPT-2 ties `lm_head` to `wte`: the assignment's last-layer recipe would also train the input "
              "embeddings. peftsum unties the head (a copy) and trains only it unless `last_layer.tied: true`.",
              "- Loss is computed on the summary tokens of the same concatenated sequence only (article, template "
              "and padding are -100); ROUGE is computed on generated new tokens only.",
              "- Soft-prompt tokens count against the model's 1024 positions; the article budget accounts for them.",
              "- 'added' counts new parameters once (the tied matrix is not double-counted).", "",
              "## Software", "", ", ".join(f"{k} {v}" for k, v in r0.versions.items()), ""]
    return "\n".join(parts)


def results_section(runs, boot) -> list[str]:
    r0 = runs[0].result
    parts = [f"Model: `{r0.model}` · data: `{r0.config.data.source}` ({r0.data.train} train / "
             f"{r0.data.validation} validation / {r0.data.test} test) · device: {r0.cost.device}",
             "", "## Results", "",
             f"ROUGE F1 x 100 on {boot['n']} test articles, with 95 % paired-bootstrap intervals "
             f"({boot['resamples']} resamples over test articles). {protocol_text(runs)} Losses are token-weighted "
             "NLL of the summary tokens. The test split was used only for this final evaluation; early stopping and "
             "the best checkpoint used the validation split. ROUGE rewards length, so the mean number of generated "
             "tokens and the share of summaries cut at the token limit stand beside it. Peak memory: "
             f"{r0.cost.memory_measure or 'see results.json'}.", ""]
    if max(boot.get("seeds", [1])) > 1:
        parts += [f"Each trained method ran {max(boot['seeds'])} seeds (initialisation, data order, dropout; the "
                  "data split fixed): its figures are the mean ± standard deviation across seeds, and every "
                  "interval and pairwise difference resamples the test articles and the seeds (a two-level "
                  "bootstrap), so it holds both sources of variance. The baselines train nothing and ran once. "
                  "Loss curves show each method's first seed; the ROUGE plot marks every seed.", ""]
    return [*parts, md_table(results_table(runs, boot["metrics"])), ""]


def significance_section(boot) -> list[str]:
    if not boot["pairs"]:
        return []
    parts = ["## Which differences are significant", "",
             f"Paired bootstrap of each difference on the same test articles ({boot['resamples']} resamples): "
             "the mean difference, its 95 % interval and a two-sided bootstrap p-value. With "
             f"{len(boot['pairs'])} pairs tested at once, the p-values of each metric are adjusted together "
             "by Holm–Bonferroni; a difference is called significant when its adjusted p is below 0.05.",
             "", md_table(pairs_table(boot, "overlap")), ""]
    if in_group(boot["metrics"], "summary"):
        parts += ["The same for what the summaries are (a significant difference says the methods write "
                  "differently, not that one is better):", "", md_table(pairs_table(boot, "summary")), ""]
    return parts


def hyperparameter_section(runs, demo: bool) -> list[str]:
    cfg = runs[0].result.config
    parts = ["## Hyperparameters", "", md_table(hyper_table(runs)), "",
             "Why these defaults (per method, from the literature — not one shared learning rate):", ""]
    parts += [f"- **{r.method}**: {why}" for r in runs if (why := rationale(r.method))]
    if demo:
        parts += ["- The demo preset raises these rates (see the table): a run of a few hundred steps on a tiny "
                  "model; it also uses fewer examples and epochs."]
    return [*parts, "", "Protocol shared by every method: same data subset and seed, AdamW, warmup then "
            f"{cfg.train.schedule} decay, gradient clipping at {cfg.train.max_grad_norm}, up to "
            f"{cfg.train.epochs} epochs with early stopping (stop after {cfg.train.patience} consecutive "
            "validations without improvement; the best checkpoint and early stopping judged by the validation "
            f"{'loss' if cfg.train.select_by == 'loss' else 'ROUGE-Lsum'}), the decoding above "
            "for every method.", ""]


def summary_section(runs, boot) -> list[str]:
    """What the summaries are: the reference-free statistics of every method and of the reference summaries."""
    shown = in_group(boot["metrics"], "summary")
    if not shown:
        return []
    about = "; ".join(m.about for m in shown if m.about)
    return [f"## {GROUPS['summary']}", "",
            "Does a method write an abstract or copy the article, repeat itself, write as much as a reference? "
            f"Means over the {boot['n']} test articles with 95 % bootstrap intervals, and the reference summaries' "
            f"own values in the last row. Words: lower-cased runs of letters and digits. {about}. A copy of the "
            "article's lead has no novel n-grams, coverage 1 and a density near its sentence length.", "",
            md_table(summary_table(runs, boot)), ""]


def protocol_text(runs) -> str:
    """What the scores mean: the ROUGE variant, stemmer and sentence splitter, each decoding, the article budget."""
    decodings: dict[str, list[str]] = {}
    for r in runs:
        if not issubclass(entry(r.method), ModelFree):  # Lead-3 generates nothing
            text = r.result.protocol.decoding_text or "see the config"
            decodings.setdefault(text, []).append(r.method)
    if len(decodings) == 1:
        dec = f"Summaries are decoded the same way for every method: {next(iter(decodings))}."
    else:
        dec = "Decoding: " + "; ".join(f"{', '.join(ms)}: {text}" for text, ms in decodings.items()) + "."
    zs = next((r.result.protocol.zero_shot for r in runs if r.result.protocol.zero_shot), None)
    if zs == "gpt2-paper":
        dec += (" Zero-shot follows the GPT-2 paper (Radford et al., 2019, section 3.6): top-k sampling with k = 2 "
                "after \"TL;DR:\", 100 tokens, the first 3 generated sentences kept.")
    budget = runs[0].result.article_budget()
    share = runs[0].result.data.articles_truncated.get("test")
    cut = f" ({share * 100:.1f} % of the test articles were longer and cut)" if share is not None else ""
    lead = (" Lead-3 is the first three sentences of the article by the same splitter, after its Daily Mail byline "
            "(the short \" . \"-separated header pieces before the first sentence: authors, \"Follow @@...\", time "
            "stamps) is removed; that cleaning is Lead-3's only: the prompts give every method the article as the data "
            "set has it, byline included, as the published CNN/DailyMail systems read it, while Lead-3's first "
            "sentences would otherwise be header pieces." if any(issubclass(entry(r.method), ModelFree) for r in runs)
            else "")
    return (f"{runs[0].result.protocol.rouge or ROUGE_PROTOCOL} {dec} Every method read the same article "
            f"tokens: at most {budget}{cut}.{lead}")


def render_html(md: str, figs: dict[str, Path], extra_html: str = "") -> str:
    """A self-contained HTML page from the Markdown report (markdown-it-py, CommonMark + tables), the
    figures embedded as data URIs, then ``extra_html`` (the collapsible summaries)."""
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(md) + extra_html
    for p in figs.values():
        data = base64.b64encode(p.read_bytes()).decode()
        body = body.replace(f'src="{p.name}"', f'src="data:image/png;base64,{data}" style="max-width:100%"')
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 6px}"
             "th{background:#f3f3f3}blockquote{background:#fff3cd;border:1px solid #e0c36c;padding:.8em;margin:0;"
             "font-weight:600}code{background:#f5f5f5;padding:0 3px}details.example{margin:.4em 0}"
             "details.example summary{cursor:pointer}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>peftsum report</title><style>{style}</style>"
            f"</head><body>{body}</body></html>\n")


def _latin1(s: str) -> str:
    rep = {"—": "-", "–": "-", "−": "-", "·": "|", "≤": "<=", "≥": ">=", "×": "x", "“": '"', "”": '"', "’": "'",
           "…": "...", "ᵀ": "T", "Δ": "d"}
    for a, b in rep.items():
        s = s.replace(a, b)
    return s.encode("latin-1", "replace").decode("latin-1")


class _Pdf(FPDF):
    """fpdf2 with the report's pieces: a heading, a table of cells, a paragraph (latin-1: the core fonts')."""

    def heading(self, text: str) -> None:
        self.set_font("Helvetica", "B", 12)
        self.cell(0, 8, _latin1(text), new_x="LMARGIN", new_y="NEXT")

    def rows(self, rows, font: float = 6.5) -> None:
        self.set_font("Helvetica", size=font)
        with self.table(text_align="LEFT", line_height=4) as t:
            for r in rows:
                row = t.row()
                for c in r:
                    row.cell(_latin1(str(c)))
        self.ln(3)

    def paragraph(self, text: str, size: float = 8, height: float = 4.5) -> None:
        self.set_font("Helvetica", size=size)
        self.multi_cell(0, height, _latin1(text), new_x="LMARGIN", new_y="NEXT")


def render_pdf(path: Path, runs, boot, figs, examples_md: list[str] | None = None) -> None:
    """The report as a PDF with fpdf2 (pure Python, renders offline): tables, plots, hyperparameters."""
    pdf = _Pdf(orientation="L", unit="mm", format="A4")
    pdf.set_auto_page_break(True, margin=12)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, "peftsum comparison report", new_x="LMARGIN", new_y="NEXT")
    if any(r.result.preset in DEMO_PRESETS for r in runs):
        pdf.set_fill_color(255, 243, 205)
        pdf.set_font("Helvetica", "B", 10)
        pdf.multi_cell(0, 6, _latin1(BANNER), fill=True, new_x="LMARGIN", new_y="NEXT")
    r0 = runs[0].result
    pdf.paragraph(f"Model {r0.model}; data {r0.config.data.source} ({r0.data.train}/{r0.data.validation}/"
                  f"{r0.data.test}); device {r0.cost.device}. ROUGE F1 x100 on {boot['n']} test articles with 95% "
                  f"paired-bootstrap intervals ({boot['resamples']} resamples). {protocol_text(runs)}", 9, 5)
    pdf.heading("Results")
    pdf.rows(results_table(runs, boot["metrics"]))
    if in_group(boot["metrics"], "summary"):
        pdf.heading(GROUPS["summary"])
        pdf.rows(summary_table(runs, boot), font=7)
    if boot["pairs"]:
        pdf.heading("Pairwise differences (paired bootstrap)")
        for group in GROUPS:
            if in_group(boot["metrics"], group):
                pdf.rows(pairs_table(boot, group), font=6)
    pdf.heading("Hyperparameters")
    pdf.rows(memory_table(runs), font=7)
    pdf.rows(hyper_table(runs), font=7)
    for r in runs:
        if why := rationale(r.method):
            pdf.paragraph(f"{r.method}: {why}")
    for p in figs.values():
        pdf.add_page()
        pdf.image(str(p), w=230)
    if examples_md:
        pdf.add_page()
        for line in examples_md:
            if text := line.lstrip("#").strip().replace("**", "").replace("`", ""):
                pdf.paragraph(text, 7.5, 4)
    pdf.paragraph("Software: " + ", ".join(f"{k} {v}" for k, v in r0.versions.items()))
    with atomic_path(path) as tmp:
        pdf.output(str(tmp))


ANALYSIS_START = "<!-- results:start -->"
ANALYSIS_END = "<!-- results:end -->"


def fill_section(path: Path, start: str, end: str, body: Callable[[], list[str]]) -> None:
    """Replace what lies between the markers ``start`` and ``end`` of ``path`` (docs/analysis.md) with the lines
    ``body()`` returns; a missing file or marker is a UserError before ``body`` runs."""
    if not path.is_file():
        raise UserError(f"analysis file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if start not in text or end not in text:
        raise UserError(f"{path} has no '{start}' ... '{end}' section to fill")
    lines = [start, *body(), end]
    before, rest = text.split(start, 1)
    write_text(path, before + "\n".join(lines) + rest.split(end, 1)[1])


def fill_analysis(path: Path, runs, boot) -> None:
    """Replace the results section of docs/analysis.md with tables built from the measured runs."""
    fill_section(path, ANALYSIS_START, ANALYSIS_END, lambda: _results_section(runs, boot))


def _results_section(runs, boot) -> list[str]:
    best = max(runs, key=lambda r: r.result.eval.value(HEADLINE))
    trained = [r for r in runs if r.result.trained]
    lines = ["",
             f"_Filled by `peftsum report DIR --analysis` from {len(runs)} runs "
             f"(preset `{runs[0].result.preset}`, model `{runs[0].result.model}`, device {runs[0].result.cost.device})._", ""]
    if any(r.result.preset in DEMO_PRESETS for r in runs):
        lines += [f"> **{BANNER}**", ""]
    lines += [protocol_text(runs), "", md_table(results_table(runs, boot["metrics"])), ""]
    if in_group(boot["metrics"], "summary"):
        lines += [md_table(summary_table(runs, boot)), ""]
    if boot["pairs"]:
        lines += [md_table(pairs_table(boot, "overlap")), ""]
    lines.append(f"- Highest {label(HEADLINE)} (summary-level): **{best.method}** "
                 f"({best.result.eval.value(HEADLINE):.2f}).")
    for r in trained:
        p, res = r.result.params, r.result
        share = p.trainable / max(p.total, 1) * 100
        lines.append(f"- {r.method}: {p.trainable:,} trainable parameters ({share:.3f} % of "
                     f"{p.total:,}), {res.cost.train_seconds:.1f} s of training, validation loss "
                     f"{res.eval.val_loss:.4f}, stopped by {res.training.stopped_reason} after "
                     f"{res.training.epochs_run} epoch(s).")
    return [*lines, ""]
