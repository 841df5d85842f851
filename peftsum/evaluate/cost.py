"""Cost metrics: training FLOPs, MFU, peak memory, device name.

Training FLOPs are counted as the matmuls that actually run (2 FLOPs per multiply-add), per token:

  forward    2 · trunk + 2 · n_layer · T · d         (the blocks' weights; QKᵀ and AV over a causal context
                                                      of mean length T)
             + 2 · head on summary positions only     (peftsum applies the LM head where the loss reads)
  backward   activation gradients through the blocks the gradient passes (from the top down to the
             lowest trainable one; all of them when a soft prompt or the input embeddings train):
             the forward's cost for those blocks, + 2 · head on summary positions;
             weight gradients: 2 · trainable block parameters per token, + 2 · head per summary
             position when the head trains

Embedding lookups, layer norms, GELU and softmax are not matmuls and are not counted; neither are
padding positions.  With a frozen, cached trunk (last-layer) the trunk's forward runs once over the
training set, not once per epoch.  Counting the 38.6M-parameter head on every position, as a plain
``2N`` forward + ``2N`` backward per token does, would credit a LoRA step on GPT-2 small with 37 % more
FLOPs than it runs (600-token sequences, 70 of them summary).
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass

import torch
from torch.distributed.tensor import DTensor

from ..model.arch import decoder_blocks, hidden_size, trunk
from ..model.loading import logical_numel, stored_tensors
from ..utils import peak_rss_bytes, reset_peak_rss

# Dense (no sparsity) datasheet peaks in FLOP/s per matmul precision, keyed by the exact name
# torch.cuda.get_device_name gives.  GeForce cards: tensor cores with fp32 accumulation, as PyTorch runs them.
# A GPU or precision not listed (a T4 has no bf16 or TF32 tensor cores) gets a measured peak instead.
_H100_SXM = {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12}
_NVL = {"bf16": 835.5e12, "fp16": 835.5e12, "tf32": 417.5e12, "fp32": 60e12}
_A100 = {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12}
_V100_SXM2 = {"fp16": 125e12, "fp32": 15.7e12}
_V100_PCIE = {"fp16": 112e12, "fp32": 14e12}
PEAKS: dict[str, dict[str, float]] = {
    "NVIDIA H200": _H100_SXM, "NVIDIA H200 NVL": _NVL,
    "NVIDIA H100 80GB HBM3": _H100_SXM, "NVIDIA H100 NVL": _NVL,
    "NVIDIA H100 PCIe": {"bf16": 756.5e12, "fp16": 756.5e12, "tf32": 378e12, "fp32": 51.2e12},
    "NVIDIA A100-SXM4-80GB": _A100, "NVIDIA A100-SXM4-40GB": _A100, "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
    "NVIDIA L40S": {"bf16": 362.05e12, "fp16": 362.05e12, "tf32": 183e12, "fp32": 91.6e12},
    "NVIDIA L40": {"bf16": 181.05e12, "fp16": 181.05e12, "tf32": 90.5e12, "fp32": 90.5e12},
    "NVIDIA L4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    "NVIDIA A10": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    "Tesla T4": {"fp16": 65e12, "fp32": 8.1e12},
    "Tesla V100-SXM2-16GB": _V100_SXM2, "Tesla V100-SXM2-32GB": _V100_SXM2,
    "Tesla V100-PCIE-16GB": _V100_PCIE, "Tesla V100-PCIE-32GB": _V100_PCIE,
    "NVIDIA GeForce RTX 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},
    "NVIDIA GeForce RTX 3090": {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12},
}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
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


def matmul_precision(mixed_precision: str) -> str:
    """The precision the training matmuls run in: ``bf16`` / ``fp16`` under mixed precision, else ``tf32`` where
    PyTorch lets float32 matmuls use TF32 tensor cores (``torch.set_float32_matmul_precision("high")``), else
    ``fp32``."""
    if mixed_precision in ("bf16", "fp16"):
        return mixed_precision
    return "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def peak_flops(name: str, precision: str) -> float | None:
    """The datasheet's dense peak of the device named ``name`` (exactly) in ``precision``; None where unknown."""
    return PEAKS.get(name.strip(), {}).get(precision)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int | None = None, seconds: float = 0.5) -> float:
    """This device's measured dense matmul rate (FLOP/s) in ``dtype``: the best n x n product of a short burst."""
    n = n or (4096 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    best, t_end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        synchronize(device)
        t0 = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class FlopShape:
    """What the FLOP count needs to know about a prepared model (see :func:`flop_shape`)."""

    trunk: int  # parameters of the transformer blocks (LoRA adapters included)
    head: int  # LM head, vocab × d
    n_layer: int
    d_model: int
    trainable_trunk: int  # trainable parameters inside the blocks (their weight gradients)
    head_trainable: bool
    backward_layers: int  # blocks the activation gradients pass through


def flop_shape(model, method) -> FlopShape:
    blocks = decoder_blocks(model)
    n = len(blocks)
    head = model.get_output_embeddings().weight
    in_blocks = {id(p) for block in blocks for p in block.parameters()}
    trainable = [p for _, p in method.trainable_parameters(model)]
    backward = 0
    for i, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            backward = n - i
            break
    # a trainable soft prompt or input embedding (the tied head) sits below every block
    if any(_below_blocks(model, p) for p in trainable):
        backward = n
    return FlopShape(trunk=sum(logical_numel(p) for block in blocks for p in block.parameters()), head=head.numel(), n_layer=n,
                     d_model=hidden_size(model),
                     trainable_trunk=sum(p.numel() for p in trainable if id(p) in in_blocks),
                     head_trainable=head.requires_grad, backward_layers=backward)


def _below_blocks(model, p) -> bool:
    """Is ``p`` used before the first block (input or position embeddings, a soft prompt)?"""
    t = trunk(model)
    below = [model.get_input_embeddings().weight, getattr(getattr(t, "wpe", None), "weight", None)]
    for name in ("soft_prompt", "peft_prompt_encoder"):  # soft prompts and PEFT's prompt / prefix encoders
        prompt = getattr(model, name, None)
        if prompt is not None:
            below += list(prompt.parameters())
    return any(p is q for q in below if q is not None)


def train_flops(shape: FlopShape, tokens: int, target_tokens: int, mean_len: float,
                cached_trunk_tokens: int = 0, recompute: bool = False) -> float:
    """FLOPs of a training run over ``tokens`` (real and soft-prompt positions, no padding) of which
    ``target_tokens`` were summary positions the loss read; ``mean_len`` is the mean sequence length.
    ``recompute`` (activation checkpointing): the backward runs the forward of every block it passes through
    once more."""
    per_token = 2 * shape.trunk + 2 * shape.n_layer * mean_len * shape.d_model
    head = 2 * shape.head * target_tokens
    if cached_trunk_tokens and shape.backward_layers == 0:
        return per_token * cached_trunk_tokens + head + (head if shape.head_trainable else 0)
    forward = per_token * tokens + head
    backward = 2 * shape.trainable_trunk * tokens + (head if shape.head_trainable else 0)
    if shape.backward_layers:
        backward += per_token * tokens * shape.backward_layers / shape.n_layer + head
    again = per_token * tokens * shape.backward_layers / shape.n_layer if recompute else 0.0
    return forward + backward + again


def tensor_bytes(tensors) -> int:
    """Bytes of the distinct tensors given (a tensor shared by two names, GPT-2's tied head, counts once; a quantized
    parameter with its quantization constants; of a sharded one, this process's part)."""
    seen, total, held = set(), 0, []
    for t in tensors:
        if not torch.is_tensor(t):
            continue
        if isinstance(t, DTensor):  # sharded (train.fsdp): the part this process holds (kept: ids stay unique)
            t = t.to_local()
            held.append(t)
        for part in stored_tensors(t):
            if id(part) not in seen:
                seen.add(id(part))
                total += part.numel() * part.element_size()
    return total


def training_state_bytes(model, trainable: list, optimizer) -> dict[str, int]:
    """The training state by its parts, exactly, from the tensors themselves: the model's weights (frozen and
    trained), the gradients of the trained ones (a gradient has its parameter's shape and dtype), and the
    optimizer's state (AdamW: two moments and a step count per trained tensor)."""
    state = optimizer.state_dict()["state"] if optimizer is not None else {}
    return {"weights": tensor_bytes(model.parameters()) if model is not None else 0,
            "gradients": tensor_bytes(trainable),
            "optimizer": tensor_bytes(t for s in state.values() for t in s.values())}


def activation_bytes(fn, model) -> tuple[object, int]:
    """Run ``fn`` (a training pass of ``model``) and return its result and the bytes autograd saved for the backward
    that are not the model's own parameters, every storage once: the activation memory of the pass, the same figure
    on any device (activation checkpointing keeps only each block's input)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def parse_bytes(text: str) -> int:
    """``24GB``, ``80 GiB``, ``16g``, ``512MB`` -> bytes (GB and GiB both as 2**30: how GPU memory is quoted)."""
    units = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    s = text.strip().lower().replace(" ", "").removesuffix("b").removesuffix("i")
    number, unit = (s[:-1], s[-1]) if s and s[-1] in units and s[-1] != "" else (s, "")
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ValueError(f"not a memory size: {text!r} (e.g. 24GB, 80GiB, 512MB)")
    return int(value * units[unit])


def peak_reserved(device: torch.device) -> int | None:
    """The CUDA caching allocator's peak reservation (what the GPU had to hold); None off CUDA."""
    return int(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else None


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_rss_bytes()


def memory_measure(device: torch.device) -> str:
    """How :func:`peak_memory` measures on ``device`` (the report says it beside the numbers)."""
    if device.type == "cuda":
        return "peak of tensors allocated on the GPU (torch.cuda.max_memory_allocated), reset before the run"
    return ("peak resident memory of the whole process (VmHWM: Python, libraries, model, data), reset before the "
            "run after what earlier runs in the process held was given back")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


class PeakMemory:
    """The peak of each phase of a run (loading, training, evaluation), each measured from its own start, and
    the whole run's peak (the largest).  With several processes: the largest over the ranks."""

    def __init__(self, device: torch.device):
        self.device, self.phases, self.reserved = device, {}, 0
        reset_peak_memory(device)

    def phase(self, name: str) -> None:
        """Close the phase running so far under ``name`` and start the next one from here."""
        self.phases[name] = peak_memory(self.device)
        self.reserved = max(self.reserved, peak_reserved(self.device) or 0)
        reset_peak_memory(self.device)

    def overall(self) -> int:
        return max(self.phases.values(), default=0)
