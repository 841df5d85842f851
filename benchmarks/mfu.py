"""The machine's measured matmul peak against the model FLOP/s of peftsum's LoRA training step.

Peak: the best of a few large square matmuls (fp32, or --dtype bf16) on this device.  Achieved: the
LoRA step's FLOPs (peftsum.evaluate.cost.train_flops on the real tokens of the batch: forward over all
parameters, backward for activation gradients through the trunk, weight gradients for A and B, attention)
divided by its measured time, after a warm-up step.

    python benchmarks/mfu.py [--batch 4] [--steps 3] [--dtype fp32|bf16]
"""

from __future__ import annotations

import time

import torch
from _common import args, as_dataset, gpt2_small, machine, peftsum_config, synthetic_examples


def matmul_peak(dtype, n: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def main():
    from peftsum.data.collate import collate
    from peftsum.evaluate.cost import train_flops
    from peftsum.methods import build_method
    from peftsum.train.loss import SummaryLM

    a = args(__doc__.splitlines()[0], batch=4, steps=3, dtype="fp32")
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    peak = matmul_peak(dtype)
    model = gpt2_small()
    cfg = peftsum_config("lora", a.batch, a.steps)
    method = build_method(cfg)
    method.prepare(model)
    lm = SummaryLM(model, method)
    params = [p for _, p in method.trainable_parameters(model)]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ds = as_dataset(synthetic_examples(a.batch * (a.steps + 1), seed=2))
    batches = [collate([ds[i] for i in range(k * a.batch, (k + 1) * a.batch)], 50256) for k in range(a.steps + 1)]
    counts = method.param_counts(model)

    def step(b):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            nll, n = lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
        (nll / n).backward()
        opt.step()
        opt.zero_grad()

    model.train()
    step(batches[0])
    flops, t0 = 0.0, time.perf_counter()
    for b in batches[1:]:
        step(b)
        tokens = int(b["attention_mask"].sum())
        flops += train_flops(counts["total"], counts["trainable"], tokens, 12, 768, tokens / a.batch, True)
    secs = time.perf_counter() - t0
    print(f"machine: {machine()}")
    print(f"matmul peak ({a.dtype}, 2048^3): {peak / 1e9:8.1f} GFLOP/s")
    print(f"LoRA step ({a.steps} steps, batch {a.batch}, GPT-2 small shape): {flops / secs / 1e9:8.1f} GFLOP/s "
          f"({secs / a.steps:.2f} s/step)")
    print(f"fraction of peak: {flops / secs / peak * 100:.1f} %")


if __name__ == "__main__":
    main()
