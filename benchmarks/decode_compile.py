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


def timed_decodes(device, dtype, prompts: int, n_layer: int, decoding, runs) -> dict[str, tuple[list, float]]:
    """decode_ids on GPT-2 small's shape (``n_layer`` blocks, random weights, zero-shot) for ``prompts`` synthetic
    CNN/DailyMail-length prompts, once per (label, keyword arguments of decode_ids) in ``runs``, in order, each timed
    between synchronisations (in ``dtype``'s autocast): {label: (tokens, seconds)}, a label run twice keeping its
    last (the first is its warm-up)."""
    from peftsum.config import load_config
    from peftsum.evaluate.cost import synchronize
    from peftsum.evaluate.generate import decode_ids
    from peftsum.methods import build_method

    model = gpt2_small(n_layer=n_layer).to(device)
    method = build_method(load_config(None, None, [("method.name", "zero-shot")]))
    ps = [torch.tensor(e["input_ids"][: e["prompt_len"]], device=device) for e in synthetic_examples(prompts)]
    done = {}
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with autocast:
        for label, kw in runs:
            synchronize(device)
            t0 = time.perf_counter()
            tokens = decode_ids(model, method, ps, decoding, 50256, 50256, **kw)
            synchronize(device)
            done[label] = (tokens, time.perf_counter() - t0)
    return done


def same_tokens(device, dtype, prompts: int, n_layer: int, decoding, runs, timed: dict) -> bool:
    """Do the two labelled ``runs`` decode the same tokens?  Where it means something: in float32.  Under bf16 or fp16
    the random weights' near-tied logits (gaps far below the half-precision rounding of two kernels that sum in
    another order) flip a greedy token somewhere in a batch with nothing wrong; ``timed`` is reused when the timed
    runs were float32 already."""
    if dtype != torch.float32:
        timed = timed_decodes(device, torch.float32, prompts, n_layer, decoding, runs)
    a, b = (timed[label][0] for label, _ in runs)
    return a == b


def measure(device, dtype, prompts: int, n_layer: int, new_tokens: int) -> dict:
    """``eval.compile``: seconds of decode_ids (greedy, eos banned so every step runs) eager against the decode step
    compiled (a CUDA graph on a GPU), after a warm-up each (the compiled one's is its compilation, reported), and
    whether the tokens are the same (:func:`same_tokens`: in float32)."""
    from peftsum.config import DecodingConfig
    from peftsum.evaluate.generate import CompiledDecoding

    dec = DecodingConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, no_repeat_ngram_size=0)
    compiled = {"compiled": CompiledDecoding(width=0)}  # one batch, the same prompts every call: its own width
    r = timed_decodes(device, dtype, prompts, n_layer, dec,
                      [("eager", {}), ("compilation", compiled), ("eager", {}), ("compiled", compiled)])
    same = same_tokens(device, dtype, prompts, n_layer, dec,
                       [("eager", {}), ("compiled", {"compiled": CompiledDecoding(width=0)})], r)
    return {"prompts": prompts, "tokens": new_tokens, "eager": r["eager"][1], "compiled": r["compiled"][1],
            "compilation": r["compilation"][1] - r["compiled"][1], "same": same}


def main():
    a = args(__doc__.splitlines()[0], device="cpu", prompts=8, new_tokens=32, layers=12)
    device = torch.device(a.device)
    print(f"machine: {machine()}")
    r = measure(device, torch.float32, a.prompts, a.layers, a.new_tokens)
    print(f"{r['prompts']} prompts x {r['tokens']} new tokens: eager {r['eager']:.2f} s, compiled {r['compiled']:.2f} s "
          f"({r['eager'] / r['compiled']:.2f}x), compilation {r['compilation']:.1f} s once; the same tokens: {r['same']}")


if __name__ == "__main__":
    main()
