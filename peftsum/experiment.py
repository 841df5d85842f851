"""One experiment -> one run directory -> one ``results.json``.

``run_experiment`` loads the data and the model, lets the method prepare the model, trains it with
the shared loop (if the method trains), restores the best weights, saves them, then evaluates on
the validation and test splits with the shared evaluation path and writes the results.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch

from .config import Config, config_from_dict
from .data.collate import seq_lengths
from .errors import UserError
from .evaluate import cost as costs
from .evaluate.generate import generate_summaries
from .evaluate.metrics import evaluate_loss, rouge_means, rouge_per_example
from .methods import build_method
from .methods.base import safe_load_file
from .methods.baselines import lead3
from .utils import read_jsonl, write_json, write_jsonl, write_text

log = logging.getLogger(__name__)

RESULTS = "results.json"
_ACCELERATORS: dict = {}


def accelerator_for(cfg: Config):
    from accelerate import Accelerator

    mp = cfg.train.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if mp not in _ACCELERATORS:
        # cpu=True without CUDA: Accelerate then runs several CPU processes (torchrun) over gloo
        _ACCELERATORS[mp] = Accelerator(mixed_precision=mp, step_scheduler_with_optimizer=False,
                                        cpu=not torch.cuda.is_available())
    return _ACCELERATORS[mp]


def load_run_config(run_dir: Path) -> Config:
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a peftsum run directory (no config.yaml)")
    return config_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def prepare(cfg: Config, device=None, accelerator=None):
    """Model, tokenizer, method (model prepared), the tokenized splits and the data report.

    Under several processes the main one goes first (it builds the demo base and the tokenized-data
    cache; the others then read them)."""
    first = accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()
    with first:
        return _prepare(cfg, device)


def _prepare(cfg: Config, device=None):
    from .data.tokenize import load_tokenized
    from .model.loading import load_model, load_tokenizer, n_positions, resolve_model_name, set_dropout
    from .train.loss import SummaryLM

    method = build_method(cfg)
    name = resolve_model_name(cfg.model.name) if method.uses_model or cfg.model.tokenizer is None else cfg.model.name
    model = lm = None
    positions = 1024
    if method.uses_model:
        torch.manual_seed(cfg.train.seed)  # LoRA / soft-prompt initialisation
        model = load_model(name, cfg.model.trust_remote_code)
        set_dropout(model, cfg.model.dropout)
    tokenizer = load_tokenizer(cfg.model.tokenizer or name, cfg.model.trust_remote_code)
    if method.uses_model:
        method.tokenizer = tokenizer
        method.prepare(model)
        positions = n_positions(model)
        if device is not None:
            model.to(device)
        lm = SummaryLM(model, method)
    data, report, budget = load_tokenized(cfg.data, tokenizer, positions, method.num_virtual_tokens)
    return model, tokenizer, method, lm, data, report


def run_experiment(cfg: Config, run_dir: str | Path, resume: bool = False) -> dict:
    from .train.loop import MetricsFile, train

    run_dir = Path(run_dir)
    accelerator = accelerator_for(cfg)
    device = accelerator.device
    main = accelerator.is_main_process
    costs.reset_peak_memory(device)
    # model, tokenizer and data first: a bad input stops the run before the run directory is touched
    model, tokenizer, method, lm, data, report = prepare(cfg, device, accelerator)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in (RESULTS, "predictions.jsonl"):
            (run_dir / stale).unlink(missing_ok=True)
        write_text(run_dir / "config.yaml", cfg.to_yaml())
        write_json(run_dir / "data_report.json", report)
    accelerator.wait_for_everyone()
    metrics = MetricsFile(run_dir / "metrics.jsonl", enabled=main)
    state = None
    if method.trains:
        has_ckpt = (run_dir / "checkpoint.pt").is_file()
        if not (resume and has_ckpt):
            metrics.reset()
            (run_dir / "best.safetensors").unlink(missing_ok=True)
        state = train(cfg, run_dir, lm, method, data["train"], data["validation"], accelerator,
                      tokenizer.pad_token_id, resume and has_ckpt, metrics)
        if (run_dir / "best.safetensors").is_file():
            method.load_state_dict(model, safe_load_file(run_dir / "best.safetensors"))
    elif main:
        metrics.reset()
    if main:
        method.save(model, run_dir)
    accelerator.wait_for_everyone()
    results = evaluate_run(cfg, run_dir, model, tokenizer, method, lm, data, accelerator, state)
    if main:
        for tmp in ("checkpoint.pt", "best.safetensors"):
            (run_dir / tmp).unlink(missing_ok=True)
    return results


def evaluate_run(cfg, run_dir: Path, model, tokenizer, method, lm, data, accelerator, state) -> dict:
    """The shared final evaluation: validation loss, test loss and perplexity, ROUGE on test."""
    device = accelerator.device
    autocast = accelerator.autocast
    t0 = time.perf_counter()
    ev: dict = {"val_loss": None, "test_loss": None, "test_perplexity": None}
    test = data["test"]
    if cfg.eval.limit:
        test = test.select(range(min(cfg.eval.limit, len(test))))
    if lm is not None:
        bs = cfg.eval.batch_size
        val = evaluate_loss(lm, data["validation"], bs, device, tokenizer.pad_token_id, autocast)
        tst = evaluate_loss(lm, test, bs, device, tokenizer.pad_token_id, autocast)
        ev.update(val_loss=val["loss"], test_loss=tst["loss"], test_perplexity=tst["perplexity"])
        preds = generate_summaries(model, method, tokenizer, test, cfg.eval, device, autocast,
                                   progress=cfg.train.progress)
    else:
        preds = [lead3(a) for a in test["article"]]
    refs = list(test["highlights"])
    per = rouge_per_example(preds, refs)
    ev.update(rouge_means(per))
    ev["rouge_n"] = len(preds)
    eval_seconds = time.perf_counter() - t0
    rows = [{"id": i, "reference": r, "prediction": p, **{k: per[k][j] for k in per}}
            for j, (i, r, p) in enumerate(zip(test["id"], refs, preds))]
    results = build_results(cfg, run_dir, model, method, state, ev, eval_seconds, device, data)
    if accelerator.is_main_process:
        write_jsonl(run_dir / "predictions.jsonl", rows)
        write_json(run_dir / RESULTS, results)
    return results


def _adapter_bytes(run_dir: Path) -> int:
    """Bytes on disk of what the method saved (weights and adapter config)."""
    names = ("adapter_model.safetensors", "last_layer.safetensors", "model.safetensors", "adapter_config.json")
    return sum((run_dir / n).stat().st_size for n in names if (run_dir / n).is_file())


def build_results(cfg, run_dir, model, method, state, ev, eval_seconds, device, data) -> dict:
    import dataclasses

    params = {"total": 0, "trainable": 0, "added": 0}
    if model is not None:
        params = method.param_counts(model)
    params["adapter_bytes"] = _adapter_bytes(Path(run_dir))
    cost = {"train_seconds": 0.0, "eval_seconds": eval_seconds, "examples_per_second": None,
            "tokens_per_second": None, "peak_memory_bytes": costs.peak_memory(device), "train_flops": 0.0,
            "mfu": None, "device": costs.device_name(device)}
    training = {"epochs_run": 0, "best_epoch": None, "steps": 0, "early_stopped": False, "stopped_reason": "not trained"}
    if state is not None:
        n_train_tokens = sum(seq_lengths(data["train"]))
        virtual = method.num_virtual_tokens * state.examples
        flops = costs.train_flops(
            costs.flop_shape(model, method), state.tokens + virtual, state.target_tokens,
            (state.tokens + virtual) / max(state.examples, 1),
            cached_trunk_tokens=n_train_tokens if method.cache_features else 0)
        peak = costs.peak_flops(cost["device"])
        secs = max(state.train_seconds, 1e-9)
        cost.update(train_seconds=state.train_seconds, examples_per_second=state.examples / secs,
                    tokens_per_second=state.tokens / secs, train_flops=flops,
                    mfu=(flops / secs / peak) if peak else None)
        epochs_run = state.epoch + (1 if state.group else 0)
        training = {"epochs_run": epochs_run, "best_epoch": state.best_epoch, "steps": state.step,
                    "early_stopped": state.stopped_reason == "early_stopping",
                    "stopped_reason": state.stopped_reason, "best_step": state.best_step,
                    "validation_history": state.history, "initial_val_loss": state.initial_val_loss,
                    "feature_cache_bytes": state.feature_cache_bytes,
                    "learning_rate": cfg.learning_rate()}
    from . import __version__

    return {"method": method.name, "model": cfg.model.name, "preset": cfg.preset, "params": params,
            "eval": ev, "cost": cost, "training": training, "config": dataclasses.asdict(cfg),
            "method_hyperparameters": method.describe() if method.trains else {},
            "data": {"train": len(data["train"]), "validation": len(data["validation"]), "test": len(data["test"]),
                     "source": cfg.data.source},
            "versions": versions(), "peftsum": __version__}


def versions() -> dict:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "datasets", "accelerate", "rouge-score"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def load_trained(run_dir: Path):
    """Rebuild a finished run: config, model with the saved method weights, tokenizer, data."""
    from .methods.base import read_method_file

    cfg = load_run_config(run_dir)
    read_method_file(run_dir)  # no weights saved: say so before loading anything
    accelerator = accelerator_for(cfg)
    model, tokenizer, method, lm, data, _ = prepare(cfg, accelerator.device, accelerator)
    if method.trains:
        method.load(model, run_dir)
    return cfg, model, tokenizer, method, lm, data, accelerator


def evaluate_saved(run_dir: Path, split: str = "test", limit: int | None = None) -> dict:
    cfg, model, tokenizer, method, lm, data, accelerator = load_trained(run_dir)
    device, autocast = accelerator.device, accelerator.autocast
    ds = data[split]
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    t0 = time.perf_counter()
    out: dict = {"split": split, "examples": len(ds)}
    if lm is not None:
        ev = evaluate_loss(lm, ds, cfg.eval.batch_size, device, tokenizer.pad_token_id, autocast)
        out.update(loss=ev["loss"], perplexity=ev["perplexity"], tokens=ev["tokens"])
        preds = generate_summaries(model, method, tokenizer, ds, cfg.eval, device, autocast, progress=True)
    else:
        preds = [lead3(a) for a in ds["article"]]
    per = rouge_per_example(preds, list(ds["highlights"]))
    out.update(rouge_means(per))
    out["seconds"] = time.perf_counter() - t0
    write_json(Path(run_dir) / f"eval_{split}.json", out)
    return out


def is_finished(run_dir: Path) -> bool:
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return False
    try:
        import json

        json.loads(path.read_text())
    except ValueError:
        return False
    return True


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    try:
        return read_jsonl(path)
    except ValueError:
        return []
