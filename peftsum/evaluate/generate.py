"""Batched generation of summaries through ``generate()`` with the KV cache and left padding.

Articles are sorted by length and left-padded; a soft prompt sits right after the padding
([pad … pad, P, article]) so that positions, taken from the attention mask, run 0..P-1 over the
prompt and on over the article, as in training.  Only the new tokens are decoded (the article and
template never reach ROUGE); generation stops at eos.  All methods go through ``inputs_embeds``
so that ``no_repeat_ngram_size`` constrains only the generated tokens, the same for every method.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from ..data.collate import collate, sorted_batches


@torch.no_grad()
def generate_ids(model, method, input_ids, attention_mask, cfg_eval, eos_id: int, pad_id: int,
                 use_cache: bool = True) -> list[list[int]]:
    kw = dict(max_new_tokens=cfg_eval.max_new_tokens, num_beams=cfg_eval.num_beams, do_sample=False,
              no_repeat_ngram_size=cfg_eval.no_repeat_ngram_size or None, eos_token_id=eos_id,
              pad_token_id=pad_id, use_cache=use_cache)
    if cfg_eval.num_beams > 1:
        kw["early_stopping"] = True
    # Every method generates from input embeddings (a soft prompt is prepended there), so every
    # method decodes under the same rules: with input_ids, generate() would apply
    # no_repeat_ngram_size to the article too and forbid copying any of its n-grams.
    emb, mask = method.embed(model, input_ids, attention_mask)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*")
        out = model.generate(inputs_embeds=emb, attention_mask=mask, **kw)  # returns new tokens only
    result = []
    for row in out.tolist():
        if eos_id in row:
            row = row[: row.index(eos_id)]
        result.append(row)
    return result


@torch.no_grad()
def generate_summaries(model, method, tokenizer, dataset, cfg_eval, device, autocast=None,
                       progress: bool = False) -> list[str]:
    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    batches = sorted_batches(list(dataset["prompt_len"]), cfg_eval.batch_size)
    preds: list[str | None] = [None] * len(dataset)
    ctx = autocast or contextlib.nullcontext
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc="generating", unit="batch", leave=False)
    for idx in it:
        b = collate([dataset[i] for i in idx], pad, left_pad=True, with_target=False)
        with ctx():
            rows = generate_ids(model, method, b["input_ids"].to(device), b["attention_mask"].to(device),
                                cfg_eval, eos, pad)
        for i, row in zip(idx, rows):
            preds[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
    return preds
