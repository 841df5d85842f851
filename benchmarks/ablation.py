"""What each optimisation buys, on the LoRA training step (GPT-2 small shape, random weights, the same
examples): one change at a time, measured side by side in one run.

  A. fixed padding to 646 tokens, LM head and loss on every position (what a plain script does)
  B. fixed padding, LM head only on the summary positions
  C. dynamic padding (to the longest of a length-grouped batch), LM head only on summary positions,
     attention mask passed to the model
  D. as C, without the attention mask (right padding + causal attention make it redundant)
     (peftsum on GPUs)
  E. as D, one forward/backward pass per sequence, the same token-weighted gradient (peftsum on CPU:
     train.micro_batch_size's default there)

    python benchmarks/ablation.py [--batch 4] [--steps 3]
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from _common import (
    SEP,
    SOURCE,
    TARGET,
    args,
    as_dataset,
    gpt2_small,
    machine,
    peftsum_config,
    synthetic_examples,
)

MAXLEN = SOURCE + SEP + TARGET + 1


def main():
    from peftsum.data.collate import collate, epoch_batches
    from peftsum.methods import build_method
    from peftsum.train.loss import SummaryLM

    a = args(__doc__.splitlines()[0], batch=4, steps=3)
    model = gpt2_small()
    method = build_method(peftsum_config("lora", a.batch, a.steps))
    method.prepare_model(model)
    lm = SummaryLM(model, method)
    params = [p for _, p in method.trainable_parameters(model)]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ds = as_dataset(synthetic_examples(a.batch * (a.steps + 1), seed=3))
    lengths = [len(x) for x in ds["input_ids"]]
    grouped = epoch_batches(lengths, a.batch, 0, 0, group_by_length=True)
    plain = [list(range(k * a.batch, (k + 1) * a.batch)) for k in range(a.steps + 1)]

    def fixed(idx):
        b = collate([ds[i] for i in idx], 50256)
        T = b["input_ids"].shape[1]
        pad = MAXLEN - T
        return {"input_ids": F.pad(b["input_ids"], (0, pad), value=50256), "attention_mask": F.pad(b["attention_mask"], (0, pad)),
                "labels": F.pad(b["labels"], (0, pad), value=-100)}

    def step_all_positions(b):
        labels = b["input_ids"].masked_fill(b["attention_mask"] == 0, -100)  # LM loss on every real token
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=labels)
        out.loss.backward()

    def step_summary_only(b):
        nll, n = lm(**b)
        (nll / n).backward()

    def step_summary_only_with_mask(b):
        h = model.transformer(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        keep = b["labels"][:, 1:] != -100
        logits = model.lm_head(h[:, :-1][keep])
        F.cross_entropy(logits, b["labels"][:, 1:][keep]).backward()

    def one_by_one(idx):
        return [dynamic([i]) for i in idx]

    def step_passes(passes):
        total = sum(int((p["labels"][:, 1:] != -100).sum()) for p in passes)
        for p in passes:
            nll, _ = lm(**p)
            (nll / total).backward()

    def dynamic(idx):
        return collate([ds[i] for i in idx], 50256)

    variants = {
        "A fixed padding, head on all positions": (plain, fixed, step_all_positions),
        "B fixed padding, head on summary only": (plain, fixed, step_summary_only_with_mask),
        "C dynamic padding, head on summary only": (grouped, dynamic, step_summary_only_with_mask),
        "D as C, no attention mask": (grouped, dynamic, step_summary_only),
        "E as D, one sequence per pass (CPU default)": (grouped, one_by_one, step_passes),
    }
    model.train()
    print(f"machine: {machine()}")
    base = None
    for name, (batches, make, step) in variants.items():
        prepared = [make(idx) for idx in batches]
        step(prepared[0])
        opt.zero_grad()
        t0 = time.perf_counter()
        for b in prepared[1: a.steps + 1]:
            step(b)
            opt.step()
            opt.zero_grad()
        s = (time.perf_counter() - t0) / a.steps
        base = base or s
        print(f"{name:<44} {s:6.2f} s/step   {base / s:5.2f}x", flush=True)


if __name__ == "__main__":
    main()
