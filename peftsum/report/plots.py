"""The report's figures (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import matplotlib
import numpy as np

from ..methods import entry
from ..utils import atomic_path

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# a method without a colour of its own (a PEFT tuner's peft-<name>), in the order they first appear: tab10's
# colours the built-in methods leave free
EXTRA_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#17becf", "#393b79", "#637939", "#843c39", "#7b4173"]
_ASSIGNED: dict[str, str] = {}


def color(method: str) -> str:
    """The method's colour (its registry entry's), or the next free one for a method that has none."""
    with contextlib.suppress(KeyError):
        own = entry(method).color
        if own:
            return own
    if method not in _ASSIGNED:
        _ASSIGNED[method] = EXTRA_COLORS[len(_ASSIGNED) % len(EXTRA_COLORS)]
    return _ASSIGNED[method]


def _save(fig, path: Path) -> Path:
    """The figure as a PNG at ``path``, written whole or not at all."""
    try:
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
    return path


def loss_curves(curves: dict[str, dict], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for m, c in curves.items():
        col = color(m)
        if c["train_steps"]:
            ax.plot(c["train_steps"], c["train_loss"], color=col, alpha=0.35, lw=1)
        if c["val_steps"]:
            ax.plot(c["val_steps"], c["val_loss"], "o-", color=col, lw=2, label=f"{m} (validation)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("summary-token NLL")
    ax.set_title("Training (thin) and validation (dots) loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def metric_bars(rows: list[dict], out: Path, keys: list[str], labels: dict[str, str], y_label: str) -> Path:
    """Each method's mean of each metric in ``keys`` with its 95 % interval; with several seeds, a dot per seed."""
    fig, ax = plt.subplots(figsize=(max(7.5, 1.6 * len(keys)), 4.2))
    w = 0.8 / max(len(rows), 1)
    x = np.arange(len(keys))
    for i, r in enumerate(rows):
        means = [r["ci"][k][0] for k in keys]
        err = [[r["ci"][k][0] - r["ci"][k][1] for k in keys], [r["ci"][k][2] - r["ci"][k][0] for k in keys]]
        ax.bar(x + i * w - 0.4 + w / 2, means, w, yerr=err, capsize=3, label=r["method"],
               color=color(r["method"]))
        seeds = r.get("per_seed", [])
        if len(seeds) > 1:  # each seed's score, so the spread between training runs shows
            for j, k in enumerate(keys):
                ax.scatter([x[j] + i * w - 0.4 + w / 2] * len(seeds), [s[k] for s in seeds], color="black", s=8,
                           zorder=3)
    ax.set_xticks(x, [labels[k] for k in keys])
    ax.set_ylabel(y_label)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


def summary_panels(rows: list[dict], references: dict, out: Path, keys: list[str], labels: dict[str, str]) -> Path:
    """One panel per statistic of the summaries: each method's mean with its 95 % interval, the reference summaries'
    own value (where the statistic needs no reference) as a dashed line."""
    cols = 4
    n_rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.4 * cols, 2.9 * n_rows), squeeze=False)
    names = [r["method"] for r in rows]
    x = np.arange(len(names))
    for ax, k in zip(axes.flat, keys):
        means = [r["ci"][k][0] for r in rows]
        err = [[r["ci"][k][0] - r["ci"][k][1] for r in rows], [r["ci"][k][2] - r["ci"][k][0] for r in rows]]
        ax.bar(x, means, yerr=err, capsize=2, color=[color(n) for n in names])
        if k in references:
            ax.axhline(references[k][0], color="black", ls="--", lw=1, label="references")
            ax.legend(fontsize=6)
        ax.set_title(labels[k], fontsize=9)
        ax.set_xticks(x, names, fontsize=6, rotation=30, ha="right")
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    return _save(fig, out)


def coverage_density(points: dict[str, tuple[list[float], list[float], list[float]]], out: Path) -> Path:
    """Grusky et al. (2018)'s picture: extractive fragment coverage (x) against density (y, log), one panel per
    method and one for the reference summaries, every summary a dot; the median compression in each title.  Copies of
    the lead sit top right, abstracts low and to the left."""
    names = list(points)
    cols = min(4, len(names))
    n_rows = -(-len(names) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(3.2 * cols, 3.0 * n_rows), squeeze=False, sharex=True, sharey=True)
    top = max([max(d, default=1.0) for _, d, _ in points.values()] + [1.0])
    for ax, name in zip(axes.flat, names):
        cov, dens, comp = points[name]
        col = "black" if name == "references" else color(name)
        ax.scatter(cov, np.maximum(dens, 0.1), s=7, alpha=0.35, color=col)
        ax.set_title(f"{name} (compression {np.median(comp):.1f})" if comp else name, fontsize=8)
        ax.set_yscale("log")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(0.08, top * 1.5)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("coverage")
    for ax in axes[:, 0]:
        ax.set_ylabel("density (log)")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return _save(fig, out)


def quality_vs_cost(rows: list[dict], out: Path, label: str) -> Path:
    """The headline ROUGE (``row["headline"]``) against trainable parameters and against training time."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    for r in rows:
        col = color(r["method"])
        y = r["headline"]
        if r["trainable"]:
            a.scatter(r["trainable"], y, color=col, s=50)
            a.annotate(r["method"], (r["trainable"], y), fontsize=8, xytext=(4, 4), textcoords="offset points")
        if r["train_seconds"]:
            b.scatter(r["train_seconds"], y, color=col, s=50)
            b.annotate(r["method"], (r["train_seconds"], y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    a.set_xscale("log")
    a.set_xlabel("trainable parameters (log)")
    b.set_xlabel("training time (s)")
    for ax in (a, b):
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    a.set_title("Quality vs trainable parameters")
    b.set_title("Quality vs training time")
    return _save(fig, out)


def length_distribution(lengths: dict[str, list[int]], out: Path, limit: int | None) -> Path:
    """Each method's generated summary lengths (tokens; Lead-3: its sentences in the same tokenizer) as a box plot
    with every summary as a dot, and the decoding's limit as a line."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    names = list(lengths)
    ax.boxplot([lengths[n] for n in names], showfliers=False)
    rng = np.random.default_rng(0)
    for i, n in enumerate(names, start=1):
        ys = lengths[n]
        ax.scatter(i + rng.uniform(-0.18, 0.18, len(ys)), ys, s=5, alpha=0.35, color=color(n))
    if limit:
        ax.axhline(limit, color="black", lw=0.8, ls="--", label=f"max new tokens ({limit})")
        ax.legend(fontsize=8)
    ax.set_xticks(range(1, len(names) + 1), names)
    plt.setp(ax.get_xticklabels(), rotation=15)
    ax.set_ylabel("summary length (tokens)")
    ax.set_title("Generated summary lengths on the test articles")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out)


MEMORY_PARTS = (("weights_bytes", "weights", "#9ecae1"), ("gradient_bytes", "gradients", "#fd8d3c"),
                ("optimizer_bytes", "optimizer state", "#e6550d"))


def memory_bars(rows: list[dict], out: Path, measure: str = "") -> Path:
    """Left: the training state by its parts (exact bytes, stacked).  Right: the measured peaks of training and of
    evaluation (``measure`` says what a peak is on this device)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    names = [r["method"] for r in rows]
    x = np.arange(len(names))
    bottom = np.zeros(len(names))
    for key, label, col in MEMORY_PARTS:
        vals = np.array([(r.get(key) or 0) / 2**20 for r in rows])
        left.bar(x, vals, bottom=bottom, color=col, label=label)
        bottom += vals
    left.set_title("Training state by its parts (exact)")
    left.set_ylabel("MiB")
    left.legend(fontsize=7)
    w = 0.38
    for k, (key, label, hatch) in enumerate((("train_peak_bytes", "training", ""), ("eval_peak_bytes", "evaluation", "//"))):
        vals = [(r.get(key) or 0) / 2**20 for r in rows]
        right.bar(x + (k - 0.5) * w, vals, w, color=[color(n) for n in names], hatch=hatch, edgecolor="white",
                  label=label)
    right.set_title("Measured peak" + (f" ({measure})" if measure else ""), fontsize=9)
    right.set_ylabel("MiB")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.set_xticks(x, names)
        ax.grid(axis="y", alpha=0.3)
        plt.setp(ax.get_xticklabels(), rotation=15)
    return _save(fig, out)


def sweep_lr(trials: dict[str, list[dict]], out: Path, label: str = "validation loss") -> Path:
    """The objective (``label``) against learning rate, one colour per method; pruned trials as crosses at the
    value they had when stopped."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for m, rows in trials.items():
        col = color(m)
        for state, marker in (("complete", "o"), ("pruned", "x")):
            pts = [(r["params"]["lr"], r["value"]) for r in rows if r["state"] == state and r["value"] is not None]
            if pts:
                ax.scatter(*zip(*pts), color=col, marker=marker, s=36,
                           label=f"{m}" + (" (pruned)" if state == "pruned" else ""))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(label)
    ax.set_title(f"Sweep: {label} against learning rate")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _save(fig, out)


def _axis(ax, x_label: str, log: bool) -> None:
    ax.set_xlabel(x_label)
    if log:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)


def scale_lines(series: dict[str, list[tuple]], out: Path, panels: list[tuple[str, str, str, bool]],
                title: str = "") -> Path:
    """One panel per (key, y label, x label, log x) of ``panels``; in each, one line per method over the points
    ``series[method]``: (panel key, x, y, low, high) with ``low``/``high`` None where there is no interval."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (key, y_label, x_label, log) in zip(axes[0], panels):
        for method, points in series.items():
            pts = sorted((x, y, lo, hi) for k, x, y, lo, hi in points if k == key and y is not None)
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            err = None
            if all(p[2] is not None for p in pts):
                err = [[y - p[2] for y, p in zip(ys, pts)], [p[3] - y for y, p in zip(ys, pts)]]
            ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, color=color(method), label=method)
        ax.set_ylabel(y_label)
        _axis(ax, x_label, log)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out)
