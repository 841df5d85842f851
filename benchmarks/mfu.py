"""The machine's measured matmul peak against the model FLOP/s of peftsum's LoRA training step.

Peak: the best of a few large square matmuls in the step's dtype (fp32, or --dtype bf16) on the device.
Achieved: the FLOPs the step actually runs (peftsum.evaluate.cost.train_flops: the blocks' matmuls
and attention forward and backward on real tokens, the LM head on summary positions only, LoRA's
weight gradients), divided by its measured time after a warm-up step.  The step runs as the loop runs it: one forward
and backward pass per train.micro_batch_size sequences (on CPU, by default, one).  Measured twice: with GPT-2's
own dropout (0.1 on attention, residuals, embeddings; peftsum's default) and with model.dropout 0.

    python benchmarks/mfu.py [--batch 4] [--steps 3] [--dtype fp32|bf16] [--device cpu|cuda]
"""

from __future__ import annotations

import time

import torch
from _common import args, as_dataset, gpt2_small, machine, peftsum_config, synthetic_examples


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype, device) -> float:
    """peftsum's measurement (plan uses it too) at this benchmark's sizes: 2048 on CPU, 8192 on GPUs."""
    from peftsum.evaluate.cost import matmul_peak as measure

    return measure(device, dtype, n=8192 if device.type == "cuda" else 2048, seconds=1.0)


def lora_step_flops_per_s(batch: int, steps: int, device, dtype, dropout: float | None,
                          n_layer: int = 12) -> tuple[float, float, float]:
    """(FLOP/s, seconds per step, tokens per second) of peftsum's LoRA step (GPT-2 small's width, ``n_layer``
    blocks)."""
    from peftsum.data.collate import collate
    from peftsum.evaluate.cost import flop_shape, train_flops
    from peftsum.methods import build_method
    from peftsum.model.loading import set_dropout
    from peftsum.train.loss import SummaryLM
    from peftsum.train.strategies import micro_batch_size

    model = gpt2_small(n_layer=n_layer)
    set_dropout(model, dropout)
    cfg = peftsum_config("lora", batch, steps)
    method = build_method(cfg)
    method.prepare_model(model)
    model.to(device)
    lm = SummaryLM(model, method)
    params = [p for _, p in method.trainable_parameters(model)]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ds = as_dataset(synthetic_examples(batch * (steps + 1), seed=2))
    longest = max(len(e["input_ids"]) for e in ds)
    fwd = min(batch, micro_batch_size(cfg.train, device, model.config, longest) or batch)  # the loop's (CPU: 1)

    def passes(k: int) -> list[dict]:
        """Batch k as the loop runs it: forward passes of ``fwd`` sequences."""
        rows = [ds[i] for i in range(k * batch, (k + 1) * batch)]
        return [{n: t.to(device) for n, t in collate(rows[j: j + fwd], 50256).items() if torch.is_tensor(t)}
                for j in range(0, batch, fwd)]

    batches = [passes(k) for k in range(steps + 1)]
    shape = flop_shape(model, method)

    def step(group):
        total = sum(int((p["labels"] != -100).sum()) for p in group)
        for b in group:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                nll, n = lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
            (nll / total).backward()
        opt.step()
        opt.zero_grad()

    model.train()
    step(batches[0])
    flops = tokens = 0.0
    sync(device)
    t0 = time.perf_counter()
    for group in batches[1:]:
        step(group)
        for b in group:
            n_tok = int(b["attention_mask"].sum())
            tokens += n_tok
            flops += train_flops(shape, n_tok, int((b["labels"][:, 1:] != -100).sum()), n_tok / len(b["input_ids"]))
    sync(device)
    secs = time.perf_counter() - t0
    return flops / secs, secs / steps, tokens / secs


def main():
    a = args(__doc__.splitlines()[0], batch=4, steps=3, dtype="fp32", device="cpu")
    device = torch.device(a.device)
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float32
    peak = matmul_peak(dtype, device)
    rows = []
    for label, p in (("GPT-2 dropout 0.1 (default)", None), ("model.dropout 0", 0.0)):
        rows.append((label, *lora_step_flops_per_s(a.batch, a.steps, device, dtype, p)))
    peak = max(peak, matmul_peak(dtype, device))  # the best of before and after: the machine is noisy
    print(f"machine: {machine() if device.type == 'cpu' else torch.cuda.get_device_name(device)}")
    print(f"matmul peak ({a.dtype}, best of 20 before and after): {peak / 1e9:10.1f} GFLOP/s")
    for label, fps, s, tps in rows:
        print(f"LoRA step, {label:28}: {fps / 1e9:10.1f} GFLOP/s  {s:7.3f} s/step  {tps:10.0f} tokens/s  "
              f"fraction of peak {fps / peak * 100:5.1f} %")


if __name__ == "__main__":
    main()
