"""``eval.compile``: peftsum's decode loop with the decode step compiled (over the evaluation's static cache; a CUDA
graph on a GPU) against eager, GPT-2 small's shape, CNN/DailyMail-length prompts, greedy with eos forbidden (every
prompt decodes every token), measured side by side in one run after a warm-up each; the compilation's own seconds
and whether the tokens are the same.  benchmarks/gpu.py runs it too.

    python benchmarks/decode_compile.py [--device cpu] [--prompts 8] [--new-tokens 32] [--layers 12]
"""

from __future__ import annotations

import contextlib
import time

import torch
from _common import args, gpt2_small, machine, synthetic_examples


def measure(device, dtype, prompts: int, n_layer: int, new_tokens: int) -> dict:
    """``eval.compile``: seconds of decode_ids (greedy, eos banned so every step runs) eager against the decode step
    compiled (a CUDA graph on a GPU), after a warm-up each (the compiled one's is its compilation, reported), and
    whether the tokens are the same."""
    from peftsum.config import DecodingConfig, load_config
    from peftsum.evaluate.cost import synchronize
    from peftsum.evaluate.generate import decode_ids
    from peftsum.methods import build_method

    model = gpt2_small(n_layer=n_layer).to(device).eval()
    method = build_method(load_config(None, None, [("method.name", "zero-shot")]))
    ps = [torch.tensor(e["input_ids"][: e["prompt_len"]], device=device) for e in synthetic_examples(prompts)]
    dec = DecodingConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, no_repeat_ngram_size=0)
    compiled = {"width": max(map(len, ps))}
    out, seconds = {}, {}
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with autocast:
        for label, c in (("eager", None), ("compilation", compiled), ("eager", None), ("compiled", compiled)):
            synchronize(device)
            t0 = time.perf_counter()
            out[label] = decode_ids(model, method, ps, dec, 50256, 50256, compiled=c)
            synchronize(device)
            seconds[label] = time.perf_counter() - t0
    return {"prompts": prompts, "tokens": new_tokens, "eager": seconds["eager"], "compiled": seconds["compiled"],
            "compilation": seconds["compilation"] - seconds["compiled"], "same": out["eager"] == out["compiled"]}


def main():
    a = args(__doc__.splitlines()[0], device="cpu", prompts=8, new_tokens=32, layers=12)
    device = torch.device(a.device)
    print(f"machine: {machine()}")
    r = measure(device, torch.float32, a.prompts, a.layers, a.new_tokens)
    print(f"{r['prompts']} prompts x {r['tokens']} new tokens: eager {r['eager']:.2f} s, compiled {r['compiled']:.2f} s "
          f"({r['eager'] / r['compiled']:.2f}x), compilation {r['compilation']:.1f} s once; the same tokens: {r['same']}")


if __name__ == "__main__":
    main()
