"""``peftsum summarize``: one article in, its summary out, with a saved run or a baseline."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from .errors import UserError


def read_article(file: str) -> str:
    if file == "-":
        text = sys.stdin.read()
    else:
        path = Path(file)
        if not path.is_file():
            raise UserError(f"article file not found: {file}")
        text = path.read_text(encoding="utf-8", errors="replace")
    from .data.prepare import clean_text

    text = clean_text(text, keep_lines=True)
    if not text:
        raise UserError("the article is empty")
    return text


def summarize_text(cfg, model, tokenizer, method, article: str, device) -> str:
    from .data.tokenize import Template, make_budget
    from .evaluate.generate import generate_ids
    from .model.loading import n_positions

    t = Template.parse(cfg.data.template)
    budget = make_budget(tokenizer, cfg.data, n_positions(model), method.num_virtual_tokens)
    ids = (tokenizer(t.before)["input_ids"] if t.before else []) + tokenizer(article)["input_ids"][: budget.source] \
        + tokenizer(t.between)["input_ids"]
    x = torch.tensor([ids], device=device)
    rows = generate_ids(model, method, x, torch.ones_like(x), cfg.eval, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return tokenizer.decode(rows[0], skip_special_tokens=True).strip()


def summarize_cli(args) -> str:
    from .config import load_config
    from .experiment import accelerator_for, load_trained
    from .methods.baselines import lead3

    article = read_article(args.file)
    if args.run == "lead-3":
        return lead3(article)
    if args.run == "zero-shot":
        from .methods import build_method
        from .model.loading import load_model, load_tokenizer, resolve_model_name

        overrides = [("method.name", "zero-shot")]
        if args.model:
            overrides.append(("model.name", args.model))
        cfg = load_config(args.preset or ("demo" if not args.model else None), None, overrides)
        name = resolve_model_name(cfg.model.name)
        tokenizer = load_tokenizer(cfg.model.tokenizer or name)
        model = load_model(name)
        method = build_method(cfg)
        method.prepare(model)
        device = accelerator_for(cfg).device
        model.to(device)
        return summarize_text(cfg, model, tokenizer, method, article, device)
    run = Path(args.run)
    if not run.is_dir():
        raise UserError(f"{args.run!r} is neither a run directory nor one of zero-shot / lead-3")
    cfg, model, tokenizer, method, _, _, accelerator = load_trained(run)
    if not method.uses_model:
        return lead3(article)
    return summarize_text(cfg, model, tokenizer, method, article, accelerator.device)
