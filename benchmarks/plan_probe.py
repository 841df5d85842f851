"""``peftsum plan``'s generation probe on a CPU: timed on few prompts and scaled (the prefill by prompt tokens, a
decode step from three short probes), against timing the whole batch, side by side in one run, for LoRA and
prompt tuning on GPT-2 small's shape with random weights and articles of 600-900 tokens.

    python benchmarks/plan_probe.py [--prompts 16] [--new-tokens 8] [--beams 4]
"""

from __future__ import annotations

import time

import numpy as np
import torch
from _common import args, gpt2_small, machine


def main():
    from peftsum.config import load_config
    from peftsum.experiment import accelerator_for
    from peftsum.methods import build_method
    from peftsum.model.loading import offline_gpt2_tokenizer
    from peftsum.report.plan import _generation_seconds

    a = args(__doc__.splitlines()[0], prompts=16, new_tokens=8, beams=4)
    print(machine())
    tok = offline_gpt2_tokenizer()
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 50000, int(rng.integers(600, 900))).tolist() for _ in range(a.prompts)]
    for name in ("lora", "prompt-tuning"):
        cfg = load_config("assignment", None, [("method.name", name), ("eval.decoding.num_beams", a.beams)])
        accelerator = accelerator_for(cfg, "cpu")
        model = gpt2_small()
        method = build_method(cfg, tok)
        method.prepare_model(model)
        model.eval()
        timed = {}
        with torch.no_grad():
            for few in (True, False):
                t0 = time.perf_counter()
                timed[few] = _generation_seconds(model, method, tok, prompts, method.decoding(), a.prompts,
                                                 accelerator, a.new_tokens, few=few)
                timed[few] += (time.perf_counter() - t0,)
        (pf, sf, tf), (pw, sw, tw) = timed[True], timed[False]
        batch = lambda p, s: p + 139 * s  # noqa: E731  (a 140-token batch, the assignment's max_new_tokens)
        print(f"{name}: few prompts {pf:.2f} s prefill, {sf:.3f} s/step (probed in {tf:.0f} s); whole batch "
              f"{pw:.2f} s, {sw:.3f} s/step ({tw:.0f} s); few / whole: prefill {pf / pw:.2f}x, step {sf / sw:.2f}x, "
              f"140-token batch {batch(pf, sf) / batch(pw, sw):.2f}x")


if __name__ == "__main__":
    main()
