"""Last-layer fine-tuning, a whole 3-epoch run end to end: peftsum against HF Trainer with the
assignment's recipe (unfreeze model.lm_head, which is tied to wte: the input embeddings train too and
every step runs a full forward and backward pass).

peftsum unties the head, computes the frozen trunk's features once (counted in its time) and trains the
head on them for every epoch.  Same examples, same steps, same batch.

    python benchmarks/last_layer_epochs.py [--examples 32] [--batch 4] [--epochs 3]
"""

from __future__ import annotations

import torch
from _common import args, gpt2_small, machine, synthetic_examples
from train_throughput import run_baseline, run_peftsum


def main():
    a = args(__doc__.splitlines()[0], examples=32, batch=4, epochs=3, threads=0)
    if a.threads:
        torch.set_num_threads(a.threads)
    base = gpt2_small()
    examples = synthetic_examples(a.examples)
    steps = a.epochs * (a.examples // a.batch)
    print(f"machine: {machine()}")
    print(f"last-layer, {a.examples} examples x {a.epochs} epochs, batch {a.batch} ({steps} optimizer steps)")
    run_peftsum("last-layer", base, examples[: a.batch], 1, a.batch)  # warm-up
    ps, pn = run_peftsum("last-layer", base, examples, steps, a.batch, epochs=a.epochs)
    bs, bn = run_baseline("last-layer", base, examples, steps, a.batch, epochs=a.epochs)
    assert pn == bn == steps * a.batch, (pn, bn)
    print(f"{'':<10}{'seconds':>10}{'examples/s':>12}")
    print(f"{'baseline':<10}{bs:>10.1f}{bn / bs:>12.3f}")
    print(f"{'peftsum':<10}{ps:>10.1f}{pn / ps:>12.3f}")
    print(f"ratio: {bs / ps:.2f}x")


if __name__ == "__main__":
    main()
