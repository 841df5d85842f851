"""Generation for ROUGE: peftsum's batched loop against transformers' generate() on the same articles, the same
decoding and the same number of new tokens (eos forbidden: every article generates all of them), measured side
by side in one run.

Greedy (``--beams 1``): also one article at a time with generate() (what a plain user would write), and
peftsum's prefill alone (max_new_tokens = 1).  Beam search (``--beams 4 --length-penalty 2``): generate() on the
same left-padded batches, and one article at a time; the tokens of every article are compared.

    python benchmarks/generation.py [--articles 16] [--new-tokens 128] [--batch 16] [--beams 1] [--length-penalty 1]
"""

from __future__ import annotations

import time

import torch
from _common import args, as_dataset, gpt2_small, machine, peftsum_config, synthetic_examples


def main():
    from peftsum.data.collate import collate, sorted_batches
    from peftsum.evaluate.generate import generate_ids, hf_generate_ids
    from peftsum.methods import build_method

    a = args(__doc__.splitlines()[0], articles=16, new_tokens=128, batch=16, beams=1, length_penalty=1.0, threads=0,
             skip_hf_batched=0, skip_single=0)
    if a.threads:
        torch.set_num_threads(a.threads)
    model = gpt2_small()
    never = 50256  # eos, forbidden for every new token below
    dec = {"eval.decoding.max_new_tokens": a.new_tokens, "eval.decoding.min_new_tokens": a.new_tokens,
           "eval.decoding.no_repeat_ngram_size": 3 if a.beams > 1 else 0, "eval.decoding.num_beams": a.beams,
           "eval.decoding.length_penalty": a.length_penalty, "eval.batch_size": a.batch}
    cfg = peftsum_config("zero-shot", a.batch, 1, **dec, **{"method.zero_shot.protocol": "decoding"})
    one = peftsum_config("zero-shot", a.batch, 1, **{**dec, "eval.decoding.max_new_tokens": 1,
                                                     "eval.decoding.min_new_tokens": 1},
                         **{"method.zero_shot.protocol": "decoding"})
    method = build_method(cfg)
    method.prepare_model(model)
    ds = as_dataset(synthetic_examples(a.articles, seed=1))
    batches = [collate([ds[i] for i in idx], 50256, left_pad=True, with_target=False)
               for idx in sorted_batches(list(ds["prompt_len"]), a.batch)]
    print(f"machine: {machine()}")

    def batched(fn, c):
        rows = []
        for b in batches:
            rows += fn(model, method, b["input_ids"], b["attention_mask"], c.eval.decoding, never, 50256)
        return rows

    def single():
        rows = []
        for b in batches:
            for ids, mask in zip(b["input_ids"], b["attention_mask"]):
                row = ids[mask.bool()][None]
                rows += hf_generate_ids(model, method, row, torch.ones_like(row), cfg.eval.decoding, never, 50256)
        return rows

    # warm-up (thread pools, allocator, first-touch pages): one short generation on each path, not timed
    b0 = batches[0]
    generate_ids(model, method, b0["input_ids"][:2], b0["attention_mask"][:2], one.eval.decoding, never, 50256)
    hf_generate_ids(model, method, b0["input_ids"][:2], b0["attention_mask"][:2], one.eval.decoding, never, 50256)
    t, out = {}, {}
    for name, fn in (("peftsum", lambda: batched(generate_ids, cfg)),
                     ("hf_batched", None if a.skip_hf_batched else lambda: batched(hf_generate_ids, cfg)),
                     ("single", None if a.skip_single else single),
                     ("prefill", lambda: batched(generate_ids, one))):
        if fn is None:
            continue
        t0 = time.perf_counter()
        out[name] = fn()
        t[name] = time.perf_counter() - t0
    assert sum(len(r) for r in out["peftsum"]) == a.articles * a.new_tokens

    how = "greedy" if a.beams == 1 else f"beam search ({a.beams} beams, length penalty {a.length_penalty:g})"
    print(f"{a.articles} articles x {a.new_tokens} new tokens, {how}, GPT-2 small shape, batch {a.batch}")
    labels = {"peftsum": "peftsum batched", "hf_batched": "generate() on the same batches",
              "single": "generate(), one at a time"}
    for k, label in labels.items():
        if k in t:
            print(f"{label:32}: {t[k]:7.1f}s  {a.articles / t[k]:7.3f} articles/s")
    for k in ("hf_batched", "single"):
        if k in t:
            same = sum(x == y for x, y in zip(out["peftsum"], out[k]))
            print(f"ratio, peftsum against {labels[k]}: {t[k] / t['peftsum']:.2f}x articles/s "
                  f"(identical tokens for {same}/{a.articles} articles)")
    dec_s = t["peftsum"] - t["prefill"]
    print(f"peftsum prefill (1 new token) {t['prefill']:.1f}s; decode ({a.new_tokens - 1} more tokens) {dec_s:.1f}s, "
          f"{dec_s / max(a.new_tokens - 1, 1) * 1000:.0f} ms per batched step")


if __name__ == "__main__":
    main()
