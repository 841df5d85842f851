"""``peftsum compare`` and ``peftsum report``.

compare: every method on the same data, the same evaluation protocol and the same stopping rules,
one run directory per method under DIR.  A method whose ``results.json`` exists is skipped; one
with a checkpoint resumes.  Then the report is built from the run directories alone, so
``peftsum report DIR`` rebuilds it without training.
"""

from __future__ import annotations

import base64
import copy
import csv
import json
import logging
import time
from pathlib import Path

from ..config import METHODS, Config
from ..errors import UserError
from ..experiment import is_finished, read_metrics, run_experiment
from ..utils import atomic_path, is_main_process, read_jsonl, write_text
from . import bootstrap, plots

log = logging.getLogger(__name__)

BANNER = ("synthetic demo corpus and a small GPT-2 — a demonstration of the pipeline, not CNN/DailyMail results")
KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")

DEFAULTS_WHY = {
    "prompt-tuning": "AdamW on the soft prompt only. Lester et al. (2021) needed a very large learning rate "
                     "(0.3 with Adafactor): the prompt starts far from a useful point and only 20 vectors move. "
                     "With AdamW's normalised steps we default to 3e-2 on GPT-2 small (a starting point, not "
                     "tuned on CNN/DailyMail here); init from the text \"[SUMMARIZE]\" (6 BPE tokens, "
                     "cycled to 20 rows).",
    "lora": "AdamW 2e-4, linear decay, r=8, alpha=16, dropout 0.05 on attn.c_attn: the GPT-2 settings of Hu et al. "
            "(2021) (they used 2e-4, r=4, alpha=32 on the query/value projections of GPT-2 M).",
    "last-layer": "AdamW 1e-4 on an untied copy of the LM head: the assignment's recipe would train the tied input "
                  "embeddings too. The trunk is frozen, so its features are computed once and cached.",
    "full": "AdamW 5e-5, the usual rate for full fine-tuning of GPT-2 small: every weight moves, so steps are small.",
}


def _say(text: str) -> None:
    if is_main_process():  # several processes: only rank 0 prints
        print(text, flush=True)


def compare(cfg: Config, methods: list[str], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    order = [m for m in METHODS if m in methods]
    t0 = time.perf_counter()
    for m in order:
        run = out / m
        if is_finished(run):
            _say(f"[{m}] finished earlier: {run / 'results.json'} (skipped)")
            continue
        mcfg = copy.deepcopy(cfg)
        mcfg.method.name = m
        resume = (run / "checkpoint.pt").is_file()
        _say(f"[{m}] {'resuming' if resume else 'running'} -> {run}")
        r = run_experiment(mcfg, run, resume=resume)
        ev = r["eval"]
        loss = f"val_loss {ev['val_loss']:.4f}, " if ev["val_loss"] is not None else ""
        _say(f"[{m}] {loss}ROUGE-L {ev['rougeL']:.2f}, train {r['cost']['train_seconds']:.1f}s")
    if not is_main_process():
        return []
    paths = build_report(out)
    _say(f"compare finished in {time.perf_counter() - t0:.0f}s; report: {out / 'report.html'} (also .md, .pdf)")
    return paths


# --- collecting -----------------------------------------------------------------------------

def collect(out: Path) -> list[dict]:
    runs = []
    for m in METHODS:
        p = out / m / "results.json"
        if p.is_file():
            try:
                r = json.loads(p.read_text())
            except ValueError:
                raise UserError(f"{p} is not valid JSON; delete that run directory and run compare again") from None
            pred = out / m / "predictions.jsonl"
            r["_predictions"] = read_jsonl(pred) if pred.is_file() else []
            r["_metrics"] = read_metrics(out / m)
            runs.append(r)
    if not runs:
        raise UserError(f"no finished runs (results.json) under {out}")
    return runs


def flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        if k.startswith("_"):
            continue
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, list):
            flat[f"{prefix}{k}"] = json.dumps(v)
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def with_intervals(runs: list[dict], resamples: int) -> tuple[list[dict], dict]:
    """Attach bootstrap CIs to each run; pairwise paired differences on the shared test articles."""
    ids = None
    for r in runs:
        s = [p["id"] for p in r["_predictions"]]
        present = set(s)
        ids = s if ids is None else [i for i in ids if i in present]
    ids = ids or []
    idx = bootstrap.resample_indices(len(ids), resamples) if ids else None
    scores = {}
    for r in runs:
        by_id = {p["id"]: p for p in r["_predictions"]}
        scores[r["method"]] = {k: [by_id[i][k] for i in ids] for k in KEYS}
        r["ci"] = {k: bootstrap.interval(scores[r["method"]][k], idx) if ids else (r["eval"][k], None, None)
                   for k in KEYS}
    pairs = {}
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if ids:
                pairs[(a["method"], b["method"])] = {
                    k: bootstrap.paired_difference(scores[a["method"]][k], scores[b["method"]][k], idx) for k in KEYS}
    return runs, {"n": len(ids), "resamples": resamples, "pairs": pairs}


# --- the report -------------------------------------------------------------------------------

def fmt(x, spec=".3f", none="–"):
    if x is None:
        return none
    if isinstance(x, float) and x != x:
        return none
    return format(x, spec)


def human(n) -> str:
    if n is None:
        return "–"
    for unit, div in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def build_report(out: Path, analysis_file: Path | None = None) -> list[Path]:
    runs = collect(out)
    cfg0 = runs[0]["config"]
    resamples = cfg0.get("eval", {}).get("bootstrap", 1000)
    runs, boot = with_intervals(runs, resamples)
    with atomic_path(out / "results.csv") as tmp:
        rows = [flatten(r) for r in runs]
        fields = sorted({k for row in rows for k in row}, key=lambda k: (k.split(".")[0] != "method", k))
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    figs = make_figures(out, runs)
    md = render_markdown(runs, boot, figs, out)
    write_text(out / "report.md", md)
    write_text(out / "report.html", render_html(md, figs))
    render_pdf(out / "report.pdf", runs, boot, figs)
    paths = [out / "results.csv", out / "report.md", out / "report.html", out / "report.pdf", *figs.values()]
    if analysis_file is not None:
        fill_analysis(analysis_file, runs, boot)
        paths.append(analysis_file)
    return paths


def summary_rows(runs):
    return [{"method": r["method"], "rougeL": r["eval"]["rougeL"], "trainable": r["params"]["trainable"],
             "train_seconds": r["cost"]["train_seconds"], "peak_memory_bytes": r["cost"]["peak_memory_bytes"],
             "ci": r["ci"]} for r in runs]


def make_figures(out: Path, runs) -> dict[str, Path]:
    curves = {}
    for r in runs:
        tr = [m for m in r["_metrics"] if m.get("type") == "train"]
        va = [m for m in r["_metrics"] if m.get("type") == "eval"]
        if tr or va:
            curves[r["method"]] = {"train_steps": [m["step"] for m in tr], "train_loss": [m["loss"] for m in tr],
                                   "val_steps": [m["step"] for m in va], "val_loss": [m["val_loss"] for m in va]}
    rows = summary_rows(runs)
    figs = {}
    if curves:
        figs["loss"] = plots.loss_curves(curves, out / "loss_curves.png")
    figs["rouge"] = plots.rouge_bars(rows, out / "rouge.png")
    figs["cost"] = plots.quality_vs_cost(rows, out / "quality_vs_cost.png")
    figs["memory"] = plots.memory_bars(rows, out / "memory.png")
    return figs


def results_table(runs) -> list[list[str]]:
    head = ["method", "val loss", "test loss", "test ppl", "ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum",
            "trainable", "added", "adapter bytes", "train s", "peak mem", "train FLOPs", "epochs (best)"]
    body = []
    for r in runs:
        ev, p, c, t = r["eval"], r["params"], r["cost"], r["training"]

        def ci(k, ev=ev, r=r):
            m, lo, hi = r["ci"][k]
            return f"{ev[k]:.2f} [{lo:.2f}, {hi:.2f}]" if lo is not None else f"{ev[k]:.2f}"

        epochs = f"{t['epochs_run']} ({t['best_epoch']})" if t.get("steps") else "–"
        body.append([r["method"], fmt(ev["val_loss"], ".4f"), fmt(ev["test_loss"], ".4f"),
                     fmt(ev["test_perplexity"], ".2f"), ci("rouge1"), ci("rouge2"), ci("rougeL"), ci("rougeLsum"),
                     f"{p['trainable']:,}", f"{p['added']:,}", human(p["adapter_bytes"]),
                     fmt(c["train_seconds"], ".1f"), human(c["peak_memory_bytes"]) + "B",
                     human(c["train_flops"]) if c["train_flops"] else "–", epochs])
    return [head, *body]


def pairs_table(boot) -> list[list[str]]:
    head = ["A − B", "ROUGE-1 diff [95% CI]", "ROUGE-2 diff [95% CI]", "ROUGE-L diff [95% CI]", "significant"]
    body = []
    for (a, b), d in boot["pairs"].items():
        cells = [f"{d[k]['diff']:+.2f} [{d[k]['low']:+.2f}, {d[k]['high']:+.2f}]" for k in ("rouge1", "rouge2", "rougeL")]
        sig = [k for k in ("rouge1", "rouge2", "rougeL") if d[k]["significant"]]
        body.append([f"{a} − {b}", *cells, ", ".join(sig) if sig else "no"])
    return [head, *body]


def hyper_table(runs) -> list[list[str]]:
    head = ["method", "optimizer", "lr", "schedule (warmup)", "batch x accum", "lengths src/tgt", "method settings",
            "stopped"]
    body = []
    for r in runs:
        c, t = r["config"], r["training"]
        if not t.get("steps"):
            body.append([r["method"], "–", "–", "–", "–",
                         f"{c['data']['max_source_tokens']}/{c['data']['max_target_tokens']}", "no training", "–"])
            continue
        hp = {k: v for k, v in r.get("method_hyperparameters", {}).items() if k != "lr"}
        body.append([r["method"], c["train"]["optimizer"], f"{t['learning_rate']:g}",
                     f"{c['train']['schedule']} ({c['train']['warmup_ratio']:g})",
                     f"{c['train']['batch_size']} x {c['train']['grad_accum']}",
                     f"{c['data']['max_source_tokens']}/{c['data']['max_target_tokens']}",
                     ", ".join(f"{k}={v}" for k, v in hp.items()) or "–", t["stopped_reason"]])
    return [head, *body]


def md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(out)


def render_markdown(runs, boot, figs, out: Path) -> str:
    r0 = runs[0]
    cfg = r0["config"]
    demo = any(r.get("preset") == "demo" for r in runs)
    parts = ["# peftsum comparison report", ""]
    if demo:
        parts += [f"> **{BANNER}**", ""]
    parts += [f"Model: `{r0['model']}` · data: `{cfg['data']['source']}` ({r0['data']['train']} train / "
              f"{r0['data']['validation']} validation / {r0['data']['test']} test) · device: {r0['cost']['device']}",
              "", "## Results", "",
              f"ROUGE F1 x 100 on {boot['n']} test articles, with 95 % paired-bootstrap intervals "
              f"({boot['resamples']} resamples over test articles). Losses are token-weighted NLL of the summary "
              "tokens. The test split was used only for this final evaluation; early stopping and the best "
              "checkpoint used the validation split.", "", md_table(results_table(runs)), ""]
    if boot["pairs"]:
        parts += ["## Which differences are significant", "",
                  "Paired bootstrap of the difference on the same test articles; significant when the 95 % "
                  "interval excludes zero.", "", md_table(pairs_table(boot)), ""]
    titles = {"loss": "Loss curves", "rouge": "ROUGE with 95 % intervals", "cost": "Quality against cost",
              "memory": "Peak memory"}
    parts += ["## Figures", ""]
    for k, p in figs.items():
        parts += [f"### {titles[k]}", "", f"![{titles[k]}]({p.name})", ""]
    parts += ["## Hyperparameters", "", md_table(hyper_table(runs)), "",
              "Why these defaults (per method, from the literature — not one shared learning rate):", ""]
    parts += [f"- **{m}**: {why}" for m, why in DEFAULTS_WHY.items() if any(r["method"] == m for r in runs)]
    if demo:
        parts += ["- The demo preset raises these rates (see the table): a run of a few hundred steps on a tiny "
                  "model; it also uses fewer examples and epochs."]
    parts += ["", "Protocol shared by every method: same data subset and seed, AdamW, warmup then "
              f"{cfg['train']['schedule']} decay, gradient clipping at {cfg['train']['max_grad_norm']}, up to "
              f"{cfg['train']['epochs']} epochs with early stopping on validation loss (patience "
              f"{cfg['train']['patience']}), generation {'greedy' if cfg['eval']['num_beams'] == 1 else 'beam ' + str(cfg['eval']['num_beams'])}"
              f", at most {cfg['eval']['max_new_tokens']} new tokens, no_repeat_ngram_size "
              f"{cfg['eval']['no_repeat_ngram_size']} on the generated tokens only.", "",
              "## Notes on correctness", "",
              "- GPT-2 ties `lm_head` to `wte`: the assignment's last-layer recipe would also train the input "
              "embeddings. peftsum unties the head (a copy) and trains only it unless `last_layer.tied: true`.",
              "- Loss is computed on the summary tokens of the same concatenated sequence only (article, template "
              "and padding are -100); ROUGE is computed on generated new tokens only.",
              "- Soft-prompt tokens count against the model's 1024 positions; the article budget accounts for them.",
              "- 'added' counts new parameters once (the tied matrix is not double-counted).", "",
              "## Software", "", ", ".join(f"{k} {v}" for k, v in r0.get("versions", {}).items()), ""]
    return "\n".join(parts)


def render_html(md: str, figs: dict[str, Path]) -> str:
    """A self-contained HTML page (images embedded as data URIs) from the Markdown report."""
    import html as h

    def img(path: Path) -> str:
        data = base64.b64encode(path.read_bytes()).decode()
        return f'<img alt="{path.stem}" src="data:image/png;base64,{data}" style="max-width:100%">'

    by_name = {p.name: p for p in figs.values()}
    body, table = [], []

    def flush():
        if table:
            rows = [r.strip().strip("|").split(" | ") for r in table if not r.startswith("|---")]
            out = "<table><thead><tr>" + "".join(f"<th>{h.escape(c)}</th>" for c in rows[0]) + "</tr></thead><tbody>"
            out += "".join("<tr>" + "".join(f"<td>{h.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            body.append(out + "</tbody></table>")
            table.clear()

    import re

    def inline(s: str) -> str:
        s = h.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("### "):
            body.append(f"<h3>{inline(line[4:])}</h3>")
        elif line.startswith("> "):
            body.append(f'<div class="banner">{inline(line[2:])}</div>')
        elif line.startswith("!["):
            name = line[line.index("(") + 1: -1]
            body.append(img(by_name[name]) if name in by_name else "")
        elif line.startswith("- "):
            body.append(f"<ul><li>{inline(line[2:])}</li></ul>")
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
    flush()
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 6px}"
             "th{background:#f3f3f3}.banner{background:#fff3cd;border:1px solid #e0c36c;padding:.8em;font-weight:600}"
             "code{background:#f5f5f5;padding:0 3px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>peftsum report</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


def _latin1(s: str) -> str:
    rep = {"—": "-", "–": "-", "−": "-", "·": "|", "≤": "<=", "≥": ">=", "×": "x", "“": '"', "”": '"', "’": "'",
           "…": "...", "ᵀ": "T", "Δ": "d"}
    for a, b in rep.items():
        s = s.replace(a, b)
    return s.encode("latin-1", "replace").decode("latin-1")


def render_pdf(path: Path, runs, boot, figs) -> None:
    """The report as a PDF with fpdf2 (pure Python, renders offline): tables, plots, hyperparameters."""
    from fpdf import FPDF

    pdf = FPDF(orientation="L", unit="mm", format="A4")
    pdf.set_auto_page_break(True, margin=12)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, "peftsum comparison report", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=9)
    if any(r.get("preset") == "demo" for r in runs):
        pdf.set_fill_color(255, 243, 205)
        pdf.set_font("Helvetica", "B", 10)
        pdf.multi_cell(0, 6, _latin1(BANNER), fill=True, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=9)
    r0 = runs[0]
    pdf.multi_cell(0, 5, _latin1(f"Model {r0['model']}; data {r0['config']['data']['source']} ({r0['data']['train']}/"
                                 f"{r0['data']['validation']}/{r0['data']['test']}); device {r0['cost']['device']}. "
                                 f"ROUGE F1 x100 on {boot['n']} test articles with 95% paired-bootstrap intervals "
                                 f"({boot['resamples']} resamples)."), new_x="LMARGIN", new_y="NEXT")

    def table(rows, font=6.5):
        pdf.set_font("Helvetica", size=font)
        with pdf.table(text_align="LEFT", line_height=4) as t:
            for r in rows:
                row = t.row()
                for c in r:
                    row.cell(_latin1(str(c)))
        pdf.ln(3)

    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 8, "Results", new_x="LMARGIN", new_y="NEXT")
    table(results_table(runs))
    if boot["pairs"]:
        pdf.set_font("Helvetica", "B", 12)
        pdf.cell(0, 8, "Pairwise differences (paired bootstrap)", new_x="LMARGIN", new_y="NEXT")
        table(pairs_table(boot), font=7)
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 8, "Hyperparameters", new_x="LMARGIN", new_y="NEXT")
    table(hyper_table(runs), font=7)
    pdf.set_font("Helvetica", size=8)
    for m, why in DEFAULTS_WHY.items():
        if any(r["method"] == m for r in runs):
            pdf.multi_cell(0, 4.5, _latin1(f"{m}: {why}"), new_x="LMARGIN", new_y="NEXT")
    for p in figs.values():
        pdf.add_page()
        pdf.image(str(p), w=230)
    pdf.set_font("Helvetica", size=8)
    pdf.multi_cell(0, 4.5, _latin1("Software: " + ", ".join(f"{k} {v}" for k, v in r0.get("versions", {}).items())),
                   new_x="LMARGIN", new_y="NEXT")
    with atomic_path(path) as tmp:
        pdf.output(str(tmp))


ANALYSIS_START = "<!-- results:start -->"
ANALYSIS_END = "<!-- results:end -->"


def fill_analysis(path: Path, runs, boot) -> None:
    """Replace the results section of docs/analysis.md with tables built from the measured runs."""
    if not path.is_file():
        raise UserError(f"analysis file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if ANALYSIS_START not in text or ANALYSIS_END not in text:
        raise UserError(f"{path} has no '{ANALYSIS_START}' ... '{ANALYSIS_END}' section to fill")
    best = max((r for r in runs), key=lambda r: r["eval"]["rougeL"])
    trained = [r for r in runs if r["training"].get("steps")]
    lines = [ANALYSIS_START, "",
             f"_Filled by `peftsum report DIR --analysis` from {len(runs)} runs "
             f"(preset `{runs[0].get('preset')}`, model `{runs[0]['model']}`, device {runs[0]['cost']['device']})._", ""]
    if any(r.get("preset") == "demo" for r in runs):
        lines += [f"> **{BANNER}**", ""]
    lines += [md_table(results_table(runs)), ""]
    if boot["pairs"]:
        lines += [md_table(pairs_table(boot)), ""]
    lines.append(f"- Highest ROUGE-L: **{best['method']}** ({best['eval']['rougeL']:.2f}).")
    for r in trained:
        share = r["params"]["trainable"] / max(r["params"]["total"], 1) * 100
        lines.append(f"- {r['method']}: {r['params']['trainable']:,} trainable parameters ({share:.3f} % of "
                     f"{r['params']['total']:,}), {r['cost']['train_seconds']:.1f} s of training, validation loss "
                     f"{r['eval']['val_loss']:.4f}, stopped by {r['training']['stopped_reason']} after "
                     f"{r['training']['epochs_run']} epoch(s).")
    lines += ["", ANALYSIS_END]
    before, rest = text.split(ANALYSIS_START, 1)
    after = rest.split(ANALYSIS_END, 1)[1]
    write_text(path, before + "\n".join(lines) + after)
