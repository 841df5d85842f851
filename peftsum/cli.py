"""The ``peftsum`` command line: a thin layer over the package.

Errors a user can cause raise :class:`UserError`: one line on stderr, exit status 2, no traceback
(3 when training diverges, 4 out of device memory, 5 a full disk: ``peftsum.errors``).  Ctrl-C exits 130 and
SIGTERM 143 (training saves a checkpoint first and says how to continue).

Each command is declared once, with ``@command`` beside the function that runs it (:data:`COMMANDS`).  The function
takes what it reads as typed parameters named as its arguments' destinations (``settings``: the config's
:class:`Settings`), and imports the package's layers it needs when it runs, so that ``peftsum --help`` and a usage
error answer at once, without loading torch, transformers and datasets.
"""

from __future__ import annotations

import argparse
import inspect
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    METHODS,
    PEFT_METHOD,
    PRESETS,
    load_config,
    parse_override,
)
from .errors import Preempted, UserError

log = logging.getLogger("peftsum")


@dataclass(frozen=True)
class Command:
    """One subcommand, declared once beside the function that runs it (``@command``): its help, its arguments (each
    a function that adds some to its parser) and the handler, which imports the layers it needs when it runs, so
    that ``--help`` and usage errors answer without loading torch."""

    name: str
    help: str
    arguments: tuple
    run: Callable[..., int]

    def parameters(self) -> list[str]:
        return list(inspect.signature(self.run).parameters)


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, *arguments):
    def register(fn):
        COMMANDS[name] = Command(name, help, arguments, fn)
        return fn
    return register


def arg(*flags, **kwargs) -> Callable[[argparse.ArgumentParser], None]:
    """One argument of a command, as argparse's ``add_argument`` takes it."""
    return lambda p: p.add_argument(*flags, **kwargs)


# the settings every command that builds a config takes
SETTINGS = (
    arg("--preset", choices=PRESETS, help="start from a preset (demo: offline, tiny)"),
    arg("--config", help="YAML config file (sections model, data, method, train, eval)"),
    arg("--data", help="data source: Kaggle-style dir, CSV/JSON/JSONL/Parquet file, hub id, or demo"),
    arg("--model", help="model hub id or local directory (save_pretrained)"),
    arg("--text-column", help="article column of your data"),
    arg("--summary-column", help="summary column of your data"),
    arg("--set", action="append", default=[], metavar="KEY=VALUE",
        help="override any config key, e.g. --set train.lr=3e-4 (or --train.lr 3e-4)"),
)
METHOD = arg("--method", choices=(*METHODS, PEFT_METHOD),
             help="fine-tuning method or baseline; peft: any PEFT tuner (--set method.peft.config=FILE)")
REPORT_TO = arg("--report-to", metavar="NAME[,NAME]|all|none",
                help="experiment trackers through Accelerate: tensorboard, wandb, mlflow, aim, ... (default none); "
                     "local ones log under OUT/tracking")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="peftsum", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="command", required=True)
    for c in COMMANDS.values():
        p = sub.add_parser(c.name, help=c.help)
        for add in c.arguments:
            add(p)
    return ap


@dataclass(frozen=True)
class Settings:
    """What builds a command's config: a preset, a YAML file, the shortcuts (--data, --model, the columns,
    --report-to) and the overrides (``--section.key value`` and ``--set KEY=VALUE``), in :meth:`load`'s order."""

    preset: str | None = None
    config: str | None = None
    data: str | None = None
    model: str | None = None
    text_column: str | None = None
    summary_column: str | None = None
    report_to: str | None = None
    overrides: list[tuple[str, Any]] = field(default_factory=list)  # --section.key value
    sets: list[tuple[str, Any]] = field(default_factory=list)  # --set KEY=VALUE

    @classmethod
    def of(cls, args: argparse.Namespace, dotted: list[tuple[str, Any]]) -> Settings:
        given = {k: getattr(args, k, None) for k in ("preset", "config", "data", "model", "text_column",
                                                     "summary_column", "report_to")}
        return cls(**given, overrides=list(dotted), sets=[parse_override(s) for s in getattr(args, "set", [])])

    def given(self) -> bool:
        """Did the command line give any setting?"""
        return bool(self.overrides or self.sets) or any(getattr(self, k) is not None for k in (
            "preset", "config", "data", "model", "text_column", "summary_column"))

    def names(self, key: str) -> bool:
        """Does an override set ``key``?"""
        return any(k == key for k, _ in (*self.overrides, *self.sets))

    def load(self, extra: list[tuple[str, Any]] = (), method: str | None = None, max_steps: int | None = None):
        """The validated config: the preset, the file, then, later ones winning: the model (its own tokenizer unless
        an override names one), the ``--section.key`` overrides, ``extra`` (a command's own flags as config keys),
        ``--set``, the shortcuts, ``method`` and ``max_steps``."""
        ov: list[tuple[str, Any]] = [("model.name", self.model), ("model.tokenizer", None)] if self.model else []
        ov += [*self.overrides, *extra, *self.sets]
        ov += [(k, v) for k, v in (("data.source", self.data), ("data.text_column", self.text_column),
                                   ("data.summary_column", self.summary_column), ("method.name", method)) if v]
        ov += [(k, v) for k, v in (("train.max_steps", max_steps), ("train.report_to", self.report_to)) if v is not None]
        return load_config(self.preset, self.config, ov)


def dispatch(args: argparse.Namespace, dotted: list[tuple[str, Any]]) -> int:
    """Run the command with the parameters its function names: each argument's value, ``settings`` the config's."""
    c = COMMANDS[args.command]
    names = c.parameters()
    if dotted and "settings" not in names:
        raise UserError(f"{c.name} takes no --section.key settings (got --{dotted[0][0]})")
    return c.run(**{n: Settings.of(args, dotted) if n == "settings" else getattr(args, n) for n in names})


def _split_dotted(argv: list[str]) -> tuple[list[str], list[tuple[str, object]]]:
    """Pull ``--section.key value`` pairs out of argv as overrides."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") and "." in a.split("=", 1)[0] and not a[2:3].isdigit():
            if "=" in a:
                overrides.append(parse_override(a[2:]))
            else:
                if i + 1 >= len(argv):
                    raise UserError(f"{a} needs a value")
                overrides.append(parse_override(f"{a[2:]}={argv[i + 1]}"))
                i += 1
        else:
            rest.append(a)
        i += 1
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, overrides = _split_dotted(argv)
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s", force=True)
        _quiet_libraries(args.verbose)
        return dispatch(args, overrides)
    except UserError as e:
        print(f"peftsum: error: {e}", file=sys.stderr)
        return e.exit_code
    except Preempted as e:
        print(f"peftsum: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("peftsum: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk or device memory where no write or pass of ours caught it: one line too
        if "torch" in sys.modules:  # both come from what loaded torch (a --help never does)
            from .utils import disk_full, is_disk_full, is_out_of_memory

            if is_disk_full(e):  # an OSError's errno, or a library's own words for it (no guess from torch.save's)
                where = getattr(e, "filename", None)
                print(f"peftsum: error: {disk_full(Path(where), cleaned=False)}" if where else
                      f"peftsum: error: no space left on a device (or a quota used up): {str(e).splitlines()[0][:200]}",
                      file=sys.stderr)
                return 5
            if is_out_of_memory(e):
                print(f"peftsum: error: out of device memory ({str(e).splitlines()[0][:200]}); lower "
                      "train.batch_size / eval.batch_size, or see `peftsum plan --device-memory`", file=sys.stderr)
                return 4
        raise


def _quiet_libraries(verbose: bool) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()


@command("compare", "run every method and write the report (the main job)", *SETTINGS,
         arg("--methods", help="comma-separated methods (default: every method that needs no extra; qlora, LoRA on the "
                               "4-bit base, needs peftsum[qlora]); peft:FILE adds any PEFT tuner from its config file"),
         arg("--out", default="runs/compare", help="output directory"),
         arg("--max-steps", type=int, help="cap optimizer steps per method (quick runs)"),
         arg("--rerun", default="", metavar="M1,M2",
             help="start these methods over (their earlier runs in --out are removed)"),
         REPORT_TO,
         arg("--seeds", type=int, default=1,
             help="train each method with K seeds (train.seed, +1, ...); the report gives mean ± sd and intervals "
                  "over articles and seeds"),
         arg("--models", metavar="M1,M2",
             help="a grid: every method on each of these models (grid.models), one comparison per cell "
                  "OUT/<model>-n<size>, and a scale report in OUT; several workers may share OUT"),
         arg("--train-sizes", metavar="N1,N2",
             help="a grid over training-set sizes (grid.train_sizes): each a seeded subset of the same training "
                  "split, validation and test unchanged"))
def cmd_compare(settings: Settings, methods: str | None, out: str, max_steps: int | None, rerun: str, seeds: int,
                models: str | None, train_sizes: str | None) -> int:
    from .experiment import compare_methods
    from .methods import default_methods
    from .report.render import build_report
    from .report.sweep import adopt_sweep
    from .train.tracking import resolve_trackers
    from .utils import is_main_process

    cfg = settings.load(_grid_overrides(models, train_sizes), max_steps=max_steps)
    resolve_trackers(cfg.train.report_to)
    names, redo, folder = _method_list(methods, default_methods()), _method_list(rerun), Path(out)
    if cfg.grid.models or cfg.grid.train_sizes:
        return _compare_grid(cfg, names, redo, folder, seeds)
    seconds = _interruptible(lambda: compare_methods(cfg, names, folder, redo, seeds), folder)
    if is_main_process():
        adopt_sweep(settings.config, folder)
        build_report(folder)
        print(f"compare finished in {seconds:.0f}s; report: {folder / 'report.html'} (also .md, .pdf)", flush=True)
    return 0


def _compare_grid(cfg, methods: list[str], rerun: list[str], out: Path, seeds: int) -> int:
    from .experiment.grid import compare_grid
    from .report.render import build_report
    from .report.scale import build_grid_report
    from .utils import is_main_process

    models, sizes = cfg.grid.models or [cfg.model.name], cfg.grid.train_sizes or [cfg.data.train_size]
    seconds, complete = _interruptible(lambda: compare_grid(cfg, methods, models, sizes, out, rerun, seeds,
                                                            on_cell=build_report, on_grid=build_grid_report), out)
    if is_main_process() and complete:
        print(f"this worker's share of the grid took {seconds:.0f}s; scale report: {out / 'report.html'} (also .md), "
              f"each cell's in its folder", flush=True)
    return 0


@command("sweep", "tune each method on the validation split (one Optuna study per method)", *SETTINGS,
         arg("--methods", help="comma-separated trained methods (default: those compare runs)"),
         arg("--trials", type=int, help="finished trials per method (sweep.trials)"),
         arg("--steps", type=int, help="optimizer steps of each trial (sweep.steps)"),
         arg("--storage", help="Optuna storage URL shared by workers (default: a journal file in --out)"),
         REPORT_TO, arg("--out", default="runs/sweep", help="output directory"))
def cmd_sweep(settings: Settings, methods: str | None, trials: int | None, steps: int | None, storage: str | None,
              out: str) -> int:
    from .experiment.sweep import sweep
    from .methods import default_methods
    from .report.sweep import write_sweep_report
    from .train.tracking import resolve_trackers
    from .utils import is_main_process

    cfg = settings.load([(k, v) for k, v in (("sweep.trials", trials), ("sweep.steps", steps)) if v is not None])
    resolve_trackers(cfg.train.report_to)
    studies = sweep(cfg, _method_list(methods, default_methods(trained_only=True)), Path(out), storage)
    if is_main_process():
        for p in write_sweep_report(cfg, studies, Path(out)):
            print(p)
    return 0


@command("train", "train (and evaluate) one method", *SETTINGS, METHOD,
         arg("--out", help="run directory (default runs/<method>)"), arg("--max-steps", type=int),
         arg("--resume", action="store_true", help="continue from the run directory's checkpoint"), REPORT_TO)
def cmd_train(settings: Settings, method: str | None, out: str | None, max_steps: int | None, resume: bool) -> int:
    from .experiment import run_experiment
    from .experiment.rundir import resume_config
    from .train.tracking import resolve_trackers
    from .utils import is_main_process

    if resume and not (out or method):
        raise UserError("train --resume needs the run: --out RUN_DIR (or --method for runs/<method>)")
    folder = Path(out or f"runs/{method}")
    if resume and (folder / "config.yaml").is_file():  # the run's own config, as it started
        asked = (lambda name: settings.load(method=name, max_steps=max_steps)) if settings.given() else None
        report_to = ([t for t in settings.report_to.split(",") if t.strip()] if settings.report_to is not None
                     else None)
        cfg = resume_config(folder, method, asked, max_steps, report_to)
    else:
        if not method and not settings.names("method.name"):
            raise UserError("train needs --method (one of: " + ", ".join(METHODS) + ")")
        cfg = settings.load(method=method, max_steps=max_steps)
        folder = Path(out or f"runs/{cfg.method.name}")
    resolve_trackers(cfg.train.report_to)  # a missing tracker package: said before anything runs
    results = _interruptible(lambda: run_experiment(cfg, folder, resume=resume), folder)
    if is_main_process():  # several processes: only rank 0 prints
        _print_results(results, folder)
    return 0


@command("eval", "evaluate a finished run on a split", arg("run_dir"),
         arg("--split", choices=("validation", "test"), default="test"), arg("--limit", type=int))
def cmd_eval(run_dir: str, split: str, limit: int | None) -> int:
    from .experiment import evaluate_saved

    res = evaluate_saved(Path(run_dir), split, limit)
    for k, v in {**{k: v for k, v in res.items() if k != "metrics"}, **res.get("metrics", {})}.items():
        print(f"{k:>12}: {v:.4f}" if isinstance(v, float) else f"{k:>12}: {v}")
    return 0


@command("export", "write a finished run as a folder transformers / PEFT load without peftsum", arg("run_dir"),
         arg("out", help="a new folder"),
         arg("--merge", action=argparse.BooleanOptionalAction, default=True,
             help="LoRA: merge into the base weights (default) or, with --no-merge, keep a PEFT adapter"))
def cmd_export(run_dir: str, out: str, merge: bool) -> int:
    from .experiment.export import export_run

    r = export_run(Path(run_dir), Path(out), merge)
    print(f"exported {r['kind']} -> {r['path']}" + (f"\n{r['note']}" if r["note"] else ""))
    return 0


@command("summarize", "summarize articles with a saved run (or zero-shot / lead-3)",
         arg("run", help="run directory, or the name zero-shot / lead-3"),
         arg("file", nargs="?", default="-", help="one article's text file, or - for stdin"),
         arg("--input", help="many articles: a CSV / JSON / JSONL / Parquet file or a folder of .txt files"),
         arg("--output", help="with --input: write JSON lines (id, prediction, generated_tokens) here"),
         arg("--text-column", help="article column of --input (default: article)"),
         arg("--id-column", help="id column of --input (default: id; the row number where absent)"),
         arg("--model", help="model for zero-shot (default: the demo base)"), arg("--preset", choices=PRESETS),
         arg("--metrics", action="store_true",
             help="also each summary's statistics against its article (novel n-grams, extractive fragments, "
                  "repetition, length): after the summary, or as 'metrics' in each JSON line"))
def cmd_summarize(run: str, file: str, input: str | None, output: str | None, text_column: str | None,
                  id_column: str | None, model: str | None, preset: str | None, metrics: bool) -> int:
    from .summarize import summarize_cli

    summarize_cli(run, file, input=input, output=output, text_column=text_column, id_column=id_column, model=model,
                  preset=preset, metrics=metrics)
    return 0


@command("data", "print per-split statistics of a data source", *SETTINGS)
def cmd_data(settings: Settings) -> int:
    from .data.stats import compute_stats, format_stats
    from .model.loading import load_tokenizer, resolve_model_name

    cfg = settings.load()
    tokenizer = load_tokenizer(cfg.model.tokenizer or resolve_model_name(cfg.model.name), cfg.model.trust_remote_code)
    print(format_stats(compute_stats(cfg.data, tokenizer, reserve=cfg.virtual_token_reserve(),
                                     generated=cfg.generation_tokens())))
    return 0


@command("demo-data", "write the synthetic demo corpus as train/validation/test CSV", arg("dir"),
         arg("--train", type=int, default=2000), arg("--validation", type=int, default=300),
         arg("--test", type=int, default=300), arg("--seed", type=int, default=1234))
def cmd_demo_data(dir: str, train: int, validation: int, test: int, seed: int) -> int:
    from .data.demo import write_demo_corpus

    out = write_demo_corpus(dir, {"train": train, "validation": validation, "test": test}, seed)
    print(f"wrote {train} / {validation} / {test} examples to {out}/{{train,validation,test}}.csv")
    return 0


@command("report", "rebuild the comparison report from the run directories", arg("dir"),
         arg("--analysis", action="store_true", help="also fill docs/analysis.md's results section"),
         arg("--analysis-file", default="docs/analysis.md"))
def cmd_report(dir: str, analysis: bool, analysis_file: str) -> int:
    from .experiment.grid import GRID
    from .report.render import build_report
    from .report.scale import build_grid_report

    build = build_grid_report if (Path(dir) / GRID).is_file() else build_report  # a grid: its scale report
    paths = build(Path(dir), analysis_file=Path(analysis_file) if analysis else None)
    for p in paths:
        print(p)
    return 0


@command("plan", "time a few real steps here and project the whole protocol", *SETTINGS,
         arg("--methods", help="comma-separated trained methods (default: those compare runs)"),
         arg("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)"),
         arg("--steps", type=int, help="timed passes per method (default: up to 3, fewer where a pass takes over 10 s)"),
         arg("--shape", choices=("real", "random", "gpt2-small"), default="real",
             help="random: the model's shape with random weights, nothing downloaded (GPT-2's sizes are known "
                  "offline, another model needs its config.json); gpt2-small: GPT-2 small's shape"),
         arg("--levers", action="store_true",
             help="also probe each method with activation checkpointing switched (add qlora to --methods for a "
                  "4-bit base)"),
         arg("--device-memory", metavar="SIZE", help="e.g. 24GB: say which methods and levers fit a device of this memory"),
         arg("--processes", type=int, default=1, metavar="N",
             help="with --levers: also each method's memory per process under train.fsdp over N processes"),
         arg("--models", metavar="M1,M2", help="project compare's grid over these models (grid.models)"),
         arg("--train-sizes", metavar="N1,N2", help="... and training-set sizes (grid.train_sizes)"))
def cmd_plan(settings: Settings, methods: str | None, device: str | None, steps: int | None, shape: str,
             levers: bool, device_memory: str | None, processes: int, models: str | None,
             train_sizes: str | None) -> int:
    from .methods import default_methods
    from .report.plan import plan

    if steps is not None and steps < 1:  # no timed pass: nothing to project from
        raise UserError(f"--steps must be at least 1 (timed passes per method), got {steps}")
    memory = None
    if device_memory is not None:
        from .evaluate.cost import parse_bytes

        try:
            memory = parse_bytes(device_memory)
        except ValueError as e:
            raise UserError(f"--device-memory: {e}") from None
    cfg = settings.load(_grid_overrides(models, train_sizes))
    if processes < 1:
        raise UserError(f"--processes must be at least 1, got {processes}")
    print(plan(cfg, _method_list(methods, default_methods(trained_only=True)), device, steps, shape, levers, memory,
               processes))
    return 0


def _grid_overrides(models: str | None, train_sizes: str | None) -> list[tuple[str, str]]:
    """``--models`` / ``--train-sizes``: the config's grid (comma-separated, parsed as the config's lists)."""
    return [(k, text) for k, text in (("grid.models", models), ("grid.train_sizes", train_sizes)) if text]


def _method_list(text: str | None, default: tuple[str, ...] = ()) -> list[str]:
    """Built-in methods, ``peft:FILE`` entries (any PEFT tuner), and (for --rerun) their ``peft-<name>`` folders;
    ``default`` where none are given."""
    if text is None:
        return list(default)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS and not m.startswith((f"{PEFT_METHOD}:", f"{PEFT_METHOD}-"))]
    if bad:
        raise UserError(f"unknown method(s) {', '.join(bad)}; valid: {', '.join(METHODS)}, or peft:FILE for a PEFT "
                        "config file")
    return methods


def _interruptible(fn, out: Path):
    try:
        return fn()
    except Preempted as e:  # SIGTERM: what a requeued job runs again is the same command
        raise Preempted(f"stopped by SIGTERM after a checkpoint in {out}; the same command continues where it "
                        "stopped (train: add --resume)") from e
    except KeyboardInterrupt:
        print(f"peftsum: interrupted; the last checkpoint is in {out}. Resume with the same command and --resume "
              "(compare resumes by itself)", file=sys.stderr)
        raise


def _print_results(r, out: Path) -> None:
    scores = r.eval

    def f(x, fmt=".4f"):
        return "n/a" if x is None else format(x, fmt)

    print(f"{r.method}: val_loss {f(scores.val_loss)}  test_loss {f(scores.test_loss)}  "
          f"ROUGE-1/2/L {'/'.join(f(scores.metrics.get(k), '.2f') for k in ('rouge1', 'rouge2', 'rougeLsum'))}  "
          f"trainable {r.params.trainable:,}  train {r.cost.train_seconds:.1f}s")
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    sys.exit(main())
