"""Which mixed precision a run trains and generates in, decided from the hardware.

``train.mixed_precision: auto`` means: bf16 on a GPU with bf16 tensor cores (compute capability 8.0 and up:
A100, A10, L4, L40S, H100, RTX 30xx/40xx), fp16 with loss scaling below it (T4, V100: there
``torch.cuda.is_bf16_supported()`` answers True through emulation, which trains several times slower and
without loss scaling), no mixed precision on the CPU.  ``bf16`` asked for on a GPU without bf16 tensor cores
is run as asked, with a warning.

``fp16`` asked for on the CPU runs as on a T4: float16 autocast and a loss scaler (``torch.amp.GradScaler("cpu")``),
which Accelerate sets up on accelerators only (:func:`enable_cpu_fp16`).  It is slow there; it exists so that the
fp16 path -- loss scaling, skipped steps, the frozen weights stored in float16 -- runs and is tested on a CPU.

A step under fp16 (:func:`clip_gradients`): the gradients are unscaled once, their norm clipped, and the step counts
as skipped -- no update, the schedule not advanced -- exactly when that norm is not finite, which is when the scaler
found an overflow and kept the weights (also with a fused optimizer, which skips the update inside its kernel).
"""

from __future__ import annotations

import logging
import math

import torch
from torch.distributed.tensor import DTensor

log = logging.getLogger(__name__)

BF16_CAPABILITY = (8, 0)  # Ampere: the first GPUs with bf16 tensor cores


def has_bf16_tensor_cores(device_index: int | None = None) -> bool:
    """Does this CUDA device compute bf16 on tensor cores (not by emulation)?"""
    return tuple(torch.cuda.get_device_capability(device_index)) >= BF16_CAPABILITY


def resolve_mixed_precision(setting: str, cpu: bool) -> str:
    """``train.mixed_precision`` as Accelerate takes it (``no``, ``bf16``, ``fp16``) on this machine."""
    on_gpu = not cpu and torch.cuda.is_available()
    if setting == "auto":
        if not on_gpu:
            return "no"
        return "bf16" if has_bf16_tensor_cores() else "fp16"
    if setting == "bf16" and on_gpu and not has_bf16_tensor_cores():
        major, minor = torch.cuda.get_device_capability()
        log.warning("train.mixed_precision bf16 on %s (compute capability %d.%d) has no bf16 tensor cores: it is "
                    "emulated and slow; fp16 (or auto) uses the tensor cores", torch.cuda.get_device_name(), major,
                    minor)
    return setting


def compute_dtype(mixed_precision: str) -> torch.dtype:
    """The dtype matmuls run in under ``mixed_precision`` (as Accelerate resolved it)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)


def set_tf32(enabled: bool, on_gpu: bool) -> None:
    """``train.tf32``: float32 matmuls on a GPU's TF32 tensor cores (``set_float32_matmul_precision("high")``), or
    exact float32 ("highest").  The CPU is left exact: there "high" may let oneDNN split float32 into bfloat16s."""
    if on_gpu:
        torch.set_float32_matmul_precision("high" if enabled else "highest")


def enable_cpu_fp16(accelerator) -> None:
    """``mixed_precision: fp16`` on the CPU: float16 autocast and a CPU loss scaler, as Accelerate sets them up on a
    GPU (there it makes neither, and the frozen weights stored in float16 would meet float32 activations)."""
    if accelerator.mixed_precision == "fp16" and accelerator.device.type == "cpu" and accelerator.scaler is None:
        accelerator.native_amp = True
        accelerator.scaler = torch.amp.GradScaler("cpu")


def _agree_on_overflow(scaler, optimizer) -> None:
    """Sharded gradients: each process unscaled only its shards, so one may have found an overflow the others did
    not; every process takes the maximum (as torch's ShardedGradScaler does for FSDP1), so all skip or all step
    and their loss scales stay equal."""
    for found in scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values():
        torch.distributed.all_reduce(found, op=torch.distributed.ReduceOp.MAX)


def clip_gradients(accelerator, optimizer, params, max_norm: float, sharded: bool) -> tuple[float, bool]:
    """Unscale the gradients once (fp16), clip their global norm to ``max_norm``; return the norm before clipping
    and whether the optimizer step will be skipped (an overflow under loss scaling: a non-finite norm).

    Accelerate's ``clip_grad_norm_`` unscales a second time under FSDP when the parameters are a subset of the
    model's (LoRA), which the scaler refuses; its ``optimizer_step_was_skipped`` misses the skips of a fused
    optimizer.  This does both once, for every case."""
    scaler = accelerator.scaler
    if scaler is not None:
        inner = optimizer
        while hasattr(inner, "optimizer"):  # Accelerate's wrapper around the torch optimizer
            inner = inner.optimizer
        scaler.unscale_(inner)
        if sharded:
            _agree_on_overflow(scaler, inner)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    norm = float(norm)
    return norm, scaler is not None and not math.isfinite(norm)
