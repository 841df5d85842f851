"""Generation of summaries: new tokens only, stopping at eos, the same rules for every method
(``eval.decoding``: greedy, top-k sampling or beam search; a minimum and maximum of new tokens; no repeated
n-grams among the new tokens; optionally only the first N generated sentences kept).

Every strategy runs peftsum's own batched loop, read top to bottom in :func:`decode_ids`:

1. **Prefill** each article without padding, in small groups of equal-length prompts, so attention
   takes its causal kernel and no mask; a soft prompt is prepended by ``method.embed`` exactly as in
   training (positions 0..P-1 over the prompt, on over the article).
2. **Gather** every article's keys and values into one preallocated cache (transformers'
   ``StaticCache``), left-padded: slot ``s`` holds the same cache index for every row, padding slots
   are masked out, and each row's position ids continue from its own length.  With beam search each
   article fills ``num_beams`` rows.
3. **Decode** one batched step per new token: greedy / sampling in :func:`_greedy_or_sample`, beam search
   in :func:`_beam_search`.  The beam search is transformers' (``GenerationMixin._beam_search``, 5.x: the
   top ``2 * num_beams`` continuations, finished hypotheses scored ``sum log p / length ** length_penalty``
   with the eos counted in the length, its early-stopping rules); a test holds it to ``generate()`` token
   for token.  Beams of one article share the article: when beams are reordered, only the generated
   part of the cache moves (``generate()`` copies the whole cache every step).

Measured on the 2-core CPU (docs/performance.md §3): batched prefill of 16 × 517 tokens was slower
than one article at a time (13.4 s against 11.3 s; groups of 4: 10.1 s), and the dynamic cache's
``torch.cat`` of every layer's keys and values on every step was the largest cost of a batched decode
step, which the preallocated cache removes.

Every method decodes from input embeddings, so ``no_repeat_ngram_size`` constrains the generated tokens
only (with ``input_ids`` ``generate()`` would apply it to the article too and forbid copying any of
its n-grams).  ``hf_generate_ids`` runs the same decoding through ``generate()``, for the tests and the
benchmark.  Sampling draws each article's tokens from its own generator, seeded by ``decoding.seed`` and
the article's tokens, so a summary does not depend on the batch or the process it was generated in.

``eval.compile`` compiles the decode step (:func:`compiled_step`): one new token per row over a static cache,
the same shapes at every step and, with the cache's width fixed for a whole evaluation (the longest prompt's) and
the cache itself reused from batch to batch, at every batch of the same size.  On a GPU the step also runs as a CUDA
graph (``mode="reduce-overhead"``, transformers' own choice for its compiled static-cache generation), which removes
the launch of each of a step's kernels.  The prefill stays eager (a shape per prompt length).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
import warnings
from typing import NamedTuple

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import StaticCache
from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

from ..data.collate import collate, sorted_batches
from ..data.text import first_sentences
from ..data.tokenize import encode
from ..methods.base import OwnTrunk
from ..model.arch import cache_kwarg
from ..utils import distributed_state, in_halves
from .cost import synchronize

# tokens per prefill forward on CPU: larger batches ran slower there (cache effects; see above)
CPU_PREFILL_TOKENS = 2048
NEG = -1.0e9  # transformers' beam search marks excluded candidates with this score
GENERATION_ADVICE = ("lower eval.batch_size, shorten data.max_source_tokens or eval.decoding.max_new_tokens, fewer "
                     "eval.decoding.num_beams, or quantize the base (model.quantize nf4)")


def _rows(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
    return [ids[m.bool()] for ids, m in zip(input_ids, attention_mask)]


def _cut_at_eos(rows: list[list[int]], eos_id: int) -> list[list[int]]:
    return [row[: row.index(eos_id)] if eos_id in row else row for row in rows]


def _returned_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _prefill_groups(lengths: list[int], max_tokens: int | None, mixed: bool = False) -> list[list[int]]:
    """Indices in length order, grouped: prompts of equal length (``mixed``: of any length, padded to the group's
    longest), at most ``max_tokens`` (padded) tokens per group (None: no limit)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g and (mixed or lengths[g[0]] == lengths[i]) and (max_tokens is None or (len(g) + 1) * lengths[i] <= max_tokens):
            g.append(i)
        else:
            groups.append([i])
    return groups


def prompt_seed(prompt: list[int], seed: int) -> int:
    """A sampling seed for one article: ``seed`` and the article's tokens (not its place in a batch)."""
    blob = f"{seed}|" + ",".join(map(str, prompt))
    return int.from_bytes(hashlib.blake2b(blob.encode(), digest_size=8).digest(), "little") & (2**63 - 1)


class _Decoder:
    """Steps 1-2 for one batch: the prefilled, left-padded static cache (``beams`` rows per article), each row's
    first logits, and :meth:`forward` for one decode step of every row."""

    def __init__(self, model, method, prompts: list[torch.Tensor], max_new_tokens: int, beams: int,
                 prefill_tokens: int | None, mixed_prefill: bool | None = None,
                 compiled: CompiledDecoding | None = None):
        device = prompts[0].device
        if prefill_tokens is None and device.type == "cpu":
            prefill_tokens = CPU_PREFILL_TOKENS
        if mixed_prefill is None:  # a GPU prefills prompts of any lengths together; the CPU, equal lengths
            mixed_prefill = device.type != "cpu"
        B = len(prompts)
        self.model, self.cache_kw = model, cache_kwarg(model)
        self.step_fn = compiled_step(model) if compiled is not None else model
        lens = [0] * B
        first = [None] * B
        kv: list = [None] * B  # per row: [(k, v) per layer], each [heads, len, head_dim]
        for group in _prefill_groups([len(p) for p in prompts], prefill_tokens, mixed_prefill):
            # right-padded: causal attention keeps every real token from the padding after it, and positions
            # count from 0 in every row, so each row's keys, values and last logits are its own prefill's
            n = [len(prompts[i]) for i in group]
            ids = prompts[group[0]].new_zeros((len(group), max(n)))
            for j, i in enumerate(group):
                ids[j, : n[j]] = prompts[i]
            emb, _ = method.embed(model, ids, torch.ones_like(ids))
            virtual = emb.shape[1] - ids.shape[1]  # soft-prompt rows in front
            last = sorted({virtual + k - 1 for k in n})
            out = model(inputs_embeds=emb, use_cache=True, logits_to_keep=torch.tensor(last, device=device))
            layers = _returned_cache(out).layers
            for j, i in enumerate(group):
                lens[i] = virtual + n[j]
                first[i] = out.logits[j, last.index(lens[i] - 1)].float()
                kv[i] = [(layer.keys[j][:, : lens[i]], layer.values[j][:, : lens[i]]) for layer in layers]
        rows = B * beams
        # compiled: every batch of an evaluation gets the same width (its longest prompt) and the same cache object
        self.width = width = max(lens) if compiled is None else max(*lens, compiled.width)
        self.cache = (StaticCache(config=model.config, max_cache_len=width + max_new_tokens) if compiled is None
                      else compiled.cache(model, rows, width + max_new_tokens))
        for layer in range(len(kv[0])):
            k0, v0 = kv[0][layer]
            k = k0.new_empty((rows, k0.shape[0], width, k0.shape[-1]))  # every slot is written below
            v = v0.new_empty((rows, v0.shape[0], width, v0.shape[-1]))
            for i in range(B):
                r, pad = slice(i * beams, (i + 1) * beams), width - lens[i]
                k[r, :, :pad], v[r, :, :pad] = 0, 0  # masked padding, zero as a fresh cache would hold
                k[r, :, pad:], v[r, :, pad:] = kv[i][layer]
            self.cache.update(k, v, layer)
        del kv
        self.mask = torch.zeros(rows, width + max_new_tokens, dtype=torch.long, device=device)
        for i, n in enumerate(lens):
            self.mask[i * beams:(i + 1) * beams, width - n:] = 1  # slots past the current step: causality
        self.position = torch.tensor(lens, device=device).repeat_interleave(beams)
        self.first_logits = torch.stack(first).repeat_interleave(beams, 0)

    def forward(self, tokens: torch.Tensor, step: int) -> torch.Tensor:
        """Logits after feeding every row its ``step``-th new token (slot ``width + step`` of the cache)."""
        out = self.step_fn(input_ids=tokens[:, None], attention_mask=self.mask,
                           position_ids=self.position[:, None] + step, use_cache=True, **{self.cache_kw: self.cache})
        # a copy: a CUDA graph's output is overwritten by its next replay
        return out.logits[:, -1].float().clone() if self.step_fn is not self.model else out.logits[:, -1].float()

    def reorder_generated(self, rows: torch.Tensor, step: int) -> None:
        """Beam search: row r takes the generated keys/values (slots ``width .. width + step``) of row ``rows[r]``.
        Rows of one article hold the same article, so its part of the cache never moves."""
        if step == 0:
            return
        span = slice(self.width, self.width + step)
        for layer in self.cache.layers:
            layer.keys[:, :, span] = layer.keys[rows, :, span]
            layer.values[:, :, span] = layer.values[rows, :, span]


def compiled_step(model):
    """``model``'s call compiled for the decode step (built once per model, kept on it as transformers keeps its
    own ``_compiled_call``): static shapes; on CUDA, CUDA graphs."""
    fn = model.__dict__.get("_peftsum_decode_step")
    if fn is None:
        cuda = next(model.parameters()).device.type == "cuda"
        fn = torch.compile(model.__call__, dynamic=False, mode="reduce-overhead" if cuda else None)
        model.__dict__["_peftsum_decode_step"] = fn  # a function, not a submodule: the state dict is unchanged
    return fn


@dataclasses.dataclass
class CompiledDecoding:
    """``eval.compile``'s state for one evaluation: the cache width every batch gets (at least the longest prompt
    with its soft tokens, so that batches of one size have the same shapes) and its static caches by (rows,
    slots), reused from batch to batch."""

    width: int
    caches: dict[tuple[int, int], StaticCache] = dataclasses.field(default_factory=dict)

    def cache(self, model, rows: int, length: int) -> StaticCache:
        """The evaluation's static cache of ``rows`` x ``length`` slots, zeroed, so that the compiled step (and its
        CUDA graph) reads the same tensors at every batch of that size."""
        cache = self.caches.get((rows, length))
        if cache is None:
            cache = self.caches[(rows, length)] = StaticCache(config=model.config, max_cache_len=length)
        else:
            cache.reset()
        return cache


def _clock(device, timings: dict | None) -> float:
    """A timestamp after the device's queued work (only when timing is asked for)."""
    if timings is None:
        return 0.0
    synchronize(device)
    return time.perf_counter()


@torch.no_grad()
def decode_ids(model, method, prompts: list[torch.Tensor], decoding, eos_id: int, pad_id: int,
               seeds: list[int] | None = None, prefill_tokens: int | None = None,
               timings: dict | None = None, mixed_prefill: bool | None = None,
               compiled: CompiledDecoding | None = None) -> list[list[int]]:
    """New tokens for ``prompts`` (1-D token tensors of any lengths) under ``decoding`` (``eval.decoding``),
    eos and what follows it removed.  ``seeds``: one per prompt, for sampling (:func:`prompt_seed`).

    ``timings``: a dict that receives the seconds of the prefill (steps 1-2), of the decode (step 3) and the
    number of decode forwards (``peftsum plan`` times both phases in one call).  ``mixed_prefill``: prefill prompts
    of different lengths in one right-padded forward (default: on a GPU; the CPU groups equal lengths only).
    ``compiled``: decode with :func:`compiled_step`, in the evaluation's :class:`CompiledDecoding`."""
    device = prompts[0].device
    t0 = _clock(device, timings)
    beams = decoding.num_beams
    dec = _Decoder(model, method, prompts, decoding.max_new_tokens, beams, prefill_tokens, mixed_prefill, compiled)
    t1 = _clock(device, timings)
    if beams > 1:
        rows, steps = _beam_search(dec, len(prompts), decoding, eos_id, pad_id)
    else:
        rows, steps = _greedy_or_sample(dec, decoding, eos_id, pad_id, seeds)
    if timings is not None:
        timings.update(prefill=t1 - t0, decode=_clock(device, timings) - t1, decode_steps=steps)
    return _cut_at_eos(rows, eos_id)


def _ban_eos(scores: torch.Tensor, step: int, decoding, eos_id: int) -> torch.Tensor:
    """transformers' MinNewTokensLengthLogitsProcessor: no eos before ``min_new_tokens`` new tokens."""
    if step < decoding.min_new_tokens:
        scores[:, eos_id] = -float("inf")
    return scores


def _greedy_or_sample(dec: _Decoder, decoding, eos_id: int, pad_id: int, seeds) -> tuple[list[list[int]], int]:
    logits = dec.first_logits
    B, device = logits.shape[0], logits.device
    no_repeat = NoRepeatNGramLogitsProcessor(decoding.no_repeat_ngram_size) if decoding.no_repeat_ngram_size else None
    generators = None
    if decoding.do_sample:
        if seeds is None:
            raise ValueError("sampling needs a seed per prompt")
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    generated = torch.empty(B, 0, dtype=torch.long, device=device)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    steps = 0
    for step in range(decoding.max_new_tokens):
        if no_repeat is not None:
            logits = no_repeat(generated, logits)
        logits = _ban_eos(logits, step, decoding, eos_id)
        if generators is None:
            token = logits.argmax(-1)
        else:
            token = _sample(logits, decoding.top_k, generators)
        token = token.masked_fill(done, pad_id)
        generated = torch.cat([generated, token[:, None]], 1)
        done |= token == eos_id
        if bool(done.all()) or step == decoding.max_new_tokens - 1:
            break
        logits = dec.forward(token, step)
        steps += 1
    return generated.tolist(), steps


def _sample(logits: torch.Tensor, top_k: int, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row from softmax(logits) restricted to its ``top_k`` most likely tokens (transformers'
    TopKLogitsWarper), each row drawn with its own generator."""
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -float("inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])


def _beam_search(dec: _Decoder, B: int, decoding, eos_id: int, pad_id: int) -> tuple[list[list[int]], int]:
    """transformers' beam search (``GenerationMixin._beam_search``, no prompt tokens: the prompt is embeddings),
    over the rows of :class:`_Decoder` (``num_beams`` per article).  Returns each article's best finished
    hypothesis."""
    K, N, lp, early = decoding.num_beams, decoding.max_new_tokens, decoding.length_penalty, decoding.early_stopping
    logits = dec.first_logits
    V, device = logits.shape[-1], logits.device
    no_repeat = NoRepeatNGramLogitsProcessor(decoding.no_repeat_ngram_size) if decoding.no_repeat_ngram_size else None
    keep = 2 * K  # one eos token: the top 2K continuations leave K that have not finished
    top_k_mask = torch.arange(keep, device=device) < K
    offsets = torch.arange(B, device=device)[:, None] * K
    running = torch.full((B, K, N), pad_id, dtype=torch.long, device=device)
    finished = running.clone()
    running_scores = torch.zeros(B, K, device=device)
    running_scores[:, 1:] = NEG  # every beam starts from the same prompt: only the first one's tokens count
    finished_scores = torch.full((B, K), NEG, device=device)
    is_finished = torch.zeros(B, K, dtype=torch.bool, device=device)
    can_improve = torch.ones(B, 1, dtype=torch.bool, device=device)
    steps = 0
    for cur in range(N):
        log_probs = torch.log_softmax(logits, dim=-1)
        if no_repeat is not None:
            log_probs = no_repeat(running[:, :, :cur].reshape(B * K, cur), log_probs)
        log_probs = _ban_eos(log_probs, cur, decoding, eos_id)
        scores = (log_probs.view(B, K, V) + running_scores[:, :, None]).view(B, K * V)
        # c. the top 2K continuations over all beams of an article
        top_scores, top_idx = torch.topk(scores, keep)
        origin, token = top_idx // V, top_idx % V
        top_seqs = torch.take_along_dim(running, origin[:, :, None], dim=1)
        top_seqs[:, :, cur] = token
        # d. which of them finish here (eos, or the last new token)
        hits = (token == eos_id) | (cur + 1 >= N)
        # e. the K best that go on
        go_on = top_scores + hits.float() * NEG
        nxt = torch.topk(go_on, K).indices
        running = torch.take_along_dim(top_seqs, nxt[:, :, None], dim=1)
        running_scores = torch.take_along_dim(go_on, nxt, dim=1)
        running_origin = torch.take_along_dim(origin, nxt, dim=1)
        # f. finished hypotheses: the best K so far, scored with the length penalty
        just = hits & top_k_mask[None, :]
        s = top_scores / ((cur + 1) ** lp)
        s = s + (is_finished.all(-1, keepdim=True) & early).float() * NEG
        s = s + (~can_improve).float() * NEG
        s = s + (~just).float() * NEG
        merged_scores = torch.cat([finished_scores, s], 1)
        best = torch.topk(merged_scores, K).indices
        finished = torch.take_along_dim(torch.cat([finished, top_seqs], 1), best[:, :, None], dim=1)
        finished_scores = torch.take_along_dim(merged_scores, best, dim=1)
        is_finished = torch.take_along_dim(torch.cat([is_finished, just], 1), best, dim=1)
        # g. can a running beam still beat the worst finished one?  is anything left to do?
        best_running = running_scores[:, :1] / ((cur + 1) ** lp)
        worst = torch.where(is_finished, finished_scores.min(1, keepdim=True).values, NEG)
        can_improve = can_improve & (best_running > worst).any(-1, keepdim=True)
        open_beams = not (bool(is_finished.all()) and early is True)
        if not (bool(can_improve.any()) and open_beams and not bool(hits.all())):
            break
        dec.reorder_generated((running_origin + offsets).flatten(), cur)
        logits = dec.forward(running[:, :, cur].flatten(), cur)
        steps += 1
    return finished[:, 0].tolist(), steps


@torch.no_grad()
def generate_ids(model, method, input_ids, attention_mask, decoding, eos_id: int, pad_id: int,
                 seeds: list[int] | None = None, compiled: CompiledDecoding | None = None) -> list[list[int]]:
    """New tokens for a left-padded batch of prompts (eos and everything after it removed)."""
    if isinstance(method, OwnTrunk):  # prefix tuning: its own greedy loop (see methods/peft_tuner.py)
        return method.generate_ids(input_ids, attention_mask, decoding, eos_id, pad_id)
    return decode_ids(model, method, _rows(input_ids, attention_mask), decoding, eos_id, pad_id, seeds,
                      compiled=compiled)


@torch.no_grad()
def generation_settings(decoding, eos_id: int, pad_id: int) -> dict:
    """``eval.decoding`` as transformers' ``GenerationConfig`` takes it: what ``generate()`` needs to decode as this
    loop does from a prompt's embeddings (no-repeat then covers the new tokens only).  What it cannot say: sampling
    seeded per article (``generate()`` draws from torch's global generator) and the ``max_sentences`` cut."""
    kw = dict(max_new_tokens=decoding.max_new_tokens, num_beams=decoding.num_beams, do_sample=decoding.do_sample,
              no_repeat_ngram_size=decoding.no_repeat_ngram_size or None, eos_token_id=eos_id,
              pad_token_id=pad_id, min_new_tokens=decoding.min_new_tokens or None)
    if decoding.num_beams > 1:
        kw.update(early_stopping=decoding.early_stopping, length_penalty=decoding.length_penalty)
    if decoding.do_sample:
        kw.update(top_k=decoding.top_k, top_p=None, temperature=None)
    return kw


def hf_generate_ids(model, method, input_ids, attention_mask, decoding, eos_id: int, pad_id: int,
                    use_cache: bool = True) -> list[list[int]]:
    """The same decoding through transformers' ``generate()`` (the reference of the tests and the benchmark;
    sampling draws from torch's global generator there)."""
    emb, mask = method.embed(model, input_ids, attention_mask)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*no_repeat_ngram_size.*")
        out = model.generate(inputs_embeds=emb, attention_mask=mask, use_cache=use_cache,
                             **generation_settings(decoding, eos_id, pad_id))  # returns new tokens only
    return _cut_at_eos(out.tolist(), eos_id)


def describe_decoding(decoding) -> str:
    """One line naming a decoding, for results and reports."""
    if decoding.num_beams > 1:
        how = (f"beam search ({decoding.num_beams} beams, length penalty {decoding.length_penalty:g}, "
               f"{'early stopping' if decoding.early_stopping else 'no early stopping'})")
    elif decoding.do_sample:
        how = f"top-k sampling (k = {decoding.top_k or 'all'}, seed {decoding.seed}, one generator per article)"
    else:
        how = "greedy"
    span = (f"{decoding.min_new_tokens}-{decoding.max_new_tokens} new tokens" if decoding.min_new_tokens
            else f"at most {decoding.max_new_tokens} new tokens")
    parts = [how, span]
    if decoding.no_repeat_ngram_size:
        parts.append(f"no repeated {decoding.no_repeat_ngram_size}-gram among the new tokens")
    if decoding.max_sentences:
        parts.append(f"the first {decoding.max_sentences} generated sentences kept")
    return ", ".join(parts)


class Summary(NamedTuple):
    text: str
    tokens: int | None  # the summary's length in tokens (what is scored: after a max_sentences cut)
    at_limit: bool  # the generation ran to max_new_tokens without an eos


def finish(tokenizer, ids: list[int], decoding) -> Summary:
    """A summary from its new tokens: the text (the first ``max_sentences`` sentences where that is set) and its
    length in tokens."""
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    at_limit = len(ids) >= decoding.max_new_tokens
    if not decoding.max_sentences:
        return Summary(text, len(ids), at_limit)
    text = first_sentences(text, decoding.max_sentences)
    return Summary(text, len(encode(tokenizer, text)) if text else 0, at_limit)


@torch.no_grad()
def generate_summaries(model, method, tokenizer, prompts: list[list[int]], decoding, batch_size: int, device,
                       autocast=None, progress: bool = False, compile: bool = False) -> list[Summary]:
    """The one generation path (evaluation, ``summarize``, ROUGE-based selection): each prompt's summary (its text,
    its length in tokens, eos excluded, and whether it ran to the limit), in the order of ``prompts``.

    The model is put in eval mode (no dropout, LoRA's included).  Prompts are batched longest first
    (``batch_size``); under several processes each takes every N-th batch and the results are gathered,
    so every process returns the whole list and the batches are the ones one process runs.

    ``compile`` (``eval.compile``): the decode steps run compiled (see the module's docstring); the same tokens."""
    model.eval()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    dist = distributed_state()
    batches = sorted_batches([len(p) for p in prompts], batch_size)
    mine = batches[dist.process_index::dist.num_processes]
    ctx = autocast or contextlib.nullcontext
    done: dict[int, Summary] = {}
    compiled = CompiledDecoding(max(map(len, prompts), default=0) + method.num_virtual_tokens) if compile else None
    def generate(idx: list[int]) -> list[list[int]]:
        padded = collate([{"input_ids": prompts[i], "prompt_len": len(prompts[i])} for i in idx], pad, left_pad=True,
                         with_target=False)
        seeds = [prompt_seed(prompts[i], decoding.seed) for i in idx] if decoding.do_sample else None
        with ctx():
            return generate_ids(model, method, padded["input_ids"].to(device), padded["attention_mask"].to(device),
                                decoding, eos, pad, seeds, compiled)

    for idx in tqdm(mine, desc="generating", unit="batch", leave=False, disable=not (progress and dist.is_main_process)):
        # out of device memory, the batch in halves: each article is prefilled alone and seeded by its own tokens,
        # so its summary does not depend on its batch
        rows = in_halves(generate, idx, "generating summaries", GENERATION_ADVICE)
        for i, row in zip(idx, rows):
            done[i] = finish(tokenizer, row, decoding)
    if dist.num_processes > 1:
        for part in gather_object([done]):
            done.update(part)
    return [done[i] for i in range(len(prompts))]
