"""Training examples/s of two peftsum checkouts, side by side in one run (a refactoring must not slow the loop).

Each measurement is ``train_throughput.run_peftsum`` (GPT-2 small's shape, random weights, the same synthetic
examples) in a fresh process whose ``peftsum`` is the checkout's; the checkouts alternate, ``--rounds`` times per
method, so a machine that slows down slows both.  Prints each checkout's median examples/s and their ratio.

    git worktree add /tmp/before <commit>
    python benchmarks/checkouts_throughput.py --before /tmp/before --after . [--methods lora,prompt-tuning]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import args, machine

HERE = Path(__file__).resolve().parent
ONE = """
import json, sys
# the checkout's peftsum, not an editable install's (its finder sits before the path on sys.meta_path)
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path[:0] = [{checkout!r}, {bench!r}]
import peftsum
from _common import gpt2_small, synthetic_examples
from train_throughput import run_peftsum
examples = synthetic_examples({steps} * {batch})
base = gpt2_small()
run_peftsum({method!r}, base, examples[:{batch}], 1, {batch})  # warm-up: one-time costs
seconds, n = run_peftsum({method!r}, base, examples, {steps}, {batch})
print(json.dumps({{"file": peftsum.__file__, "rate": n / seconds}}))
"""


def rate(checkout: Path, method: str, steps: int, batch: int) -> float:
    code = ONE.format(checkout=str(checkout.resolve()), bench=str(HERE), steps=steps, batch=batch, method=method)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).resolve().is_relative_to(checkout.resolve()), out["file"]  # the checkout's peftsum ran
    return out["rate"]


def main():
    a = args(__doc__.splitlines()[0], before="", after=".", methods="lora,prompt-tuning", steps=3, batch=4, rounds=2)
    if not a.before:
        sys.exit("--before CHECKOUT: the checkout to compare with (a git worktree of the commit before)")
    before, after = Path(a.before), Path(a.after)
    print(f"machine: {machine()}")
    print(f"GPT-2 small shape, random weights; {a.steps} steps x batch {a.batch}; {a.rounds} rounds, alternating")
    print(f"{'method':<15}{'before ex/s':>13}{'after ex/s':>12}{'after / before':>16}")
    for m in a.methods.split(","):
        rates = {"before": [], "after": []}
        for _ in range(a.rounds):
            rates["before"].append(rate(before, m, a.steps, a.batch))
            rates["after"].append(rate(after, m, a.steps, a.batch))
        b, f = float(np.median(rates["before"])), float(np.median(rates["after"]))
        print(f"{m:<15}{b:>13.3f}{f:>12.3f}{f / b:>15.2f}x   (each: {rates})", flush=True)


if __name__ == "__main__":
    main()
