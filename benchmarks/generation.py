"""Generation for ROUGE: peftsum's batched generation (length-sorted, left-padded, KV cache) against
one-article-at-a-time generate(), on the same articles, greedy, the same number of new tokens.

    python benchmarks/generation.py [--articles 16] [--new-tokens 32] [--batch 16]
"""

from __future__ import annotations

import time

import torch
from _common import args, as_dataset, gpt2_small, machine, peftsum_config, synthetic_examples


def main():
    from peftsum.evaluate.generate import generate_ids
    from peftsum.methods import build_method

    a = args(__doc__.splitlines()[0], articles=16, new_tokens=32, batch=16, threads=0)
    if a.threads:
        torch.set_num_threads(a.threads)
    model = gpt2_small()
    cfg = peftsum_config("zero-shot", a.batch, 1, **{"eval.max_new_tokens": a.new_tokens,
                                                     "eval.no_repeat_ngram_size": 0, "eval.batch_size": a.batch})
    method = build_method(cfg)
    method.prepare(model)
    ds = as_dataset(synthetic_examples(a.articles, seed=1))
    never = 10**9  # no eos: every article generates exactly new_tokens tokens on both sides
    print(f"machine: {machine()}")
    with torch.no_grad():
        t0 = time.perf_counter()
        for ex in ds:
            ids = torch.tensor([ex["input_ids"][: ex["prompt_len"]]])
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new_tokens,
                           do_sample=False, eos_token_id=never, pad_token_id=50256)
        single = time.perf_counter() - t0
    from peftsum.data.collate import collate, sorted_batches

    t0 = time.perf_counter()
    n_tokens = 0
    for idx in sorted_batches(list(ds["prompt_len"]), a.batch):
        b = collate([ds[i] for i in idx], 50256, left_pad=True, with_target=False)
        rows = generate_ids(model, method, b["input_ids"], b["attention_mask"], cfg.eval, never, 50256)
        n_tokens += sum(len(r) for r in rows)
    batched = time.perf_counter() - t0
    total = a.articles * a.new_tokens
    assert n_tokens == total
    # the split: prefill (the article) costs the same compute either way; batching saves decode steps
    one = peftsum_config("zero-shot", a.batch, 1, **{"eval.max_new_tokens": 1, "eval.no_repeat_ngram_size": 0})
    with torch.no_grad():
        t0 = time.perf_counter()
        for ex in ds:
            ids = torch.tensor([ex["input_ids"][: ex["prompt_len"]]])
            generate_ids(model, method, ids, torch.ones_like(ids), one.eval, never, 50256)
        prefill_single = time.perf_counter() - t0
    t0 = time.perf_counter()
    for idx in sorted_batches(list(ds["prompt_len"]), a.batch):
        b = collate([ds[i] for i in idx], 50256, left_pad=True, with_target=False)
        generate_ids(model, method, b["input_ids"], b["attention_mask"], one.eval, never, 50256)
    prefill_batched = time.perf_counter() - t0
    print(f"{a.articles} articles x {a.new_tokens} new tokens, GPT-2 small shape")
    print(f"one at a time : {single:7.1f}s  {total / single:8.1f} tokens/s")
    print(f"batched ({a.batch:>3}) : {batched:7.1f}s  {total / batched:8.1f} tokens/s")
    print(f"ratio: {single / batched:.2f}x")
    print(f"prefill (1 new token): one at a time {prefill_single:.1f}s, batched {prefill_batched:.1f}s")
    ds_, db_ = single - prefill_single, batched - prefill_batched
    print(f"decode ({a.new_tokens - 1} more tokens): one at a time {ds_:.1f}s, batched {db_:.1f}s, "
          f"ratio {ds_ / max(db_, 1e-9):.2f}x")


if __name__ == "__main__":
    main()
