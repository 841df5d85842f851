"""What the loop asks instead of checking conditions: where a pass's inputs come from, and how processes share a step.

:class:`Inputs` -- what a forward pass is fed:

* :class:`TokenBatches`: the examples' tokens, collated and padded; a process takes every ``world``-th example of a
  global batch; a pass holds ``train.micro_batch_size`` sequences (on a CPU, as many as keep one layer's attention
  scores within :data:`CPU_ATTENTION_BYTES`).
* :class:`CachedFeatures`: a frozen trunk's final hidden states (:class:`~peftsum.methods.base.CachedTrunk`), built once
  before the first step (that time counts as training); a process holds the features of the examples it owns
  (:func:`~peftsum.train.features.shard`) and takes those of every batch; a pass is the whole share (the head alone).

:class:`Parallelism` -- how the processes share a step:

* :class:`OneProcess`: the whole batch; the last pass of a step synchronises nothing.
* :class:`DataParallel` (DDP): no pass synchronises.  Out of device memory on one rank must not leave the others
  waiting in a gradient all-reduce, so the ranks first agree that every pass ran (:meth:`Parallelism.agree`), then
  the gradients are averaged as DDP's hook does (:meth:`DataParallel.reduce_gradients`).
* :class:`FullySharded` (FSDP2, :mod:`peftsum.train.sharding`): every forward gathers weights with the other
  processes, so every process makes as many passes as the one with the most, cannot back off alone when out of
  memory, and reads or writes whole weights and optimizer state collectively.
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np
import torch

from ..data.collate import collate, to_device
from ..evaluate.cost import synchronize
from ..model.arch import attention_heads
from ..utils import max_over_processes
from .features import FeatureCache, shard
from .precision import compute_dtype
from .sharding import distribute_like, gather, is_fsdp, load_optimizer_state, optimizer_state, reshard

log = logging.getLogger(__name__)

# On CPU a forward pass holds at most this many bytes of one layer's attention scores (fp32, heads x T x T).
# Measured (docs/performance.md section 4): GPT-2 small with its dropout, 1 sequence of ~600 tokens per pass
# (17 MiB of scores) ran 1.1-1.5x faster than 4 (69 MiB); dropout keeps SDPA on its unfused path there.
CPU_ATTENTION_BYTES = 32 * 2**20


def micro_batch_size(train_cfg, device, model_config, seq_len: int) -> int | None:
    """Sequences per forward/backward pass: ``train.micro_batch_size`` if set; on CPU as many as keep
    one layer's attention scores within CPU_ATTENTION_BYTES; elsewhere the whole batch (None)."""
    if train_cfg.micro_batch_size:
        return train_cfg.micro_batch_size
    if device.type != "cpu":
        return None
    return max(1, CPU_ATTENTION_BYTES // (4 * attention_heads(model_config) * seq_len * seq_len))


def _passes(idx: list[int], chunk: int | None) -> list[list[int]]:
    """A share of a batch, cut into forward passes of at most ``chunk`` sequences."""
    if not chunk or len(idx) <= chunk:
        return [idx]
    return [idx[k: k + chunk] for k in range(0, len(idx), chunk)]


# --- inputs ---------------------------------------------------------------------------------------
class Inputs:
    """What a forward pass is fed (the module's docstring)."""

    setup_seconds = 0.0  # work done once before the first step, counted as training time
    validation_features = None  # what validation's loss reads instead of running the trunk (None: the trunk)

    def share(self, batch: list[int], rank: int, world: int) -> list[int]:
        """This process's part of a global batch: every ``world``-th example from its rank."""
        return batch[rank::world]

    def forward_passes(self, idx: list[int], limit: int | None) -> list[list[int]]:
        """``idx`` cut into passes of at most ``limit`` sequences (None: as configured)."""
        raise NotImplementedError

    def batch(self, idx: list[int]) -> dict:
        raise NotImplementedError

    def stand_in(self, batch: list[int]) -> list[int]:
        """What a pass runs where this process has no example of ``batch`` (its loss counts zero; its backward takes
        part in the gradients' synchronisation): the batch's first example."""
        return batch[:1]

    def nbytes(self) -> int:
        """Bytes held for the whole run (a feature cache)."""
        return 0


class TokenBatches(Inputs):
    """The examples' tokens, collated and padded on the host, moved to the device per pass."""

    def __init__(self, train_ds, lengths: list[int], train_cfg, device, pad_id: int, model_config,
                 num_virtual_tokens: int):
        """``lengths``: each example's token count (the loop's batch plan has them already)."""
        self.train_ds, self.lengths, self.train_cfg = train_ds, lengths, train_cfg
        self.device, self.pad_id, self.model_config, self.num_virtual_tokens = device, pad_id, model_config, num_virtual_tokens

    def forward_passes(self, idx: list[int], limit: int | None) -> list[list[int]]:
        """The configured micro-batch (:func:`micro_batch_size`, for this batch's longest sequence), at most
        ``limit`` once the device ran out of memory."""
        longest = max(self.lengths[i] for i in idx) + self.num_virtual_tokens
        chunk = micro_batch_size(self.train_cfg, self.device, self.model_config, longest)
        return _passes(idx, min(chunk or len(idx), limit) if limit else chunk)

    def batch(self, idx: list[int]) -> dict:
        padded = collate([self.train_ds[i] for i in idx], self.pad_id)
        return {k: to_device(padded[k], self.device) for k in ("input_ids", "attention_mask", "labels")}


class CachedFeatures(Inputs):
    """A frozen trunk's features, once per split: the head alone trains on them (the module's docstring)."""

    def __init__(self, summary_lm, train_ds, val_ds, batch_size: int, device, pad_id: int, mixed_precision: str,
                 autocast, rank: int, world: int):
        dtype = compute_dtype(mixed_precision)
        self.device = device
        t0 = time.perf_counter()
        self.train = FeatureCache(summary_lm, train_ds, batch_size, device, pad_id, dtype, autocast,
                                  shard(len(train_ds), rank, world))
        synchronize(device)
        self.setup_seconds = time.perf_counter() - t0  # the trunk's one forward pass: part of training's cost
        self.validation_features = FeatureCache(summary_lm, val_ds, batch_size, device, pad_id, dtype, autocast,
                                                shard(len(val_ds), rank, world))
        log.info("cached the frozen trunk's features: %.1f MB in %.1fs", self.nbytes() / 1e6, self.setup_seconds)

    def share(self, batch: list[int], rank: int, world: int) -> list[int]:
        """The batch's examples whose features this process holds."""
        return [i for i in batch if self.train.owns(i)]

    def forward_passes(self, idx: list[int], limit: int | None) -> list[list[int]]:
        return _passes(idx, limit)  # the head alone: the whole share, unless the device ran out of memory

    def batch(self, idx: list[int]) -> dict:
        return self.train.batch(idx, self.device)

    def stand_in(self, batch: list[int]) -> list[int]:
        """None: the batch's examples may all be another process's, whose features this one does not hold; an empty
        batch of features runs the head on nothing."""
        return []

    def nbytes(self) -> int:
        return self.train.nbytes()


# --- parallelism ----------------------------------------------------------------------------------
class Parallelism:
    """How the processes share a step (the module's docstring); :class:`OneProcess` is this base."""

    sharded = False  # parameters, gradients and optimizer state are DTensor shards
    sync_last_pass = True  # the step's last pass lets the wrapper synchronise its gradients (DDP's hook, FSDP's)

    def __init__(self, accelerator, prepared, optimizer):
        self.accelerator, self.prepared, self.optimizer = accelerator, prepared, optimizer
        self.world, self.rank = accelerator.num_processes, accelerator.process_index

    def agree(self, value: int) -> int:
        """The largest of every process's ``value`` (an interrupt request, a failed pass size): every process
        decides alike."""
        return value if self.world == 1 else max_over_processes(value, self.accelerator.device)

    def agree_on_failure(self, tried: int) -> int:
        """The largest pass size any process failed at (0: none failed), where a step can back off."""
        return self.agree(tried)

    def passes(self, batch: list[int], inputs: Inputs, limit: int | None) -> list[list[int]]:
        """This process's forward passes over its share of a global batch."""
        return inputs.forward_passes(inputs.share(batch, self.rank, self.world), limit)

    def pass_context(self, last: bool):
        """Around a pass's forward and backward: gradients synchronised only where :attr:`sync_last_pass` says."""
        if last and self.sync_last_pass:
            return contextlib.nullcontext()
        return self.accelerator.no_sync(self.prepared)

    def cannot_back_off(self) -> str:
        """Why a step out of memory cannot start again at a smaller micro-batch ("": it can)."""
        return ""

    def reduce_gradients(self, params: list[torch.Tensor]) -> None:
        """After every pass of a step ran: the gradients as the step uses them."""

    def trained_state(self, method, model) -> dict[str, torch.Tensor]:
        """The method's trained tensors, whole."""
        return method.state_dict(model)

    def computes_state(self) -> bool:
        """Does this process take part in computing :meth:`trained_state` (process 0 writes it)?"""
        return self.accelerator.is_main_process

    def optimizer_state(self) -> dict:
        return self.optimizer.state_dict()

    def load(self, method, model, weights: dict, optimizer: dict) -> None:
        """A checkpoint's trained tensors and optimizer state into this process's model and optimizer."""
        method.load_state_dict(model, weights)
        self.optimizer.load_state_dict(optimizer)


class OneProcess(Parallelism):
    """One process: the whole batch, the whole model."""


class DataParallel(Parallelism):
    """DDP's replicas: the module's docstring."""

    sync_last_pass = False

    def reduce_gradients(self, params: list[torch.Tensor], bucket_bytes: int = 25 * 2**20) -> None:
        """Every rank's gradients replaced by their mean over the ranks, as DDP's all-reduce hook computes it (each
        divided by the number of processes, then summed), in buckets of DDP's default size."""
        if not torch.distributed.is_initialized():  # processes without a process group: nothing to average with
            return
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        bucket, size = [], 0
        for k, g in enumerate(grads):
            bucket.append(g)
            size += g.numel() * g.element_size()
            if size >= bucket_bytes or k == len(grads) - 1:
                flat = torch.cat([x.reshape(-1) for x in bucket]).div_(self.world)
                torch.distributed.all_reduce(flat)
                offset = 0
                for x in bucket:
                    x.copy_(flat[offset: offset + x.numel()].view_as(x))
                    offset += x.numel()
                bucket, size = [], 0


class FullySharded(Parallelism):
    """FSDP2's shards: the module's docstring."""

    sharded = True

    def passes(self, batch: list[int], inputs: Inputs, limit: int | None) -> list[list[int]]:
        """As many passes as the process that makes the most (an uneven last batch leaves shares one example apart):
        this process's share cut into that many parts, a part it has no example for being an empty list (the loop
        runs it on a stand-in example whose loss counts zero)."""
        share = inputs.share(batch, self.rank, self.world)
        n = max(len(inputs.forward_passes(batch[r::self.world], limit)) for r in range(self.world))
        return [part.tolist() for part in np.array_split(np.array(share, dtype=np.int64), n)]

    def cannot_back_off(self) -> str:
        return "train.fsdp: the processes gather weights in every forward, so they cannot back off apart"

    def agree_on_failure(self, tried: int) -> int:
        return tried  # a failed pass raised already (:meth:`cannot_back_off`): no collective to spend on it

    def trained_state(self, method, model) -> dict[str, torch.Tensor]:
        """Gathered from the shards: a collective every process calls."""
        reshard(self.prepared)
        return gather(method.state_dict(model))

    def computes_state(self) -> bool:
        return True

    def optimizer_state(self) -> dict:
        """Whole, keyed by parameter names (a collective)."""
        return optimizer_state(self.prepared, self.optimizer.optimizer)

    def load(self, method, model, weights: dict, optimizer: dict) -> None:
        """Every process takes its shard of the whole tensors the checkpoint holds."""
        params = dict(model.named_parameters(remove_duplicate=False))
        method.load_state_dict(model, distribute_like(weights, params))
        load_optimizer_state(self.prepared, self.optimizer.optimizer, optimizer)


def parallelism(accelerator, prepared, optimizer) -> Parallelism:
    """The processes' arrangement Accelerate prepared: sharded (``train.fsdp``, or ``accelerate launch`` with FSDP),
    data parallel (several processes), or one process."""
    if is_fsdp(accelerator):
        return FullySharded(accelerator, prepared, optimizer)
    return (DataParallel if accelerator.num_processes > 1 else OneProcess)(accelerator, prepared, optimizer)
