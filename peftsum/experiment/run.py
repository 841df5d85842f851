"""One experiment -> one run directory -> one ``results.json``.

``run_experiment`` loads the model, tokenizer and data (:func:`load_components`), lets the method
prepare the model, trains it with the shared loop (if the method trains), restores the best weights,
saves them, then evaluates the validation and test splits with the one evaluation path
(:func:`peftsum.evaluate.evaluation.evaluate_split`) and writes the results: one typed
:class:`~peftsum.experiment.results.RunResult`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.metadata as md
import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from .. import __version__
from ..config import PEFT_METHOD, Config
from ..data.collate import seq_lengths
from ..data.text import SPLITTER
from ..data.tokenize import PromptBuilder, load_tokenized
from ..evaluate import cost as costs
from ..evaluate.evaluation import evaluate_split
from ..evaluate.generate import describe_decoding
from ..evaluate.metrics import ROUGE_PROTOCOL, evaluate_loss
from ..evaluate.registry import HEADLINE, checked
from ..methods import CachedTrunk, ModelFree, Untrained, ZeroShot, build_method, method_class
from ..methods.base import read_method_file
from ..model.loading import is_quantized, load_base, load_tokenizer, n_positions, resolve_model_name
from ..train.loop import BEST, Trainer, train
from ..train.loss import SummaryLM
from ..train.metrics_file import MetricsFile
from ..train.precision import compute_dtype, enable_cpu_fp16, resolve_mixed_precision, set_tf32
from ..train.sharding import enable_fsdp, fsdp_plugin
from ..train.tracking import Tracking, final_values, resolve_trackers
from ..utils import (
    distributed_state,
    release_memory,
    safe_load_file,
    write_json,
    write_jsonl,
    write_text,
    writes_to,
)
from .card import model_card
from .results import Cost, DataSummary, Params, Protocol, RunResult, Scores, Training, write_results
from .rundir import CONFIG, RESULTS, RunLock, load_run_config

log = logging.getLogger(__name__)

_ACCELERATOR: dict = {}  # the process's Accelerator, under the key of the settings it was made with


def accelerator_for(cfg: Config, device: str | None = None) -> Accelerator:
    """The process's Accelerator for ``cfg``'s mixed precision, trackers and sharding, made again when they change
    (Accelerate keeps one state per process: an Accelerator made on it with other settings is refused, or changes
    the earlier one's); ``device`` places a single process elsewhere than Accelerate would (``plan --device cpu`` on
    a GPU machine, ``--device cuda:1``)."""
    state = distributed_state(cfg.train.process_group_timeout_minutes, device=device)  # the process group
    cpu = state.device.type == "cpu"
    set_tf32(cfg.train.tf32, on_gpu=not cpu)
    mp = resolve_mixed_precision(cfg.train.mixed_precision, cpu)
    trackers = tuple(resolve_trackers(cfg.train.report_to))
    key = (mp, str(state.device), trackers, cfg.train.fsdp)
    made = _ACCELERATOR.get(key)
    if made is None or AcceleratorState._shared_state == {}:  # new settings, or a state made again (device)
        _ACCELERATOR.clear()
        AcceleratorState._reset_state()  # the process group and its device stay
        # cpu=True without CUDA: Accelerate then runs several CPU processes (torchrun) over gloo.  Trackers log
        # under a directory set per run (train.tracking.Tracking); "." only satisfies Accelerate's check here.
        plugin = fsdp_plugin() if cfg.train.fsdp else None
        made = Accelerator(mixed_precision=mp, step_scheduler_with_optimizer=False, cpu=cpu,
                           log_with=list(trackers) or None, project_dir="." if trackers else None, fsdp_plugin=plugin)
        if plugin is not None:
            enable_fsdp(made, plugin)
        enable_cpu_fp16(made)
        _ACCELERATOR[key] = made
    return made


@dataclass
class Components:
    """What a run works with: the transformers ``model`` (prepared by the method), ``summary_lm`` (the
    summary-loss wrapper around it, None for Lead-3), the tokenizer and the prompt builder."""

    cfg: Config
    method: object
    model: torch.nn.Module | None
    summary_lm: SummaryLM | None
    tokenizer: object
    prompts: PromptBuilder

    def load_data(self):
        """The tokenized splits and the data report (cached on disk by content)."""
        b = self.prompts.budget
        data, report, _ = load_tokenized(self.cfg.data, self.tokenizer, b.n_positions, b.num_virtual, b.reserve,
                                         b.summary)
        return data, report


def run_dtype(cfg: Config, device=None) -> torch.dtype:
    """The dtype a run's matmuls take on ``device`` (``train.mixed_precision`` as this hardware resolves it)."""
    on = torch.device(device) if device is not None else torch.device("cpu")
    return compute_dtype(resolve_mixed_precision(cfg.train.mixed_precision, on.type != "cuda"))


def base_for(cfg: Config, device=None, shared: torch.nn.Module | None = None) -> torch.nn.Module:
    """The base model a run adapts, set up one way for every run, sweep trial and ``plan`` probe (then :func:`adapt`):
    the seed of the method's initialisation (LoRA's A, the soft prompt: the random streams loading draws from come
    after it), then the base loaded (quantized as it loads where ``model.quantize`` says), or a copy of ``shared``,
    loaded once for many (bitsandbytes' layers cannot be copied: a quantized ``shared`` base is used itself)."""
    torch.manual_seed(cfg.train.seed)
    if shared is None:
        return load_base(cfg, device, run_dtype(cfg, device))
    return shared if is_quantized(shared) else copy.deepcopy(shared)


def adapt(model: torch.nn.Module, method, device=None) -> torch.nn.Module:
    """``method`` prepares ``model`` (freeze, inject, untie), which then moves where it runs (a quantized model was
    loaded there)."""
    method.prepare_model(model)
    if device is not None and not is_quantized(model):
        model.to(device)
    return model


def load_components(cfg: Config, device=None, full_precision: bool = False) -> Components:
    """Model, tokenizer and method (model prepared, on ``device``); no data.  ``full_precision``: the frozen weights
    kept in float32 whatever the run's mixed precision (an export merges into them)."""
    uses_model = not issubclass(method_class(cfg), ModelFree)
    name = resolve_model_name(cfg.model.name) if uses_model or cfg.model.tokenizer is None else cfg.model.name
    model = summary_lm = None
    positions = 1024
    if uses_model:  # the model first: a bad model path is what the user hears about
        model = base_for(cfg, device)
    tokenizer = load_tokenizer(cfg.model.tokenizer or name, cfg.model.trust_remote_code)
    method = build_method(cfg, tokenizer, None if full_precision else run_dtype(cfg, device))
    if uses_model:
        adapt(model, method, device)
        positions = n_positions(model)
        summary_lm = SummaryLM(model, method)
    return Components(cfg, method, model, summary_lm, tokenizer,
                      PromptBuilder(tokenizer, cfg.data, positions, method.num_virtual_tokens,
                                    cfg.virtual_token_reserve(), cfg.generation_tokens()))


def _main_first(accelerator):
    """Under several processes the main one loads first (it builds the demo base and the data cache)."""
    return accelerator.main_process_first() if accelerator is not None else contextlib.nullcontext()


def run_experiment(cfg: Config, run_dir: str | Path, resume: bool = False, tracking_root: Path | None = None,
                   run_name: str | None = None) -> RunResult:
    """Train and evaluate one method into ``run_dir``.  With ``train.report_to`` the run is also one tracker run
    named ``run_name`` (default: the method) under ``tracking_root`` (default: the run directory)."""
    run_dir = Path(run_dir)
    checked(cfg.eval.metrics, cfg.eval)  # an unknown metric, or one that cannot run, before anything trains
    accelerator = accelerator_for(cfg)
    device = accelerator.device
    main = accelerator.is_main_process
    # what an earlier run in this process left (compare runs methods one after another) is given back, so
    # this run's peak memory is its own
    accelerator.free_memory()  # drops its references to the last run's model and optimizer, collects garbage
    release_memory(collect=False)
    memory = costs.PeakMemory(device)  # the phases' peaks: loading, training, evaluation
    # model, tokenizer and data first: a bad input stops the run before the run directory is touched
    with _main_first(accelerator):
        parts = load_components(cfg, device)
        data, report = parts.load_data()
    with RunLock(run_dir, enabled=main):
        tracking = Tracking(accelerator, cfg, tracking_root or run_dir, run_name or cfg.method.name,
                            fresh=not (resume and (run_dir / "checkpoint.pt").is_file()))
        results = None
        try:
            results = _run(cfg, run_dir, resume, parts, data, report, accelerator, tracking, memory)
        finally:
            tracking.finish(final_values(results) if results else None)
        return results


def _run(cfg, run_dir: Path, resume: bool, parts: Components, data, report, accelerator, tracking,
         memory: costs.PeakMemory) -> RunResult:
    main = accelerator.is_main_process
    method, model = parts.method, parts.model
    if main:
        for stale in (RESULTS, "predictions.jsonl", "README.md"):
            (run_dir / stale).unlink(missing_ok=True)
        write_text(run_dir / CONFIG, cfg.to_yaml())
        write_json(run_dir / "data_report.json", report)
    accelerator.wait_for_everyone()
    metrics = MetricsFile(run_dir / "metrics.jsonl", enabled=main, sinks=[tracking.log_row])
    trainer = None
    if not isinstance(method, Untrained):
        has_ckpt = (run_dir / "checkpoint.pt").is_file()
        if not (resume and has_ckpt):
            metrics.reset()
            (run_dir / BEST).unlink(missing_ok=True)
        memory.phase("load")
        trainer = train(cfg, run_dir, summary_lm=parts.summary_lm, method=method, train_ds=data["train"],
                        val_ds=data["validation"], accelerator=accelerator, tokenizer=parts.tokenizer,
                        metrics_file=metrics, resume=resume and has_ckpt)
        # rank 0 wrote the best weights (and a checkpoint) after the last validation: every rank waits for them,
        # or the others would evaluate their share of the test split with the previous best
        accelerator.wait_for_everyone()
        if trainer.parallel.sharded:  # the final evaluation runs on whole weights: the base unsharded again, as it was loaded
            final = trainer.trained_state()
            parts = load_components(cfg, device=accelerator.device)
            method, model = parts.method, parts.model
            method.load_state_dict(model, final)  # replaced by the best weights next, if there are any
        if (run_dir / BEST).is_file():
            method.load_state_dict(model, safe_load_file(run_dir / BEST))
    elif main:
        metrics.reset()
    if main:
        with writes_to(run_dir):  # the method's files (PEFT's adapter config, its weights): a full disk in one line
            method.save(model, run_dir)
    accelerator.wait_for_everyone()
    memory.phase("train" if trainer is not None else "load")
    results = evaluate_run(cfg, run_dir, parts, data, accelerator, trainer, memory)
    if main:
        for tmp in ("checkpoint.pt", BEST):
            (run_dir / tmp).unlink(missing_ok=True)
    return results


def evaluate_run(cfg, run_dir: Path, parts: Components, data, accelerator, trainer: Trainer | None,
                 memory: costs.PeakMemory | None = None) -> RunResult:
    """The final evaluation of a run: validation loss, then test loss, perplexity and ROUGE."""
    t0 = time.perf_counter()
    test = data["test"]
    if cfg.eval.limit:
        test = test.select(range(min(cfg.eval.limit, len(test))))
    val_loss = None
    if parts.summary_lm is not None:
        val_loss = evaluate_loss(parts.summary_lm, data["validation"], cfg.eval.batch_size, accelerator.device,
                                 parts.tokenizer.pad_token_id, accelerator.autocast)["loss"]
    test_metrics, rows = evaluate_split(parts.summary_lm, parts.model, parts.method, parts.tokenizer, test, cfg.eval,
                                        accelerator.device, accelerator.autocast, progress=cfg.train.progress)
    scores = Scores(val_loss=val_loss, test_loss=test_metrics["loss"], test_perplexity=test_metrics["perplexity"],
                    **{k: test_metrics[k] for k in ("metrics", "examples", "mean_generated_tokens",
                                                     "hit_max_new_tokens")})
    if memory is not None:
        memory.phase("eval")
    results = build_results(cfg, run_dir, parts, trainer, scores, time.perf_counter() - t0, accelerator, data, memory)
    if accelerator.is_main_process:
        write_jsonl(run_dir / "predictions.jsonl", rows)
        write_results(run_dir, results)
        shown = run_dir if not run_dir.is_absolute() else Path(run_dir.name)  # the card names no absolute path
        write_text(run_dir / "README.md", model_card(results, "run", path=str(shown)))
    return results


def _adapter_bytes(run_dir: Path) -> int:
    """Bytes on disk of what the method saved (weights and adapter config)."""
    names = ("adapter_model.safetensors", "last_layer.safetensors", "model.safetensors", "adapter_config.json")
    return sum((run_dir / n).stat().st_size for n in names if (run_dir / n).is_file())


def _memory_figures(memory: costs.PeakMemory | None, accelerator, model, trainer: Trainer | None) -> dict:
    """The cost record's memory fields: the training state by its parts (exact; what one process holds, so under
    train.fsdp its shards) and each phase's measured peak, the largest over the processes."""
    state = costs.training_state_bytes(model, trainer.params if trainer else [], trainer.optimizer if trainer else None)
    phases = memory.phases if memory is not None else {}
    peaks = [phases.get("train", -1), phases.get("eval", -1), memory.overall() if memory else -1,
             memory.reserved if memory else -1]
    if accelerator.num_processes > 1:
        peaks = accelerator.gather(torch.tensor(peaks, device=accelerator.device)).view(-1, 4).max(0).values.tolist()
    train_peak, eval_peak, overall, reserved = (int(p) if p >= 0 else None for p in peaks)
    return {"weights_bytes": state["weights"], "gradient_bytes": state["gradients"],
            "optimizer_bytes": state["optimizer"], "train_peak_bytes": train_peak, "eval_peak_bytes": eval_peak,
            "peak_memory_bytes": overall, "reserved_peak_bytes": reserved if accelerator.device.type == "cuda" else None}


def build_results(cfg, run_dir, parts: Components, trainer: Trainer | None, scores: Scores, eval_seconds: float,
                  accelerator, data, memory: costs.PeakMemory | None = None) -> RunResult:
    """The run's typed record (``results.json``): counts, the final scores, cost, training, protocol, data."""
    method, model, device = parts.method, parts.model, accelerator.device
    processes = accelerator.num_processes
    params = Params(**method.param_counts(model)) if model is not None else Params()
    params.adapter_bytes = _adapter_bytes(Path(run_dir))
    cost = Cost(eval_seconds=eval_seconds, processes=processes, memory_measure=costs.memory_measure(device),
                device=costs.device_name(device), mixed_precision=accelerator.mixed_precision,
                **_memory_figures(memory, accelerator, trainer.model if trainer is not None else model, trainer))
    training = Training()
    if trainer is not None:
        state = trainer.state
        n_train_tokens = sum(seq_lengths(data["train"]))
        virtual = method.num_virtual_tokens * state.examples
        flops = costs.train_flops(
            costs.flop_shape(model, method), state.tokens + virtual, state.target_tokens,
            (state.tokens + virtual) / max(state.examples, 1),
            cached_trunk_tokens=n_train_tokens if isinstance(method, CachedTrunk) else 0,
            recompute=cfg.train.gradient_checkpointing)
        precision = costs.matmul_precision(accelerator.mixed_precision)
        peak, source = costs.peak_flops(cost.device, precision), "datasheet"
        if peak is None and device.type == "cuda":  # a GPU the table does not name: its measured matmul peak
            peak, source = costs.matmul_peak(device, compute_dtype(accelerator.mixed_precision)), "measured"
        secs = max(state.train_seconds - state.selection_seconds, 1e-9)  # throughput of the steps themselves
        # tokens and examples are the whole job's (every process); MFU against the peak of all its devices
        cost = dataclasses.replace(
            cost, train_seconds=state.train_seconds, examples_per_second=state.examples / secs,
            tokens_per_second=state.tokens / secs, tokens_per_second_per_device=state.tokens / secs / processes,
            train_flops=flops, mfu=(flops / secs / (peak * processes)) if peak else None, peak_flops=peak,
            peak_source=source if peak else "")
        training = Training(
            epochs_run=state.epoch + (1 if state.group else 0), best_epoch=trainer.best_epoch, steps=state.step,
            early_stopped=state.stopped_reason == "early_stopping", stopped_reason=state.stopped_reason,
            best_step=trainer.best_step, validation_history=state.history, initial_val_loss=state.initial_val_loss,
            feature_cache_bytes=state.feature_cache_bytes, learning_rate=cfg.learning_rate(), tokens=state.tokens,
            examples=state.examples, target_tokens=state.target_tokens, select_by=cfg.train.select_by,
            selection_seconds=state.selection_seconds, validation_scores=state.score_history,
            best_value=trainer.stopping.best_value,
            micro_batch_size=state.micro_batch or cfg.train.micro_batch_size, oom_backoffs=state.oom_backoffs)
    decoding = method.decoding()
    protocol = Protocol(rouge=ROUGE_PROTOCOL, headline=HEADLINE, sentence_splitter=SPLITTER,
                        decoding=dataclasses.asdict(decoding), decoding_text=describe_decoding(decoding),
                        zero_shot=cfg.method.zero_shot.protocol if isinstance(method, ZeroShot) else None,
                        select_by=None if isinstance(method, Untrained) else cfg.train.select_by)
    truncated = {s: float(sum(data[s]["source_truncated"]) / max(len(data[s]), 1)) for s in ("train", "test")}
    summary = DataSummary(train=len(data["train"]), validation=len(data["validation"]), test=len(data["test"]),
                          source=cfg.data.source, budget=dict(parts.prompts.budget.__dict__),
                          articles_truncated=truncated)
    return RunResult(method=method.name, model=cfg.model.name, preset=cfg.preset, config=cfg, params=params,
                     eval=scores, cost=cost, training=training, protocol=protocol, data=summary,
                     method_hyperparameters=method.describe(parts.model), versions=versions(), peftsum=__version__)


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "datasets", "accelerate", "rouge-score"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def load_trained(run_dir: Path, full_precision: bool = False) -> Components:
    """A finished run's model with its saved weights, tokenizer and prompt builder, ready to generate.

    No data is loaded (``summarize`` works offline on any article), and the model is in eval mode.
    ``full_precision``: frozen weights in float32 whatever the run's mixed precision (``export``)."""
    cfg = load_run_config(run_dir)
    read_method_file(run_dir)  # no weights saved: say so before loading anything
    if cfg.method.name == PEFT_METHOD:  # the tuner's config as saved with its weights (the run may have moved)
        cfg.method.peft.config = str(Path(run_dir) / "adapter_config.json")
    accelerator = accelerator_for(cfg)
    with _main_first(accelerator):
        parts = load_components(cfg, accelerator.device, full_precision)
    if not isinstance(parts.method, Untrained):
        parts.method.load(parts.model, run_dir)
    if parts.model is not None:
        parts.model.eval()
    return parts


def evaluate_saved(run_dir: Path, split: str = "test", limit: int | None = None) -> dict:
    """``peftsum eval``: a saved run on a split, through the same evaluation path as the end of a run."""
    parts = load_trained(run_dir)
    accelerator = accelerator_for(parts.cfg)
    data, _ = parts.load_data()
    ds = data[split]
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    t0 = time.perf_counter()
    metrics, rows = evaluate_split(parts.summary_lm, parts.model, parts.method, parts.tokenizer, ds, parts.cfg.eval,
                                   accelerator.device, accelerator.autocast, progress=True)
    out = {"split": split, **metrics, "seconds": time.perf_counter() - t0}
    if accelerator.is_main_process:
        write_json(Path(run_dir) / f"eval_{split}.json", out)
        write_jsonl(Path(run_dir) / f"predictions_{split}.jsonl", rows)
    return out
