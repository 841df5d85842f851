"""Generation for ROUGE: peftsum's batched greedy generation against one-article-at-a-time generate(),
on the same articles, greedy, the same number of new tokens (no eos: every article generates all of them).

Also timed, for what each part buys: transformers' generate() on the same left-padded batches (peftsum's
previous path), and peftsum's prefill alone (max_new_tokens = 1).

    python benchmarks/generation.py [--articles 16] [--new-tokens 128] [--batch 16] [--skip-hf-batched 0]
"""

from __future__ import annotations

import time

import torch
from _common import args, as_dataset, gpt2_small, machine, peftsum_config, synthetic_examples


def main():
    from peftsum.data.collate import collate, sorted_batches
    from peftsum.evaluate.generate import generate_ids, hf_generate_ids
    from peftsum.methods import build_method

    a = args(__doc__.splitlines()[0], articles=16, new_tokens=128, batch=16, threads=0, skip_hf_batched=0)
    if a.threads:
        torch.set_num_threads(a.threads)
    model = gpt2_small()
    cfg = peftsum_config("zero-shot", a.batch, 1, **{"eval.max_new_tokens": a.new_tokens,
                                                     "eval.no_repeat_ngram_size": 0, "eval.batch_size": a.batch})
    one = peftsum_config("zero-shot", a.batch, 1, **{"eval.max_new_tokens": 1, "eval.no_repeat_ngram_size": 0})
    method = build_method(cfg)
    method.prepare_model(model)
    ds = as_dataset(synthetic_examples(a.articles, seed=1))
    never = 10**9  # no eos
    batches = [collate([ds[i] for i in idx], 50256, left_pad=True, with_target=False)
               for idx in sorted_batches(list(ds["prompt_len"]), a.batch)]
    print(f"machine: {machine()}")

    def one_at_a_time():
        with torch.no_grad():
            for ex in ds:
                ids = torch.tensor([ex["input_ids"][: ex["prompt_len"]]])
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new_tokens,
                               do_sample=False, eos_token_id=never, pad_token_id=50256)

    def batched(fn, c):
        n = 0
        for b in batches:
            n += sum(len(r) for r in fn(model, method, b["input_ids"], b["attention_mask"], c.eval, never, 50256))
        return n

    t = {}
    t0 = time.perf_counter()
    one_at_a_time()
    t["single"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_tokens = batched(generate_ids, cfg)
    t["peftsum"] = time.perf_counter() - t0
    assert n_tokens == a.articles * a.new_tokens
    if not a.skip_hf_batched:
        t0 = time.perf_counter()
        batched(hf_generate_ids, cfg)
        t["hf_batched"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched(generate_ids, one)
    t["prefill"] = time.perf_counter() - t0

    total = a.articles * a.new_tokens
    print(f"{a.articles} articles x {a.new_tokens} new tokens, GPT-2 small shape, batch {a.batch}")
    print(f"one at a time, generate()      : {t['single']:7.1f}s  {total / t['single']:8.1f} tokens/s")
    print(f"peftsum batched                : {t['peftsum']:7.1f}s  {total / t['peftsum']:8.1f} tokens/s")
    if "hf_batched" in t:
        print(f"generate() on the same batches : {t['hf_batched']:7.1f}s  {total / t['hf_batched']:8.1f} tokens/s")
    print(f"ratio, peftsum against one at a time: {t['single'] / t['peftsum']:.2f}x")
    if "hf_batched" in t:
        print(f"ratio, peftsum against generate() batched: {t['hf_batched'] / t['peftsum']:.2f}x")
    dec = t["peftsum"] - t["prefill"]
    print(f"peftsum prefill (1 new token) {t['prefill']:.1f}s; decode ({a.new_tokens - 1} more tokens) {dec:.1f}s, "
          f"{dec / max(a.new_tokens - 1, 1) * 1000:.0f} ms per batched step")


if __name__ == "__main__":
    main()
