"""The one training loop, for every method.

Read :class:`Trainer` top to bottom: ``__init__`` sets up (optimizer, schedule, the batch plan, what a pass is fed
and how the processes share a step: :mod:`~peftsum.train.strategies`), ``resume`` restores a checkpoint, ``run``
goes epoch by epoch:
fixed, seeded batches -> :meth:`Trainer.train_step` (token-weighted loss over an accumulation group,
a batch possibly run as several forward passes, ``train.micro_batch_size``; clip; step; log) ->
validation every ``eval_every_steps`` and at the end of each epoch (:meth:`Trainer.validate`), where
:class:`~peftsum.train.early_stopping.EarlyStopping` keeps the best weights and says when to stop, judged by
``train.select_by``: the validation loss, or ROUGE-Lsum of summaries generated with the evaluation's decoding
on a fixed, seeded subset of validation articles (that generation counted as training time).
The test split never enters this file.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..config import Config
from ..data.collate import epoch_batches, seq_lengths
from ..errors import OutOfMemory, TrainingDiverged
from ..evaluate.cost import synchronize
from ..evaluate.evaluation import prompts_of
from ..evaluate.generate import generate_summaries
from ..evaluate.metrics import evaluate_loss
from ..evaluate.registry import HEADLINE, get
from ..methods.base import CachedTrunk, Method
from ..model.arch import decoder_blocks
from ..utils import free_device_memory, is_out_of_memory, rng_state, save_file_atomic, set_rng_state
from .checkpoint import load_checkpoint, save_checkpoint
from .early_stopping import EarlyStopping
from .interrupt import DeferredInterrupt, stop
from .loss import SummaryLM
from .metrics_file import MetricsFile
from .precision import clip_gradients
from .strategies import CachedFeatures, Inputs, TokenBatches, parallelism

log = logging.getLogger(__name__)

BEST = "best.safetensors"


@dataclass
class TrainState:
    epoch: int = 0  # current epoch (0-based)
    group: int = 0  # next accumulation group inside the epoch
    # optimizer updates applied.  A step the fp16 loss scaler skips (its gradients overflowed) is not one: it uses
    # its batches (``group`` moves on) but advances neither this count, nor the schedule, nor what counts steps
    # (max_steps, eval_every_steps, checkpoint_every_steps); ``skipped_steps`` counts it
    step: int = 0
    skipped_steps: int = 0
    train_seconds: float = 0.0
    tokens: int = 0  # real (non-padding) tokens processed by the whole job (every process)
    target_tokens: int = 0
    examples: int = 0
    metrics_lines: int = 0
    stopped_reason: str = ""
    history: list = field(default_factory=list)  # validation losses
    score_history: list = field(default_factory=list)  # validation ROUGE-Lsum (select_by: rougeLsum)
    selection_seconds: float = 0.0  # generation for ROUGE-based selection (inside train_seconds)
    initial_val_loss: float | None = None  # before the first step
    feature_cache_bytes: int = 0  # last-layer's cached trunk features
    early_stopping: dict = field(default_factory=dict)
    # sequences per forward pass since the device ran out of memory (None: as configured), and how often it did
    micro_batch: int | None = None
    oom_backoffs: int = 0

    def to_dict(self):
        return dict(self.__dict__)


def steps_per_epoch(examples: int, batch_size: int, processes: int, grad_accum: int) -> int:
    """Optimizer steps in an epoch: global batches of ``batch_size`` x ``processes`` (the last one smaller, dropped
    under several processes when it has fewer examples than processes: each needs a share), ``grad_accum`` of them a
    step.  What :meth:`Trainer.epoch_groups` makes, for the sweep's and plan's projections."""
    full, rest = divmod(examples, batch_size * processes)
    batches = full + (1 if rest and (processes == 1 or rest >= processes) else 0)
    return math.ceil(batches / grad_accum)


def param_groups(method: Method, model, lr: float) -> list[dict]:
    """The optimizer's parameter groups: the trained parameters in order, one group per learning-rate factor
    (:meth:`~peftsum.methods.base.Method.lr_scale`); one group when every factor is 1."""
    groups: dict[float, list] = {}
    for name, p in method.trainable_parameters(model):
        groups.setdefault(method.lr_scale(name), []).append(p)
    return [{"params": params, "lr": lr * scale} for scale, params in groups.items()]


def compile_blocks(model) -> list:
    """``torch.compile`` each decoder block in place (``nn.Module.compile``: the module, its names and its state
    stay as they are; identical blocks share one compiled graph).  Returns the blocks."""
    blocks = decoder_blocks(model)
    for block in blocks:
        block.compile()
    return blocks


def uncompile(blocks: list) -> None:
    """The blocks run eager again (what ``nn.Module.compile`` set, ``_compiled_call_impl``, back to None: torch has
    no public undo)."""
    for b in blocks:
        b._compiled_call_impl = None


@contextlib.contextmanager
def eager(blocks: list):
    """The blocks run uncompiled inside (generation: a static cache and one new token per step, shapes the
    training graphs do not cover)."""
    saved = [b._compiled_call_impl for b in blocks]
    uncompile(blocks)
    try:
        yield
    finally:
        for b, c in zip(blocks, saved):
            b._compiled_call_impl = c


def validation_subset(val_ds, limit: int | None, seed: int):
    """``train.val_limit``: a fixed, seeded subset of the validation split for early stopping (the same
    examples at every evaluation and for every method); the whole split when None or larger."""
    if not limit or limit >= len(val_ds):
        return val_ds
    keep = np.sort(np.random.default_rng(seed).choice(len(val_ds), size=limit, replace=False))
    return val_ds.select(keep.tolist())


class Trainer:
    """The one training loop.  Set up from the config's sections, one named piece each (torchtune's recipe
    layout): the data and batch plan, the optimizer, the schedule, Accelerate's preparation and the processes'
    arrangement (``parallel``), how the best weights are selected, what the passes are fed (``inputs``)."""

    def __init__(self, cfg: Config, run_dir: Path, *, summary_lm: SummaryLM, method: Method, train_ds: Dataset,
                 val_ds: Dataset, accelerator: Accelerator, tokenizer, metrics_file: MetricsFile,
                 validation_hooks: tuple = (), validate_at_start: bool = True):
        """``validation_hooks``: ``f(step, value)`` after each validation (the loss or ROUGE-Lsum, ``select_by``; a
        sweep's pruner); ``validate_at_start``: validate the starting point before any step (a sweep's trials
        do not)."""
        self.cfg, self.train_cfg, self.run_dir = cfg, cfg.train, Path(run_dir)
        self.summary_lm, self.model, self.method = summary_lm, summary_lm.model, method
        self.accelerator, self.device, self.autocast = accelerator, accelerator.device, accelerator.autocast
        self.world = accelerator.num_processes
        self.tokenizer, self.pad_id, self.metrics_file = tokenizer, tokenizer.pad_token_id, metrics_file
        self.validation_hooks, self.validate_at_start = list(validation_hooks), validate_at_start
        self.state = TrainState()
        self.resumed = False
        self._setup_data(train_ds, val_ds)
        self._setup_optimizer()
        self._setup_schedule()
        # what Accelerate prepared: the summary LM itself (one process), wrapped by DDP, or sharded in place (FSDP)
        self.prepared, self.optimizer = accelerator.prepare(summary_lm, self.optimizer)
        # how the processes share a step (one, data parallel, sharded: then the parameters are now DTensor shards)
        self.parallel = parallelism(accelerator, self.prepared, self.optimizer)
        self.compiled = compile_blocks(self.model) if self.train_cfg.compile else []
        self.params = [p for _, p in self.method.trainable_parameters(self.model)]
        self._setup_selection(val_ds)
        self.inputs = self._setup_inputs()

    def _setup_data(self, train_ds: Dataset, val_ds: Dataset) -> None:
        """``train``/``data``: the batch plan, the same on every rank (each takes its share of every batch), and
        the optimizer steps it makes; the validation examples early stopping reads (``train.val_limit``)."""
        train_cfg = self.train_cfg
        self.train_ds = train_ds
        self.val_ds = validation_subset(val_ds, train_cfg.val_limit, self.cfg.data.seed)
        self.lengths = seq_lengths(train_ds)
        self.target_lengths = [n - p for n, p in zip(self.lengths, train_ds["prompt_len"])]
        self.total_steps = steps_per_epoch(len(train_ds), train_cfg.batch_size, self.world,
                                           train_cfg.grad_accum) * train_cfg.epochs
        if train_cfg.max_steps is not None:
            self.total_steps = min(train_cfg.max_steps, self.total_steps)

    def _setup_optimizer(self) -> None:
        """AdamW on the method's trainable parameters, at the method's learning rate (``train.lr`` overrides) times
        the method's factor per parameter (LoRA+); its fused kernel where ``train.fused_optimizer`` asks for it
        (auto: on CUDA)."""
        self.params = [p for _, p in self.method.trainable_parameters(self.model)]
        fused = self.train_cfg.fused_optimizer
        fused = fused == "on" or (fused == "auto" and self.device.type == "cuda")
        self.optimizer = torch.optim.AdamW(param_groups(self.method, self.model, self.cfg.learning_rate()),
                                           weight_decay=self.train_cfg.weight_decay, **({"fused": True} if fused else {}))

    def _setup_schedule(self) -> None:
        """Warmup (``train.warmup_ratio`` of the steps), then ``train.schedule``."""
        train_cfg = self.train_cfg
        schedule = train_cfg.schedule if train_cfg.schedule != "constant" else "constant_with_warmup"
        self.scheduler = get_scheduler(schedule, self.optimizer,
                                       num_warmup_steps=int(train_cfg.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)

    def _setup_selection(self, val_ds: Dataset) -> None:
        """Early stopping and the best weights by ``train.select_by``: the validation loss, or ROUGE-Lsum on a
        fixed, seeded subset of ``train.rouge_examples`` validation articles (another draw than val_limit's)."""
        train_cfg = self.train_cfg
        self.stopping = EarlyStopping(train_cfg.patience, train_cfg.min_delta, maximize=train_cfg.select_by != "loss")
        self.rouge_ds = None
        if train_cfg.select_by != "loss":
            self.rouge_ds = validation_subset(val_ds, train_cfg.rouge_examples, self.cfg.data.seed + 1)

    def _setup_inputs(self) -> Inputs:
        """What a pass is fed: the examples' tokens, or, for a frozen trunk
        (:class:`~peftsum.methods.base.CachedTrunk`), its features computed once, each process those of the examples
        it owns."""
        if not isinstance(self.method, CachedTrunk):
            return TokenBatches(self.train_ds, self.lengths, self.train_cfg, self.device, self.pad_id,
                                self.model.config, self.method.num_virtual_tokens)
        return CachedFeatures(self.summary_lm, self.train_ds, self.val_ds, self.train_cfg.batch_size * 2, self.device,
                              self.pad_id, self.accelerator.mixed_precision, self.autocast, self.accelerator.process_index,
                              self.world)

    # --- resume -----------------------------------------------------------------------------
    def resume(self) -> bool:
        """Restore weights, optimizer, schedule, RNG and data position from the run's checkpoint."""
        ckpt = load_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        self.parallel.load(self.method, self.model, ckpt["weights"], ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") and self.accelerator.scaler is not None:  # fp16's loss scale and its growth tracker
            self.accelerator.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(**ckpt["state"])
        self.stopping.load_state_dict(self.state.early_stopping)
        ranks = ckpt.get("rng_ranks") or []  # each process its own streams (another number of processes: rank 0's)
        set_rng_state(ranks[self.accelerator.process_index] if len(ranks) == self.world else ckpt["rng"])
        self.metrics_file.truncate_to(self.state.metrics_lines)
        self.resumed = True
        log.info("resumed at epoch %d, step %d", self.state.epoch + 1, self.state.step)
        return True

    # --- one optimizer step ----------------------------------------------------------------
    def forward_passes(self, idx: list[int]) -> list[list[int]]:
        """``idx`` in forward passes: as configured, at most ``state.micro_batch`` once the device ran out of memory
        (:meth:`back_off`)."""
        return self.inputs.forward_passes(idx, self.state.micro_batch)

    def train_step(self, group: list[list[int]]) -> dict:
        """One optimizer step over an accumulation group of global batches (lists of example indices):
        this process takes its share of each batch; the gradient is that of the summed NLL of the whole
        group divided by its number of summary tokens, on every process.

        Out of device memory in a pass (:meth:`accumulate`), the step starts again with half as many sequences per
        pass (:meth:`back_off`), its random streams as they were: the same batches, the same dropout, the same
        token-weighted gradient, so the step's result is the one a run at the smaller micro-batch makes."""
        self.method.train_mode(self.model)
        t0 = time.perf_counter()
        n_target = sum(self.target_lengths[i] for mb in group for i in mb)  # global, known to every rank
        streams = torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        while True:
            loss_sum, failed = self.accumulate(group, n_target)
            failed = self.parallel.agree_on_failure(failed)  # every rank learns whether one ran out of memory
            if not failed:
                break
            self.back_off(failed)
            torch.set_rng_state(streams[0])
            if streams[1] is not None:
                torch.cuda.set_rng_state_all(streams[1])
        self.parallel.reduce_gradients(self.params)
        loss = self.accelerator.reduce(loss_sum.float(), "sum").item() / n_target  # gloo / NCCL reduce float32
        if not math.isfinite(loss):
            self._diverged(f"the training loss is {loss} at step {self.state.step + 1}")
        grad_norm, skipped = clip_gradients(self.accelerator, self.optimizer, self.params,
                                            self.train_cfg.max_grad_norm, sharded=self.parallel.sharded)
        self.optimizer.step()  # fp16: the loss scaler keeps the weights when the gradients overflowed (skipped)
        if not skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        synchronize(self.device)  # CUDA queues the step's work: the clock reads when it has run
        dt = time.perf_counter() - t0
        s = self.state
        if skipped:
            s.skipped_steps += 1
        else:
            s.step += 1
        s.group += 1
        s.train_seconds += dt
        s.target_tokens += n_target
        step_tokens = sum(self.lengths[i] for mb in group for i in mb)  # the whole job's, not this rank's
        s.tokens += step_tokens
        s.examples += sum(len(mb) for mb in group)
        row = {"type": "train", "epoch": s.epoch + 1, "step": s.step, "loss": loss,
               "lr": self.scheduler.get_last_lr()[0], "grad_norm": None if skipped else grad_norm,
               "target_tokens": n_target, "tokens": step_tokens, "seconds": dt}
        if skipped:  # an overflow's infinite norm is not a training figure; "step" is the last update's
            row["skipped"] = True
        self.metrics_file.write(row)
        return row

    def accumulate(self, group: list[list[int]], n_target: int) -> tuple[torch.Tensor, int]:
        """The forward and backward passes of one step, gradients accumulated in ``.grad``.  Returns the summed NLL
        (on the device) and, when a pass ran out of device memory, the most sequences a pass of the step held (0:
        none did).  Under data parallelism no pass synchronises: an out-of-memory error on one rank must not leave
        the others waiting in a gradient all-reduce, so the ranks first agree that every pass ran, then
        reduce their gradients (:mod:`~peftsum.train.strategies`).  Sharded (FSDP), a forward is itself a collective:
        no back-off."""
        # the summed NLL stays on the device (float64, as a host sum of the passes' values would be): the host
        # reads it once, for the log, and goes on preparing the next pass's batch while the device computes
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        passes = [(part, mb) for mb in group for part in self.parallel.passes(mb, self.inputs, self.state.micro_batch)]
        for j, (idx, mb) in enumerate(passes):
            sync = self.parallel.pass_context(last=j == len(passes) - 1)
            weight = self.world / n_target if idx else 0.0  # an empty part: a stand-in pass that counts zero
            try:
                with sync:
                    with self.autocast():
                        nll, _ = self.prepared(**self.inputs.batch(idx or self.inputs.stand_in(mb)))
                    # DDP averages gradients over ranks, hence * world: the step's gradient is the gradient
                    # of (sum of NLL over the whole group) / (its number of summary tokens)
                    self.accelerator.backward(nll * weight)
            except Exception as e:
                if not is_out_of_memory(e):
                    raise
                tried = max(1, *(len(p) for p, _ in passes))  # a stand-in pass counts as one sequence
                if self.parallel.cannot_back_off():
                    raise self.out_of_memory(tried, self.parallel.cannot_back_off()) from None
                return loss_sum, tried
            if idx:
                loss_sum += nll.detach().double()
        return loss_sum, 0

    def back_off(self, tried: int) -> None:
        """Out of device memory at ``tried`` sequences per pass: drop the step's partial gradients and go on with
        half as many (Accelerate's ``find_executable_batch_size``, inside a step: the global batch and the
        accumulation stay as configured).  Said once per size; one sequence that does not fit ends the run."""
        self.optimizer.zero_grad(set_to_none=True)
        free_device_memory()
        if tried <= 1:
            raise self.out_of_memory(tried, "")
        self.state.micro_batch = tried // 2
        self.state.oom_backoffs += 1
        if self.accelerator.is_main_process:
            print(f"peftsum: out of device memory at {tried} sequences per forward pass (step {self.state.step + 1}); "
                  f"going on with {tried // 2} (the same step: the loss is token-weighted over the whole batch)",
                  file=sys.stderr, flush=True)
        log.warning("out of device memory at micro-batch %d: backing off to %d", tried, tried // 2)

    def out_of_memory(self, tried: int, why: str) -> OutOfMemory:
        longest = max(self.lengths) + self.method.num_virtual_tokens
        return OutOfMemory(
            f"out of device memory at {tried} sequence(s) per forward pass (step {self.state.step + 1}"
            f"{'; ' + why if why else ''}): {self.method.name} on {self.device} does not fit sequences of up to "
            f"{longest} tokens. Try train.gradient_checkpointing true, method qlora (a 4-bit base), a shorter "
            "data.max_source_tokens, or see what fits with `peftsum plan --device-memory SIZE`; the last checkpoint "
            f"is kept in {self.run_dir}")

    def _diverged(self, what: str) -> None:
        """NaN or infinite loss: stop, and claim no weights as best."""
        if self.accelerator.is_main_process:
            (self.run_dir / BEST).unlink(missing_ok=True)
        raise TrainingDiverged(f"{what}; training stopped and no weights are kept as best. Lower the learning "
                               "rate (--train.lr) or use mixed_precision no")

    # --- validation and early stopping ------------------------------------------------------
    def validation_loss(self) -> float:
        return evaluate_loss(self.summary_lm, self.val_ds, self.train_cfg.batch_size * 2, self.device, self.pad_id,
                             self.autocast, features=self.inputs.validation_features)["loss"]

    def validation_rouge(self) -> float:
        """Mean ROUGE-Lsum of the summaries the evaluation's decoding generates for the selection subset."""
        ds = self.rouge_ds
        with eager(self.compiled):
            generated = generate_summaries(self.model, self.method, self.tokenizer, prompts_of(ds),
                                           self.method.decoding(), self.cfg.eval.batch_size, self.device, self.autocast,
                                           compile=self.cfg.eval.compile)
        scores = get(HEADLINE).score([s.text for s in generated], list(ds["highlights"]), list(ds["article"]))
        return float(sum(scores) / max(len(scores), 1))

    def validate(self) -> None:
        """Validate the current weights (once per step), keep them if best, record the early-stopping state."""
        s = self.state
        if self.stopping.seen(s.step):
            return
        val_loss = self.validation_loss()
        if not math.isfinite(val_loss):
            self._diverged(f"the validation loss is {val_loss} after step {s.step}")
        s.history.append(val_loss)
        row = {"type": "eval", "split": "validation", "epoch": s.epoch + 1, "step": s.step, "val_loss": val_loss}
        value = val_loss
        if self.rouge_ds is not None:
            self.accelerator.wait_for_everyone()
            t0 = time.perf_counter()
            value = self.validation_rouge()
            dt = time.perf_counter() - t0  # generate_summaries returns host-side text: the device work is done
            s.selection_seconds += dt
            s.train_seconds += dt
            s.score_history.append(value)
            row.update(val_rougeLsum=value, selection_seconds=dt)
        self.metrics_file.write(row)
        if self.stopping.update(value, s.step, s.epoch + 1):
            if self.parallel.computes_state():
                state = self.trained_state()
            if self.accelerator.is_main_process:
                save_file_atomic(state, self.run_dir / BEST)
        s.early_stopping = self.stopping.state_dict()
        for hook in self.validation_hooks:
            hook(s.step, value)

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The method's trained tensors, whole (sharded: gathered, a collective every process calls)."""
        return self.parallel.trained_state(self.method, self.model)

    def checkpoint(self) -> None:
        if self.parallel.computes_state():  # whole weights and optimizer state; process 0 writes them
            weights, optimizer = self.trained_state(), self.parallel.optimizer_state()
        # every process's random streams: each draws its dropout for its own examples, so they differ
        rngs = gather_object([rng_state()]) if self.world > 1 else [rng_state()]
        if self.accelerator.is_main_process:
            self.state.metrics_lines = self.metrics_file.lines
            self.state.early_stopping = self.stopping.state_dict()
            save_checkpoint(self.run_dir, {
                "weights": {k: v.cpu() for k, v in weights.items()},
                "optimizer": optimizer, "scheduler": self.scheduler.state_dict(),
                "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else {},
                "state": self.state.to_dict(), "rng": rngs[0], "rng_ranks": rngs})

    # --- the run -----------------------------------------------------------------------------
    def interrupted(self, interrupt: DeferredInterrupt) -> int:
        """Has Ctrl-C (1) or SIGTERM (2) reached any process?  Under torchrun a signal may reach the ranks between
        different steps (or only some of them): one all-reduced flag per step (the strongest request) makes every
        rank stop after the same step, where rank 0 checkpoints, and leave the same way, instead of one rank
        leaving while the others wait in the next step's all-reduce."""
        return self.parallel.agree(interrupt.requested)

    def stop_reason(self) -> str:
        """The one place that decides whether training stops, and why: the step limit (``max_steps``, or the
        last step of the last epoch) wins over early stopping, which wins over running out of epochs."""
        s, train_cfg = self.state, self.train_cfg
        if s.step >= self.total_steps:
            return "max_steps" if train_cfg.max_steps is not None and s.step >= train_cfg.max_steps else "epochs"
        if self.stopping.should_stop:
            return "early_stopping"
        if s.epoch >= train_cfg.epochs:
            return "epochs"
        return ""

    def epoch_groups(self, epoch: int) -> list[list[list[int]]]:
        """The epoch's accumulation groups of global batches (fixed and seeded: the same on every rank)."""
        train_cfg = self.train_cfg
        batches = epoch_batches(self.lengths, train_cfg.batch_size * self.world, train_cfg.seed, epoch, self.cfg.data.group_by_length)
        if self.world > 1:  # every rank needs a share: drop a last batch smaller than the number of ranks
            batches = [b for b in batches if len(b) >= self.world]
        return [batches[i: i + train_cfg.grad_accum] for i in range(0, len(batches), train_cfg.grad_accum)]

    def run(self) -> TrainState:
        """Epoch by epoch, group by group, from the data position of a resumed checkpoint: a step; at the last
        step, on to the epoch's end; else a validation every ``eval_every_steps`` and a checkpoint every
        ``checkpoint_every_steps`` (and when early stopping decides mid-epoch, or on Ctrl-C).  The epoch's end:
        validate, move the data position on, decide, checkpoint."""
        s, train_cfg = self.state, self.train_cfg
        if not self.resumed:
            s.train_seconds += self.inputs.setup_seconds  # once per run, not again on resume
            if self.validate_at_start:  # the starting point, before any step
                s.initial_val_loss = self.validation_loss()
                self.metrics_file.write({"type": "eval", "split": "validation", "epoch": 0, "step": 0,
                                         "val_loss": s.initial_val_loss})
        interrupt = DeferredInterrupt()
        bar = tqdm(total=self.total_steps, initial=s.step, desc=self.method.name, unit="step", dynamic_ncols=True,
                   disable=not (train_cfg.progress and self.accelerator.is_main_process))
        s.stopped_reason = s.stopped_reason or self.stop_reason()  # a resumed run may have finished
        try:
            for epoch in range(s.epoch, train_cfg.epochs):
                if s.stopped_reason:
                    break
                groups = self.epoch_groups(epoch)
                for group in groups[s.group:]:
                    row = self.train_step(group)
                    updated = not row.get("skipped")
                    if updated:
                        bar.update(1)
                    elif train_cfg.max_steps is None:  # epochs decide the end: one update fewer than planned
                        bar.total -= 1
                    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}",
                                    tok_s=f"{s.tokens / max(s.train_seconds, 1e-9):.0f}")
                    if s.step >= self.total_steps:
                        break  # the last step: the epoch's end (validation, checkpoint) follows
                    if updated and train_cfg.eval_every_steps and s.step % train_cfg.eval_every_steps == 0:
                        self.validate()
                    s.stopped_reason = self.stop_reason()  # early stopping, in the middle of the epoch
                    interrupted = self.interrupted(interrupt)
                    every = updated and s.step % train_cfg.checkpoint_every_steps == 0
                    if s.stopped_reason or every or interrupted:
                        self.checkpoint()
                    if interrupted:
                        raise stop(interrupted)
                    if s.stopped_reason:
                        break
                if s.stopped_reason:
                    break
                self.validate()  # the end of the epoch (or of the last step)
                if s.group >= len(groups):  # the data position moves to the next epoch
                    s.epoch, s.group = epoch + 1, 0
                s.stopped_reason = self.stop_reason()
                self.checkpoint()
                interrupted = self.interrupted(interrupt)  # a signal in the epoch's last step or its validation
                if interrupted:
                    raise stop(interrupted)
        finally:
            interrupt.restore()
            bar.close()
        s.feature_cache_bytes = self.inputs.nbytes()
        return s

    # --- for the end of a run ----------------------------------------------------------------
    @property
    def best_step(self) -> int | None:
        return self.stopping.best_step

    @property
    def best_epoch(self) -> int | None:
        return self.stopping.best_epoch


def train(cfg: Config, run_dir: Path, *, summary_lm: SummaryLM, method: Method, train_ds: Dataset, val_ds: Dataset,
          accelerator: Accelerator, tokenizer, metrics_file: MetricsFile, resume: bool = False) -> Trainer:
    """Train ``method`` on ``train_ds`` (validating on ``val_ds``); the best weights are in RUN/best.safetensors."""
    trainer = Trainer(cfg, run_dir, summary_lm=summary_lm, method=method, train_ds=train_ds, val_ds=val_ds,
                      accelerator=accelerator, tokenizer=tokenizer, metrics_file=metrics_file)
    if resume:
        trainer.resume()
    try:
        trainer.run()
    finally:
        uncompile(trainer.compiled)  # the evaluation after training runs eager
    return trainer
