"""``peftsum plan``: time a few real steps here, project the whole protocol before anything long runs.

For each method: build the model and method exactly as training does, time ``steps`` optimizer steps
(after one warm-up step) on batches of the configured size, one validation batch and one generation
batch, and project per epoch and for the whole protocol.  Assumptions are printed with the numbers.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ..config import Config
from ..data.collate import collate, seq_lengths
from ..data.tokenize import load_tokenized
from ..errors import UserError
from ..evaluate import cost as costs
from ..evaluate.generate import generate_ids
from ..methods import build_method
from ..model.loading import (
    load_model,
    load_tokenizer,
    n_positions,
    offline_gpt2_tokenizer,
    resolve_model_name,
    set_dropout,
)
from ..train.loop import micro_batch_size
from ..train.loss import SummaryLM


def _synthetic_examples(n: int, cfg: Config, rng) -> list[dict]:
    """CNN/DailyMail-like lengths: articles ~ N(780, 400) tokens cut to the budget, summaries 40-100."""
    out = []
    for _ in range(n):
        a = int(np.clip(rng.normal(780, 400), 150, cfg.data.max_source_tokens))
        s = int(rng.integers(40, min(100, cfg.data.max_target_tokens) + 1))
        ids = rng.integers(0, 50000, a + 5 + s + 1).tolist()
        out.append({"input_ids": ids, "prompt_len": a + 5})
    return out


def _examples(cfg: Config, tokenizer, positions: int, num_virtual: int, n: int, rng):
    try:
        dd, _, _ = load_tokenized(cfg.data, tokenizer, positions, num_virtual)
        ds = dd["train"]
        idx = rng.choice(len(ds), size=min(n, len(ds)), replace=False)
        ex = [ds[int(i)] for i in idx]
        lengths = seq_lengths(ds)
        return ex, float(np.mean(lengths)), "the configured data (sampled)"
    except UserError:
        ex = _synthetic_examples(n, cfg, rng)
        return ex, float(np.mean([len(e["input_ids"]) for e in ex])), "synthetic CNN/DailyMail-like lengths"


def plan(cfg: Config, methods: list[str], device: str | None, steps: int, shape: str) -> str:
    result = measure(cfg, methods, device, steps, shape)
    return render(result)


def measure(cfg: Config, methods: list[str], device: str | None, steps: int, shape: str = "real") -> dict:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if shape == "gpt2-small":
        torch.manual_seed(0)
        base = GPT2LMHeadModel(GPT2Config())
        tokenizer = offline_gpt2_tokenizer()
        model_desc = "GPT-2 small shape (12 x 768), random weights"
    else:
        name = resolve_model_name(cfg.model.name)
        try:
            base = load_model(name)
        except UserError as e:
            raise UserError(f"{e}; to plan without the weights use --shape gpt2-small") from None
        tokenizer = load_tokenizer(cfg.model.tokenizer or name)
        model_desc = cfg.model.name
    set_dropout(base, cfg.model.dropout)
    positions = n_positions(base)
    peak_flops = costs.peak_flops(costs.device_name(dev))
    rng = np.random.default_rng(cfg.train.seed)
    tc = cfg.train
    bs = tc.batch_size
    dtype = torch.bfloat16 if (tc.mixed_precision in ("bf16", "auto") and dev.type == "cuda") else None
    rows = []
    for m in methods:
        mcfg = copy.deepcopy(cfg)
        mcfg.method.name = m
        method = build_method(mcfg)
        if not method.trains:
            continue
        model = copy.deepcopy(base)
        method.tokenizer = tokenizer
        method.prepare_model(model)
        model.to(dev)
        summary_lm = SummaryLM(model, method)
        ex, mean_len, source = _examples(mcfg, tokenizer, positions, method.num_virtual_tokens,
                                         bs * tc.grad_accum * (steps + 1) + cfg.eval.batch_size, rng)
        mean_target = float(np.mean([len(e["input_ids"]) - e["prompt_len"] for e in ex]))
        params = [p for _, p in method.trainable_parameters(model)]
        opt = torch.optim.AdamW(params, lr=mcfg.learning_rate())
        ctx = (lambda: torch.autocast(dev.type, dtype=dtype)) if dtype else (lambda: torch.autocast(dev.type, enabled=False))
        costs.reset_peak_memory(dev)

        # forward passes as the loop makes them: train.micro_batch_size sequences (the head alone: whole batches)
        longest = max(len(e["input_ids"]) for e in ex) + method.num_virtual_tokens
        fwd = bs if method.cache_features else min(bs, micro_batch_size(tc, dev, model.config, longest) or bs)
        per_step = math.ceil(bs / fwd) * tc.grad_accum
        micro = [collate(ex[b + i: b + min(i + fwd, bs)], tokenizer.pad_token_id)
                 for b in range(0, bs * tc.grad_accum * (steps + 1), bs) for i in range(0, bs, fwd)]
        if method.cache_features:  # the loop trains the head on features computed once, before training
            with torch.no_grad(), ctx():
                micro = [dict(zip(("features", "targets"), summary_lm.summary_features(
                    b["input_ids"].to(dev), b["attention_mask"].to(dev), b["labels"].to(dev)))) for b in micro]
        groups = [micro[k * per_step: (k + 1) * per_step] for k in range(steps + 1)]
        _train_step(summary_lm, method, opt, params, groups[0], ctx, dev, tc.max_grad_norm)  # warm-up
        _sync(dev)
        t_start = time.perf_counter()
        for group in groups[1:]:
            _train_step(summary_lm, method, opt, params, group, ctx, dev, tc.max_grad_norm)
        _sync(dev)
        step_s = (time.perf_counter() - t_start) / steps
        # trunk forward time per example (validation, and the one-off feature cache of last-layer)
        gen_ex = ex[-cfg.eval.batch_size:]
        b = collate(gen_ex, tokenizer.pad_token_id)
        model.eval()
        _sync(dev)
        t0 = time.perf_counter()
        with torch.no_grad(), ctx():
            summary_lm(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev), labels=b["labels"].to(dev))
        _sync(dev)
        fwd_per_ex = (time.perf_counter() - t0) / len(gen_ex)
        bg = collate(gen_ex, tokenizer.pad_token_id, left_pad=True, with_target=False)

        # a batch's generation = its prefill + one decode step per further token
        probe = min(16, cfg.eval.max_new_tokens)
        gen = (model, method, bg, cfg.eval, ctx, dev, tokenizer.pad_token_id)
        prefill_s = _generation_seconds(*gen, 1)
        step_s_gen = (_generation_seconds(*gen, probe) - prefill_s) / max(probe - 1, 1) if probe > 1 else 0.0
        gen_per_batch = prefill_s + max(step_s_gen, 0.0) * (cfg.eval.max_new_tokens - 1)
        peak = costs.peak_memory(dev)

        n_train, n_val, n_test = cfg.data.train_size, cfg.data.val_size, cfg.data.test_size
        if cfg.eval.limit:
            n_test = min(n_test, cfg.eval.limit)
        steps_per_epoch = math.ceil(math.ceil(n_train / bs) / tc.grad_accum)
        total_steps = steps_per_epoch * tc.epochs
        if tc.max_steps:
            total_steps = min(total_steps, tc.max_steps)
        epochs = total_steps / steps_per_epoch
        train_s = total_steps * step_s
        if method.cache_features:
            train_s += n_train * fwd_per_ex  # the trunk runs once over the training set
        val_s = (math.ceil(epochs) + 1) * n_val * fwd_per_ex
        gen_s = math.ceil(n_test / cfg.eval.batch_size) * gen_per_batch
        test_loss_s = (n_val + n_test) * fwd_per_ex
        counts = method.param_counts(model)
        seqs = total_steps * bs * tc.grad_accum
        seq_len = mean_len + method.num_virtual_tokens
        flops = costs.train_flops(costs.flop_shape(model, method), int(seqs * seq_len), int(seqs * mean_target), seq_len,
                                  int(n_train * mean_len) if method.cache_features else 0)
        rows.append({"method": m, "step_seconds": step_s, "steps": total_steps, "epochs": epochs,
                     "train_seconds": train_s, "validation_seconds": val_s, "final_eval_seconds": test_loss_s + gen_s,
                     "total_seconds": train_s + val_s + test_loss_s + gen_s, "peak_memory_bytes": peak,
                     "train_flops": flops, "trainable": counts["trainable"],
                     "tokens_per_second": bs * tc.grad_accum * seq_len / step_s,
                     "mfu": flops / train_s / peak_flops if peak_flops and train_s else None})
        del model, summary_lm, opt
    return {"device": costs.device_name(dev), "model": model_desc, "rows": rows, "data": source if rows else "",
            "assumptions": [
                f"every method runs all {tc.epochs} epochs (early stopping can only shorten this)"
                + (f", capped at {tc.max_steps} steps" if tc.max_steps else ""),
                f"batch {bs} x accumulation {tc.grad_accum}; lengths from {source if rows else 'n/a'}",
                f"validation on all {cfg.data.val_size} examples after every epoch and before training",
                f"ROUGE generation: {cfg.eval.max_new_tokens} new tokens for every test article (no early eos), "
                f"batch {cfg.eval.batch_size}",
                "timings from a few steps after one warm-up step; peak memory is the process's (CPU: RSS)",
            ]}


def _generation_seconds(model, method, batch, cfg_eval, ctx, dev, pad_id: int, n_new: int) -> float:
    """Seconds to generate ``n_new`` tokens for every prompt of a left-padded batch (no early eos)."""
    c = copy.deepcopy(cfg_eval)
    c.max_new_tokens = n_new
    _sync(dev)
    t0 = time.perf_counter()
    with ctx():
        generate_ids(model, method, batch["input_ids"].to(dev), batch["attention_mask"].to(dev), c, 10**9, pad_id)
    _sync(dev)
    return time.perf_counter() - t0


def _sync(dev) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _train_step(summary_lm, method, opt, params, group, ctx, dev, max_norm) -> None:
    """One optimizer step as the loop takes it (cached features for a frozen trunk)."""
    method.train_mode(summary_lm.model)
    for b in group:
        with ctx():
            if "features" in b:
                nll, n = summary_lm(features=b["features"].float(), targets=b["targets"])
            else:
                nll, n = summary_lm(input_ids=b["input_ids"].to(dev), attention_mask=b["attention_mask"].to(dev),
                            labels=b["labels"].to(dev))
        (nll / max(n, 1)).backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    _sync(dev)


def _hms(s: float) -> str:
    h, rem = divmod(int(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def render(r: dict) -> str:
    lines = [f"plan on {r['device']} for {r['model']}", "",
             f"{'method':<15}{'s/step':>9}{'steps':>8}{'train':>10}{'val':>9}{'final eval':>12}{'total':>10}"
             f"{'peak mem':>11}{'train FLOPs':>13}{'tokens/s':>10}{'MFU':>7}"]
    total = 0.0
    for x in r["rows"]:
        total += x["total_seconds"]
        lines.append(f"{x['method']:<15}{x['step_seconds']:>9.3f}{x['steps']:>8}{_hms(x['train_seconds']):>10}"
                     f"{_hms(x['validation_seconds']):>9}{_hms(x['final_eval_seconds']):>12}"
                     f"{_hms(x['total_seconds']):>10}{x['peak_memory_bytes'] / 2**30:>10.2f}G"
                     f"{x['train_flops']:>13.3g}{x['tokens_per_second']:>10.0f}"
                     + (f"{x['mfu'] * 100:>6.1f}%" if x.get("mfu") is not None else f"{'–':>7}"))
    lines += ["", f"whole protocol: {_hms(total)} ({total / 3600:.2f} device-hours)", "", "assumptions:"]
    lines += [f"  - {a}" for a in r["assumptions"]]
    return "\n".join(lines)
