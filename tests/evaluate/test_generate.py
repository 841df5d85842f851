"""Generation (evaluate/generate.py): the batched decoding loop against transformers' generate(), cache and
batching equalities, seeded top-k sampling, the GPT-2 paper's zero-shot protocol, sentence-cut summaries."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from peftsum.config import GPT2_PAPER_DECODING, DecodingConfig, load_config
from peftsum.evaluate.generate import decode_ids, describe_decoding, prompt_seed
from peftsum.methods import build_method
from tests.conftest import method_cfg, prepared_for_decoding


def test_zero_shot_follows_the_gpt2_paper_unless_told_otherwise():
    cfg = load_config("assignment", None, [("method.name", "zero-shot")])
    paper = build_method(cfg).decoding()
    assert (paper.do_sample, paper.top_k, paper.max_new_tokens, paper.max_sentences, paper.num_beams) == \
        (True, 2, 100, 3, 1)
    assert "top-k sampling (k = 2" in describe_decoding(paper) and "first 3 generated sentences" in \
        describe_decoding(paper)
    greedy = build_method(load_config("assignment", None, [("method.name", "zero-shot"),
                                                           ("method.zero_shot.protocol", "decoding")])).decoding()
    assert greedy == cfg.eval.decoding
    # the assignment preset decodes every trained method as fairseq's BART CNN/DailyMail setting
    lora = build_method(load_config("assignment", None, [("method.name", "lora")])).decoding()
    assert (lora.num_beams, lora.length_penalty, lora.min_new_tokens, lora.max_new_tokens,
            lora.no_repeat_ngram_size) == (4, 2.0, 55, 140, 3)


def test_top_k_sampling_is_seeded_per_article_and_keeps_the_top_k():
    """Each article's tokens come from its own generator (seed + its tokens): the same whatever batch it is
    in; with k = 1 sampling is greedy; every sampled token is among the row's top 2."""
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=500, initializer_range=0.3,
                                       eos_token_id=499, bos_token_id=499)).eval()
    m = build_method(load_config(None, None, [("method.name", "zero-shot")]))
    m.prepare_model(model)
    prompts = [torch.randint(0, 499, (n,)) for n in (7, 5, 9)]
    dec = dataclasses.replace(GPT2_PAPER_DECODING, max_new_tokens=15, seed=3)
    seeds = [prompt_seed(p.tolist(), 3) for p in prompts]
    together = decode_ids(model, m, prompts, dec, 499, 0, seeds)
    alone = [decode_ids(model, m, [p], dec, 499, 0, [s])[0] for p, s in zip(prompts, seeds)]
    assert together == alone
    other = decode_ids(model, m, prompts, dataclasses.replace(dec, seed=4), 499, 0,
                       [prompt_seed(p.tolist(), 4) for p in prompts])
    assert other != together  # the seed matters
    greedy = decode_ids(model, m, prompts, DecodingConfig(max_new_tokens=15, no_repeat_ngram_size=0), 499, 0)
    k1 = decode_ids(model, m, prompts, dataclasses.replace(dec, top_k=1), 499, 0, seeds)
    assert k1 == greedy
    with torch.no_grad():  # every sampled token is one of the two most likely after its prefix
        for p, row in zip(prompts, together):
            for j, tok in enumerate(row):
                logits = model(torch.cat([p, torch.tensor(row[:j], dtype=torch.long)])[None]).logits[0, -1]
                assert tok in torch.topk(logits, 2).indices.tolist()


def test_a_sentence_cut_summary_counts_the_tokens_it_keeps(tokenizer):
    """With max_sentences the summary's length is that of the kept sentences (what ROUGE scores), while
    'ran to the limit' still describes the generation."""
    from peftsum.evaluate.generate import finish

    ids = tokenizer("One fact. Two facts. Three facts. Four facts and more")["input_ids"]
    dec = dataclasses.replace(GPT2_PAPER_DECODING, max_new_tokens=len(ids))
    s = finish(tokenizer, ids, dec)
    assert s.text == "One fact.\nTwo facts.\nThree facts."
    assert s.tokens == len(tokenizer(s.text)["input_ids"]) < len(ids) and s.at_limit
    plain = finish(tokenizer, ids[:4], DecodingConfig(max_new_tokens=10))
    assert plain == ("One fact. Two", 4, False)


def test_generation_cache_and_batching_equalities():
    """Soft prompt + generate(): cache on == cache off; a left-padded batch == one article at a time
    (the bugs of peft#2123 and peft#1391). A random model with a wide init gives varied tokens."""
    from peftsum.evaluate.generate import generate_ids, hf_generate_ids

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, initializer_range=0.3,
                                       eos_token_id=999, bos_token_id=999))
    cfg = method_cfg("prompt-tuning", **{"eval.decoding.max_new_tokens": 10, "eval.decoding.no_repeat_ngram_size": 0,
                                      "method.prompt_tuning.init": "random", "method.prompt_tuning.num_prompts": 5})
    m = build_method(cfg)
    m.prepare_model(model)
    model.eval()
    prompts = [torch.randint(0, 999, (n,)) for n in (9, 4, 6)]
    singles = []
    for p in prompts:
        ids = p[None]
        a = hf_generate_ids(model, m, ids, torch.ones_like(ids), cfg.eval.decoding, 999, 0, use_cache=True)
        b = hf_generate_ids(model, m, ids, torch.ones_like(ids), cfg.eval.decoding, 999, 0, use_cache=False)
        assert a == b == generate_ids(model, m, ids, torch.ones_like(ids), cfg.eval.decoding, 999, 0)
        singles.append(a[0])
    assert len({tuple(s) for s in singles}) == 3  # the outputs are not trivially identical
    T = max(len(p) for p in prompts)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):], mask[i, T - len(p):] = p, 1
    assert generate_ids(model, m, ids, mask, cfg.eval.decoding, 999, 0) == singles


DECODINGS = {
    "greedy": dict(num_beams=1, no_repeat_ngram_size=2),
    "greedy-min": dict(num_beams=1, no_repeat_ngram_size=2, min_new_tokens=6),
    "beam4-lp2-min": dict(num_beams=4, length_penalty=2.0, min_new_tokens=5, no_repeat_ngram_size=2),
    "beam3-lp05-late": dict(num_beams=3, length_penalty=0.5, early_stopping=False, no_repeat_ngram_size=0),
}


@pytest.mark.parametrize("decoding", list(DECODINGS))
@pytest.mark.parametrize("method", ["zero-shot", "prompt-tuning", "lora", "last-layer", "full"])
def test_decoding_loop_equals_generate(method, decoding):
    """peftsum's batched loop (unpadded prefill, or right-padded prompts of every length in one forward as on a GPU;
    one left-padded static cache, batched decode; beam search with
    only the generated part of the cache reordered) gives the tokens transformers' generate() gives one
    article at a time: greedy and beam search, with length penalty, min_new_tokens, no_repeat_ngram_size and
    both early-stopping rules, with rows of different lengths and rows that stop at eos while others go on."""
    from peftsum.config import DecodingConfig
    from peftsum.evaluate.generate import decode_ids, hf_generate_ids

    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, initializer_range=0.3,
                                       eos_token_id=999, bos_token_id=999))
    m = prepared_for_decoding(model, method_cfg(method, **{"method.prompt_tuning.init": "random",
                                                           "method.prompt_tuning.num_prompts": 5}))
    prompts = [torch.randint(0, 999, (n,)) for n in (9, 4, 6, 4, 11)]
    dec = DecodingConfig(max_new_tokens=12, **DECODINGS[decoding])
    free = decode_ids(model, m, prompts, DecodingConfig(max_new_tokens=12, no_repeat_ngram_size=2), 999, 0,
                      prefill_tokens=8)
    eos = free[1][7]  # a token row 1 emits eighth under greedy: as eos, rows stop at different steps
    fast = decode_ids(model, m, prompts, dec, eos, 0, prefill_tokens=8)
    slow = [hf_generate_ids(model, m, p[None], torch.ones(1, len(p), dtype=torch.long), dec, eos, 0)[0]
            for p in prompts]
    assert fast == slow
    # as a GPU prefills: the five lengths in one right-padded forward (each row's keys, values, first logits its own)
    assert decode_ids(model, m, prompts, dec, eos, 0, mixed_prefill=True) == slow
    assert min(len(r) for r in fast) >= dec.min_new_tokens
    if dec.length_penalty < 1 or dec.num_beams == 1:  # (a length penalty of 2 favours running to the limit)
        assert len({len(r) for r in fast}) > 1  # some rows ended at eos before others
    assert len({tuple(r) for r in fast}) == len(prompts)


@pytest.mark.slow
@pytest.mark.parametrize("method,beams", [("prompt-tuning", 1), ("lora", 3)])
def test_compiled_decode_gives_the_eager_tokens_with_one_cache_per_batch_size(method, beams):
    """``eval.compile``: the decode step compiled over a static cache of one width for the whole evaluation gives the
    eager loop's tokens (greedy with a soft prompt in front; beam search with the generated part reordered in place
    between compiled steps), batch after batch; batches of one size share one cache object (the compiled step, and on
    a GPU its CUDA graph, reads the same tensors), another size gets its own."""
    from peftsum.evaluate.generate import CompiledDecoding, compiled_step

    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, initializer_range=0.3,
                                       eos_token_id=999, bos_token_id=999))
    m = prepared_for_decoding(model, method_cfg(method, **{"method.prompt_tuning.init": "random",
                                                           "method.prompt_tuning.num_prompts": 5}))
    keys = set(model.state_dict())
    batches = [[torch.randint(0, 999, (n,)) for n in ns] for ns in ((9, 4, 6), (11, 3, 7), (5, 8))]
    dec = DecodingConfig(max_new_tokens=12, num_beams=beams, no_repeat_ngram_size=2 if beams == 1 else 0)
    compiled = CompiledDecoding(11 + m.num_virtual_tokens)
    caches = []
    for ps in batches:
        eager = decode_ids(model, m, ps, dec, 999, 0)
        assert decode_ids(model, m, ps, dec, 999, 0, compiled=compiled) == eager
        assert len({tuple(r) for r in eager}) == len(ps)  # varied tokens: the comparison means something
        caches.append({k: id(v) for k, v in compiled.caches.items()})
    rows = len(batches[0]) * beams
    length = 11 + m.num_virtual_tokens + dec.max_new_tokens
    assert caches[0] == caches[1] == {(rows, length): caches[0][(rows, length)]}
    assert len(caches[2]) == 2  # the smaller last batch: a cache of its own
    assert compiled_step(model) is compiled_step(model)  # compiled once per model
    assert set(model.state_dict()) == keys  # kept beside the model, not registered in it
