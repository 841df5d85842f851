"""Which mixed precision a run trains and generates in, decided from the hardware.

``train.mixed_precision: auto`` means: bf16 on a GPU with bf16 tensor cores (compute capability 8.0 and up:
A100, A10, L4, L40S, H100, RTX 30xx/40xx), fp16 with loss scaling below it (T4, V100: there
``torch.cuda.is_bf16_supported()`` answers True through emulation, which trains several times slower and
without loss scaling), no mixed precision on the CPU.  ``bf16`` asked for on a GPU without bf16 tensor cores
is run as asked, with a warning.
"""

from __future__ import annotations

import logging

import torch

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
