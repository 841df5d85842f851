"""Generation of summaries: new tokens only, stopping at eos, the same rules for every method.

Greedy decoding (the default, ``eval.num_beams: 1``) runs peftsum's own loop, read top to bottom in
:func:`greedy_ids`:

1. **Prefill** each article without padding, in small groups of equal-length prompts, so attention
   takes its causal kernel and no mask; a soft prompt is prepended by ``method.embed`` exactly as in
   training (positions 0..P-1 over the prompt, on over the article).
2. **Gather** every article's keys and values into one preallocated cache (transformers'
   ``StaticCache``), left-padded: slot ``s`` holds the same cache index for every row, padding slots
   are masked out, and each row's position ids continue from its own length.
3. **Decode** one batched step per new token; finished rows are fed padding and ignored.

Measured on the 2-core CPU (docs/performance.md §3): batched prefill of 16 × 517 tokens was slower
than one article at a time (13.4 s against 11.3 s; groups of 4: 10.1 s), and the dynamic cache's
``torch.cat`` of every layer's keys and values on every step was the largest cost of a batched decode
step, which the preallocated cache removes.

Beam search (``num_beams > 1``) and ``use_cache=False`` go through ``generate()``.  Either way every
method decodes from input embeddings, so ``no_repeat_ngram_size`` constrains the generated tokens
only (with ``input_ids`` ``generate()`` would apply it to the article too and forbid copying any of
its n-grams); a test checks the two paths give the same tokens.
"""

from __future__ import annotations

import contextlib
import time
import warnings

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import StaticCache
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

from ..data.collate import collate, sorted_batches
from ..model.arch import cache_kwarg
from ..utils import distributed_state
from .cost import synchronize

# tokens per prefill forward on CPU: larger batches ran slower there (cache effects; see above)
CPU_PREFILL_TOKENS = 2048


def _rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    return [ids[m.bool()] for ids, m in zip(input_ids, attention_mask)]


def _cut_at_eos(rows: list[list[int]], eos_id: int) -> list[list[int]]:
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _prefill_groups(lengths: list[int], max_tokens: int | None) -> list[list[int]]:
    """Consecutive indices of equal-length prompts, at most ``max_tokens`` tokens per group."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g and lengths[g[0]] == lengths[i] and (max_tokens is None or (len(g) + 1) * lengths[i] <= max_tokens):
            g.append(i)
        else:
            groups.append([i])
    return groups


@torch.no_grad()
def greedy_ids(model, method, prompts: list[torch.Tensor], max_new_tokens: int, eos_id: int, pad_id: int,
               no_repeat_ngram_size: int = 0, prefill_tokens: int | None = None,
               timings: dict | None = None) -> list[list[int]]:
    """Greedy continuations of ``prompts`` (1-D token tensors of any lengths), eos excluded.

    ``timings``: a dict that receives the seconds of the prefill (steps 1-2), of the decode (step 3) and the
    number of decode forwards (``peftsum plan`` times both phases in one call)."""
    device = prompts[0].device
    t0 = _clock(device, timings)
    if prefill_tokens is None and device.type == "cpu":
        prefill_tokens = CPU_PREFILL_TOKENS
    B = len(prompts)
    cache_kw = cache_kwarg(model)
    # 1. prefill, unpadded
    lens = [0] * B
    first = [None] * B
    kv: list = [None] * B  # per row: [(k, v) per layer], each [heads, len, head_dim]
    for group in _prefill_groups([len(p) for p in prompts], prefill_tokens):
        ids = torch.stack([prompts[i] for i in group])
        emb, _ = method.embed(model, ids, torch.ones_like(ids))
        out = model(inputs_embeds=emb, use_cache=True, logits_to_keep=1)
        layers = _returned_cache(out).layers
        for j, i in enumerate(group):
            lens[i] = emb.shape[1]
            first[i] = out.logits[j, -1].float()
            kv[i] = [(layer.keys[j], layer.values[j]) for layer in layers]
    # 2. gather into one left-padded preallocated cache
    width = max(lens)
    cache = StaticCache(config=model.config, max_cache_len=width + max_new_tokens)
    for layer in range(len(kv[0])):
        k0, v0 = kv[0][layer]
        k = k0.new_zeros((B, k0.shape[0], width, k0.shape[-1]))
        v = v0.new_zeros((B, v0.shape[0], width, v0.shape[-1]))
        for i in range(B):
            k[i, :, width - lens[i]:], v[i, :, width - lens[i]:] = kv[i][layer]
        cache.update(k, v, layer)
    del kv
    mask = torch.zeros(B, width + max_new_tokens, dtype=torch.long, device=device)
    for i, n in enumerate(lens):
        mask[i, width - n:] = 1  # slots past the current step are excluded by causality
    position = torch.tensor(lens, device=device)
    t1 = _clock(device, timings)
    decode_steps = 0
    # 3. decode
    no_repeat = NoRepeatNGramLogitsProcessor(no_repeat_ngram_size) if no_repeat_ngram_size else None
    generated = torch.empty(B, 0, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    logits = torch.stack(first)
    for step in range(max_new_tokens):
        if no_repeat is not None:
            logits = no_repeat(generated, logits)
        token = logits.argmax(-1).masked_fill(done, pad_id)
        generated = torch.cat([generated, token[:, None]], 1)
        done |= token == eos_id
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position[:, None] + step,
                    use_cache=True, **{cache_kw: cache})
        logits = out.logits[:, -1].float()
        decode_steps += 1
    if timings is not None:
        timings.update(prefill=t1 - t0, decode=_clock(device, timings) - t1, decode_steps=decode_steps)
    return _cut_at_eos(generated.tolist(), eos_id)


def _clock(device, timings: dict | None) -> float:
    """A timestamp after the device's queued work (only when timing is asked for)."""
    if timings is None:
        return 0.0
    synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def generate_ids(model, method, input_ids, attention_mask, cfg_eval, eos_id: int, pad_id: int,
                 use_cache: bool = True) -> list[list[int]]:
    """New tokens for a left-padded batch of prompts (eos and everything after it removed)."""
    if not method.fast_generation:  # prefix tuning: its own greedy loop (see methods/peft_tuner.py)
        return method.generate_ids(input_ids, attention_mask, cfg_eval, eos_id, pad_id)
    if cfg_eval.num_beams == 1 and use_cache:
        return greedy_ids(model, method, _rows(input_ids, attention_mask), cfg_eval.max_new_tokens, eos_id,
                          pad_id, cfg_eval.no_repeat_ngram_size)
    return hf_generate_ids(model, method, input_ids, attention_mask, cfg_eval, eos_id, pad_id, use_cache)


@torch.no_grad()
def hf_generate_ids(model, method, input_ids, attention_mask, cfg_eval, eos_id: int, pad_id: int,
                    use_cache: bool = True) -> list[list[int]]:
    """The same through transformers' ``generate()`` (beam search, the no-cache check)."""
    kw = dict(max_new_tokens=cfg_eval.max_new_tokens, num_beams=cfg_eval.num_beams, do_sample=False,
              no_repeat_ngram_size=cfg_eval.no_repeat_ngram_size or None, eos_token_id=eos_id,
              pad_token_id=pad_id, use_cache=use_cache)
    if cfg_eval.num_beams > 1:
        kw["early_stopping"] = True
    emb, mask = method.embed(model, input_ids, attention_mask)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*")
        out = model.generate(inputs_embeds=emb, attention_mask=mask, **kw)  # returns new tokens only
    return _cut_at_eos(out.tolist(), eos_id)


@torch.no_grad()
def generate_summaries(model, method, tokenizer, prompts: list[list[int]], cfg_eval, device, autocast=None,
                       progress: bool = False) -> list[tuple[str, int]]:
    """The one generation path (evaluation and ``summarize``): each prompt's summary and how many tokens
    were generated for it (eos excluded), in the order of ``prompts``.

    The model is put in eval mode (no dropout, LoRA's included).  Prompts are batched longest first
    (``eval.batch_size``); under several processes each takes every N-th batch and the results are
    gathered, so every process returns the whole list and the batches are the ones one process runs."""
    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    dist = distributed_state()
    batches = sorted_batches([len(p) for p in prompts], cfg_eval.batch_size)
    mine = batches[dist.process_index::dist.num_processes]
    ctx = autocast or contextlib.nullcontext
    done: dict[int, tuple[str, int]] = {}
    for idx in tqdm(mine, desc="generating", unit="batch", leave=False, disable=not (progress and dist.is_main_process)):
        padded = collate([{"input_ids": prompts[i], "prompt_len": len(prompts[i])} for i in idx], pad, left_pad=True,
                    with_target=False)
        with ctx():
            rows = generate_ids(model, method, padded["input_ids"].to(device), padded["attention_mask"].to(device),
                                cfg_eval, eos, pad)
        for i, row in zip(idx, rows):
            done[i] = (tokenizer.decode(row, skip_special_tokens=True).strip(), len(row))
    if dist.num_processes > 1:
        for part in gather_object([done]):
            done.update(part)
    return [done[i] for i in range(len(prompts))]
