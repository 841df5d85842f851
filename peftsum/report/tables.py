"""The report's tables, as lists of cells (Markdown and PDF draw the same ones) and as CSV rows."""

from __future__ import annotations

from ..evaluate.registry import Metric
from .collect import MethodRuns


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


def in_group(metrics: list[Metric], group: str) -> list[Metric]:
    return [m for m in metrics if m.group == group]


def _with_ci(r: MethodRuns, m: Metric, spread: dict) -> str:
    """A method's mean of ``m`` (± its standard deviation over seeds) and its 95 % interval."""
    mean, lo, hi = r.ci[m.name]
    value = r.result.eval.metrics.get(m.name, mean)  # the mean over seeds of each seed's mean
    return _interval(m, value, lo, hi, spread.get(m.name))


def _interval(m: Metric, value: float, lo: float | None, hi: float | None, sd: float | None = None) -> str:
    """``value ± sd [lo, hi]`` in the metric's format (the parts that are there)."""
    text = f"{value:{m.fmt}}" + (f" ± {sd:{m.fmt}}" if sd is not None else "")
    return f"{text} [{lo:{m.fmt}}, {hi:{m.fmt}}]" if lo is not None else text


def results_table(runs: list[MethodRuns], metrics: list[Metric]) -> list[list[str]]:
    """Losses, the metrics of agreement with the reference (``metrics`` of group "overlap") with their intervals,
    lengths, sizes and costs: one row per method."""
    overlap = in_group(metrics, "overlap")
    head = ["method", "val loss", "test loss", "test ppl", *(m.label for m in overlap),
            "gen. tokens", "cut at max", "trainable", "added", "adapter bytes", "train s", "peak mem", "train FLOPs",
            "epochs (best)"]
    several = any(len(r.seeds) > 1 for r in runs)
    if several:
        head.insert(1, "seeds")
    body = []
    for r in runs:
        scores, p, c, t = r.result.eval, r.result.params, r.result.cost, r.result.training
        spread = r.eval_std if len(r.seeds) > 1 else {}
        cost_spread = r.cost_std if spread else {}

        def sd(value: str, std) -> str:
            return f"{value} ± {std:.{2 if '.' not in value else len(value.split('.')[1])}f}" if std is not None else value

        epochs = f"{t.epochs_run} ({t.best_epoch})" if t.steps else "–"
        loss = [sd(fmt(scores.value(k), ".4f"), spread.get(k)) if scores.value(k) is not None else "–"
                for k in ("val_loss", "test_loss")]
        cut = scores.hit_max_new_tokens
        body.append([r.method, *([str(len(r.seeds))] if several else []), *loss,
                     fmt(scores.test_perplexity, ".2f"), *(_with_ci(r, m, spread) for m in overlap),
                     fmt(scores.mean_generated_tokens, ".1f"),
                     fmt(None if cut is None else cut * 100, ".0f") + ("%" if cut is not None else ""),
                     f"{p.trainable:,}", f"{p.added:,}", human(p.adapter_bytes),
                     sd(fmt(c.train_seconds, ".1f"), cost_spread.get("train_seconds")),
                     human(c.peak_memory_bytes) + "B"
                     + (f" ± {human(cost_spread['peak_memory_bytes'])}B" if cost_spread.get("peak_memory_bytes") else ""),
                     human(c.train_flops) if c.train_flops else "–", epochs])
    return [head, *body]


def summary_table(runs: list[MethodRuns], boot: dict) -> list[list[str]]:
    """What the summaries are (the metrics of group "summary") with their intervals: one row per method, and the
    reference summaries' own values (where a metric needs no reference) as the last row."""
    shown = in_group(boot["metrics"], "summary")
    body = []
    for r in runs:
        spread = r.eval_std if len(r.seeds) > 1 else {}
        body.append([r.method, *(_with_ci(r, m, spread) for m in shown)])
    refs = boot.get("references", {})
    body.append(["references", *(_interval(m, *refs[m.name]) if m.name in refs else "–" for m in shown)])
    return [["method", *(m.label for m in shown)], *body]


def pairs_table(boot: dict, group: str = "overlap") -> list[list[str]]:
    """Each pair's paired-bootstrap difference of every metric of ``group``, its interval and Holm-adjusted p."""
    shown = in_group(boot["metrics"], group)
    head = ["A − B", *(f"{m.label} diff [95% CI] (p Holm)" for m in shown), "significant (Holm, 5 %)"]
    body = []
    for (a, b), d in boot["pairs"].items():
        cells = [f"{d[m.name]['diff']:+{m.fmt}} [{d[m.name]['low']:+{m.fmt}}, {d[m.name]['high']:+{m.fmt}}] "
                 f"({d[m.name]['p_holm']:.3f})" for m in shown]
        sig = [m.label for m in shown if d[m.name]["significant"]]
        body.append([f"{a} − {b}", *cells, ", ".join(sig) if sig else "no"])
    return [head, *body]


def memory_table(runs: list[MethodRuns]) -> list[list[str]]:
    """The training state by its parts (exact bytes) and the measured peaks of training and evaluation."""
    gpu = any(r.result.cost.reserved_peak_bytes for r in runs)
    head = ["method", "weights", "gradients", "optimizer state", "training state", "training peak", "evaluation peak",
            *(["reserved peak"] if gpu else [])]
    body = []
    for r in runs:
        c = r.result.cost
        state = c.training_state_bytes
        cells = [c.weights_bytes, c.gradient_bytes, c.optimizer_bytes, state]
        body.append([r.method, *(human(b) + "B" for b in cells),
                     *(human(b) + "B" if b is not None else "–" for b in (c.train_peak_bytes, c.eval_peak_bytes)),
                     *([human(c.reserved_peak_bytes) + "B" if c.reserved_peak_bytes else "–"] if gpu else [])])
    return [head, *body]


def hyper_table(runs: list[MethodRuns]) -> list[list[str]]:
    head = ["method", "optimizer", "lr", "schedule (warmup)", "batch x accum", "lengths src/tgt", "method settings",
            "stopped"]
    body = []
    for r in runs:
        c, t = r.result.config, r.result.training
        lengths = f"{r.result.article_budget()}/{c.data.max_target_tokens}"
        if not t.steps:
            body.append([r.method, "–", "–", "–", "–", lengths, "no training", "–"])
            continue
        hp = {k: v for k, v in r.result.method_hyperparameters.items() if k != "lr"}
        body.append([r.method, "AdamW", f"{t.learning_rate:g}", f"{c.train.schedule} ({c.train.warmup_ratio:g})",
                     f"{c.train.batch_size} x {c.train.grad_accum}", lengths,
                     ", ".join(f"{k}={v}" for k, v in hp.items()) or "–", t.stopped_reason])
    return [head, *body]


def md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(out)




def csv_rows(runs: list[MethodRuns], boot: dict) -> list[dict]:
    """results.csv: one row per method, numbers as numbers, each metric's interval as value / _lo / _hi columns (and
    _std over seeds), the reference summaries' own value of each metric that needs no reference as reference_<name>
    (the same in every row)."""
    rows = []
    refs = boot.get("references", {})
    for r in runs:
        scores, p, c, t = r.result.eval, r.result.params, r.result.cost, r.result.training
        std, cost_std = r.eval_std, r.cost_std
        row = {"method": r.method, "seeds": len(r.seeds), "val_loss": scores.val_loss,
               "val_loss_std": std.get("val_loss"), "test_loss": scores.test_loss,
               "test_loss_std": std.get("test_loss"), "test_perplexity": scores.test_perplexity}
        for m in boot["metrics"]:
            k = m.name
            mean, lo, hi = r.ci[k]
            row.update({k: scores.metrics.get(k, mean), f"{k}_lo": lo, f"{k}_hi": hi, f"{k}_std": std.get(k)})
        row.update({f"reference_{k}": v[0] for k, v in refs.items()})
        row.update(mean_generated_tokens=scores.mean_generated_tokens,
                   hit_max_new_tokens=scores.hit_max_new_tokens, test_examples=scores.examples,
                   train_seconds_std=cost_std.get("train_seconds"), peak_memory_bytes_std=cost_std.get("peak_memory_bytes"),
                   params_total=p.total, params_trainable=p.trainable, params_added=p.added,
                   adapter_bytes=p.adapter_bytes, train_seconds=c.train_seconds, eval_seconds=c.eval_seconds,
                   examples_per_second=c.examples_per_second, tokens_per_second=c.tokens_per_second,
                   tokens_per_second_per_device=c.tokens_per_second_per_device, processes=c.processes,
                   peak_memory_bytes=c.peak_memory_bytes, weights_bytes=c.weights_bytes,
                   gradient_bytes=c.gradient_bytes, optimizer_bytes=c.optimizer_bytes,
                   train_peak_bytes=c.train_peak_bytes, eval_peak_bytes=c.eval_peak_bytes,
                   reserved_peak_bytes=c.reserved_peak_bytes, mixed_precision=c.mixed_precision,
                   train_flops=c.train_flops, mfu=c.mfu,
                   device=c.device, steps=t.steps, epochs_run=t.epochs_run,
                   best_epoch=t.best_epoch, stopped_reason=t.stopped_reason,
                   learning_rate=t.learning_rate)
        rows.append(row)
    return rows
