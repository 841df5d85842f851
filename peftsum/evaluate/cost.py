"""Cost metrics: training FLOPs, MFU, peak memory, device name.

Training FLOPs per token (N = all parameters used in the forward, counted once):
  forward   2 N + attention 2 · n_layer · T · d   (QKᵀ and AV over a causal context of mean length T)
  backward  2 N + attention again (activation gradients through the trunk; skipped when the trunk is frozen)
            + 2 · trainable                      (weight gradients)
With a frozen, cached trunk (last-layer) the trunk's forward runs once, not once per epoch, and the
head's 2 · |head| forward + 2 · |head| weight-gradient FLOPs run on summary positions only.
"""

from __future__ import annotations

import torch

# dense bf16/fp16 tensor-core peaks (FLOP/s) of known accelerators
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12, "T4": 65e12,
         "V100": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {cpu} ({torch.get_num_threads()} threads)"


def peak_flops(name: str) -> float | None:
    for key, peak in PEAKS.items():
        if key in name:
            return peak
    return None


def train_flops(n_params: int, trainable: int, tokens: int, n_layer: int, d_model: int, mean_len: float,
                trunk_backward: bool, head_params: int = 0, target_tokens: int = 0,
                cached_trunk_tokens: int = 0) -> float:
    """Estimated FLOPs of a training run that processed ``tokens`` (real, not padding) tokens."""
    attn = 2 * n_layer * mean_len * d_model
    if not trunk_backward and cached_trunk_tokens:
        trunk_params = n_params - head_params
        return (2 * trunk_params + attn) * cached_trunk_tokens + 4 * head_params * target_tokens
    fwd = (2 * n_params + attn) * tokens
    bwd = 2 * trainable * tokens
    if trunk_backward:
        bwd += (2 * n_params + attn) * tokens
    return fwd + bwd


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    from ..utils import peak_rss_bytes

    return peak_rss_bytes()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        from ..utils import reset_peak_rss

        reset_peak_rss()
