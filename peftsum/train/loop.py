"""The one training loop, for every method.

Read it top to bottom: set up (Accelerate, optimizer, schedule), maybe restore a checkpoint, then
for each epoch: fixed, seeded batches -> token-weighted loss over each accumulation group (a batch
may run as several forward passes, ``train.micro_batch_size``) -> clip -> step -> log; validate every
epoch (and every N steps if asked), keep the best weights, stop early when validation loss stops
improving.  The test split never enters this file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import get_scheduler

from ..data.collate import collate, epoch_batches, seq_lengths, sorted_batches
from ..evaluate.metrics import evaluate_loss
from ..methods.base import save_file_atomic
from ..utils import rng_state, set_rng_state
from .checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class TrainState:
    epoch: int = 0  # current epoch (0-based)
    group: int = 0  # next accumulation group inside the epoch
    step: int = 0  # optimizer steps done
    best_val: float = math.inf
    best_epoch: int | None = None
    best_step: int | None = None
    bad_evals: int = 0
    train_seconds: float = 0.0
    tokens: int = 0  # real (non-padding) tokens processed
    target_tokens: int = 0
    examples: int = 0
    metrics_lines: int = 0
    stopped_reason: str = ""
    history: list = field(default_factory=list)  # validation losses
    initial_val_loss: float | None = None  # before the first step
    feature_cache_bytes: int = 0  # last-layer's cached trunk features

    def to_dict(self):
        return dict(self.__dict__)


class FeatureCache:
    """Final hidden states of a frozen trunk at the summary-predicting positions, one block per
    example, computed once (no dropout); the head then trains on them for every epoch."""

    def __init__(self, lm, dataset, batch_size: int, device, pad_id: int, dtype, autocast):
        feats, targets, self.lengths = [], [], []
        ex_lengths = seq_lengths(dataset)
        order = [None] * len(dataset)
        lm.eval()
        with torch.no_grad():
            for idx in sorted_batches(ex_lengths, batch_size):
                b = collate([dataset[i] for i in idx], pad_id)
                with autocast():
                    h = lm.hidden_states(b["input_ids"].to(device), b["attention_mask"].to(device))
                shifted = b["labels"][:, 1:].to(device)
                for row, i in enumerate(idx):
                    keep = shifted[row] != -100
                    order[i] = (h[row, :-1][keep].to(dtype).cpu(), shifted[row][keep].cpu())
        offsets = [0]
        for f, t in order:
            feats.append(f)
            targets.append(t)
            self.lengths.append(len(t))
            offsets.append(offsets[-1] + len(t))
        self.features = torch.cat(feats)
        self.targets = torch.cat(targets)
        self.offsets = offsets

    def batch(self, idx, device) -> dict:
        f = torch.cat([self.features[self.offsets[i]: self.offsets[i + 1]] for i in idx])
        t = torch.cat([self.targets[self.offsets[i]: self.offsets[i + 1]] for i in idx])
        return {"features": f.to(device), "targets": t.to(device)}

    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()


# On CPU a forward pass holds at most this many bytes of one layer's attention scores (fp32, heads x T x T).
# Measured (docs/performance.md section 4): GPT-2 small with its dropout, 1 sequence of ~600 tokens per pass
# (17 MiB of scores) ran 1.1-1.5x faster than 4 (69 MiB); dropout keeps SDPA on its unfused path there.
CPU_ATTENTION_BYTES = 32 * 2**20


def micro_batch_size(tc, device, model_config, seq_len: int) -> int | None:
    """Sequences per forward/backward pass: ``train.micro_batch_size`` if set; on CPU as many as keep
    one layer's attention scores within CPU_ATTENTION_BYTES; elsewhere the whole batch (None)."""
    if tc.micro_batch_size:
        return tc.micro_batch_size
    if device.type != "cpu":
        return None
    n_head = getattr(model_config, "n_head", None) or model_config.num_attention_heads
    return max(1, CPU_ATTENTION_BYTES // (4 * n_head * seq_len * seq_len))


def _passes(idx: list[int], chunk: int | None) -> list[list[int]]:
    """A rank's share of a batch, cut into forward passes of at most ``chunk`` sequences."""
    if not chunk or len(idx) <= chunk:
        return [idx]
    return [idx[k: k + chunk] for k in range(0, len(idx), chunk)]


def train(cfg, run_dir: Path, lm, method, train_ds, val_ds, accelerator, pad_id: int, resume: bool,
          metrics_file) -> TrainState:
    tc = cfg.train
    device = accelerator.device
    autocast = accelerator.autocast
    world, rank = accelerator.num_processes, accelerator.process_index
    model = lm.model

    params = [p for _, p in method.trainable_parameters(model)]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate(), weight_decay=tc.weight_decay)
    # the dataset and batch plan are the same on every rank: each takes its share of every batch
    lengths = seq_lengths(train_ds)
    target_lengths = [n - p for n, p in zip(lengths, train_ds["prompt_len"])]
    global_batch = tc.batch_size * world
    n_batches = math.ceil(len(lengths) / global_batch)
    groups_per_epoch = math.ceil(n_batches / tc.grad_accum)
    total_steps = groups_per_epoch * tc.epochs if tc.max_steps is None else min(tc.max_steps, groups_per_epoch * tc.epochs)
    scheduler = get_scheduler(tc.schedule if tc.schedule != "constant" else "constant_with_warmup", optimizer,
                              num_warmup_steps=int(tc.warmup_ratio * total_steps), num_training_steps=total_steps)
    ddp_lm, optimizer = accelerator.prepare(lm, optimizer)

    features = val_features = None
    cache_seconds = 0.0
    if method.cache_features:
        dtype = torch.bfloat16 if accelerator.mixed_precision == "bf16" else torch.float32
        t0 = time.perf_counter()
        features = FeatureCache(lm, train_ds, tc.batch_size * 2, device, pad_id, dtype, autocast)
        cache_seconds = time.perf_counter() - t0  # part of training cost (the trunk's one forward pass)
        val_features = FeatureCache(lm, val_ds, tc.batch_size * 2, device, pad_id, dtype, autocast)
        log.info("cached the frozen trunk's features: %.1f MB in %.1fs", features.nbytes() / 1e6, cache_seconds)

    def passes(idx: list[int]) -> list[list[int]]:
        if features is not None:  # the head alone: whole batches
            return [idx]
        longest = max(lengths[i] for i in idx) + method.num_virtual_tokens
        return _passes(idx, micro_batch_size(tc, device, lm.model.config, longest))

    state = TrainState()
    ckpt = load_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        method.load_state_dict(model, ckpt["weights"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = TrainState(**ckpt["state"])
        set_rng_state(ckpt["rng"])
        metrics_file.truncate_to(state.metrics_lines)
        log.info("resumed at epoch %d, step %d", state.epoch + 1, state.step)
    state.train_seconds += cache_seconds

    def validate() -> float:
        ev = evaluate_loss(lm, val_ds, tc.batch_size * 2, device, pad_id, autocast, features=val_features)
        return ev["loss"]

    def checkpoint():
        if accelerator.is_main_process:
            state.metrics_lines = metrics_file.lines
            save_checkpoint(run_dir, {"weights": {k: v.cpu() for k, v in method.state_dict(model).items()},
                                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                      "state": state.to_dict(), "rng": rng_state()})

    def on_validation(val_loss: float) -> bool:
        """Record a validation loss; keep the best weights; True when patience is exhausted."""
        state.history.append(val_loss)
        metrics_file.write({"type": "eval", "split": "validation", "epoch": state.epoch + 1, "step": state.step,
                            "val_loss": val_loss})
        if val_loss < state.best_val - tc.min_delta:
            state.best_val, state.best_epoch, state.best_step, state.bad_evals = val_loss, state.epoch + 1, state.step, 0
            if accelerator.is_main_process:
                save_file_atomic(method.state_dict(model), Path(run_dir) / "best.safetensors")
        else:
            state.bad_evals += 1
        return state.bad_evals > tc.patience

    if ckpt is None:  # the starting point: validation loss before any training
        state.initial_val_loss = validate()
        metrics_file.write({"type": "eval", "split": "validation", "epoch": 0, "step": 0,
                            "val_loss": state.initial_val_loss})

    interrupt = DeferredInterrupt()
    bar = None
    if tc.progress and accelerator.is_main_process:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=state.step, desc=f"{method.name}", unit="step", dynamic_ncols=True)

    try:
        stop = state.step >= total_steps or bool(state.stopped_reason)  # a resumed run may have finished
        while state.epoch < tc.epochs and not stop:
            batches = epoch_batches(lengths, global_batch, tc.seed, state.epoch, cfg.data.group_by_length)
            if world > 1:  # every rank needs a share: drop a last batch smaller than the number of ranks
                batches = [b for b in batches if len(b) >= world]
            groups = [batches[i: i + tc.grad_accum] for i in range(0, len(batches), tc.grad_accum)]
            while state.group < len(groups):
                group = groups[state.group]
                method.train_mode(model)
                t0 = time.perf_counter()
                n_target = sum(target_lengths[i] for mb in group for i in mb)  # global, known to every rank
                loss_sum = 0.0
                fwd = [part for mb in group for part in passes(mb[rank::world])]
                for j, idx in enumerate(fwd):
                    sync = contextlib.nullcontext() if j == len(fwd) - 1 else accelerator.no_sync(ddp_lm)
                    with sync:
                        if features is not None:
                            batch = features.batch(idx, device)
                        else:
                            b = collate([train_ds[i] for i in idx], pad_id)
                            batch = {k: b[k].to(device) for k in ("input_ids", "attention_mask", "labels")}
                        with autocast():
                            nll, _ = ddp_lm(**batch)
                        # DDP averages gradients over ranks, hence * world: the step's gradient is the
                        # gradient of (sum of NLL over the whole group) / (its number of summary tokens)
                        accelerator.backward(nll * world / n_target)
                    loss_sum += nll.item()
                    state.tokens += sum(lengths[i] for i in idx)
                    state.examples += len(idx)
                grad_norm = accelerator.clip_grad_norm_(params, tc.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.group += 1
                state.target_tokens += n_target
                dt = time.perf_counter() - t0
                state.train_seconds += dt
                loss = accelerator.reduce(torch.tensor(loss_sum, device=device), "sum").item() / n_target
                lr = scheduler.get_last_lr()[0]
                metrics_file.write({"type": "train", "epoch": state.epoch + 1, "step": state.step, "loss": loss,
                                    "lr": lr, "grad_norm": float(grad_norm), "target_tokens": n_target,
                                    "seconds": dt})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}",
                                    tok_s=f"{state.tokens * world / max(state.train_seconds, 1e-9):.0f}")
                if state.step >= total_steps:
                    stop, state.stopped_reason = True, ("max_steps" if tc.max_steps else "epochs")
                    break
                if tc.eval_every_steps and state.step % tc.eval_every_steps == 0:
                    if on_validation(validate()):
                        stop, state.stopped_reason = True, "early_stopping"
                        break
                if state.step % tc.checkpoint_every_steps == 0 or interrupt.requested:
                    checkpoint()
                if interrupt.requested:
                    raise KeyboardInterrupt
            if stop and state.stopped_reason == "early_stopping":
                break
            # end of epoch (or of max_steps): validate, then move the data position to the next epoch
            if on_validation(validate()):
                stop, state.stopped_reason = True, "early_stopping"
            if state.group >= len(groups):
                state.epoch, state.group = state.epoch + 1, 0
            if not stop and state.epoch >= tc.epochs:
                state.stopped_reason = "epochs"
            checkpoint()
    finally:
        interrupt.restore()
        if bar is not None:
            bar.close()
    if not state.stopped_reason:
        state.stopped_reason = "epochs"
    if features is not None:
        state.feature_cache_bytes = features.nbytes()
    return state


class DeferredInterrupt:
    """Ctrl-C during training: finish the current optimizer step, checkpoint, then stop.

    The first SIGINT only sets a flag that the loop reads between steps, so a checkpoint is never
    taken half-way through an update; a second SIGINT stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\npeftsum: interrupted; finishing this step and saving a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class MetricsFile:
    """``metrics.jsonl``: one JSON object per line, appended; truncated to a checkpoint on resume."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled
        self.lines = 0
        if enabled and self.path.is_file():
            self.lines = sum(1 for line in self.path.read_text().splitlines() if line.strip())

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.lines += 1

    def truncate_to(self, n: int) -> None:
        if not self.enabled:
            return
        rows = self.path.read_text().splitlines()[:n] if self.path.is_file() else []
        from ..utils import write_text

        write_text(self.path, "".join(r + "\n" for r in rows))
        self.lines = len(rows)

    def reset(self) -> None:
        if self.enabled:
            from ..utils import write_text

            write_text(self.path, "")
        self.lines = 0
