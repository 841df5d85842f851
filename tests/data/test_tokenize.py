"""Tokenization and the token budget (data/tokenize.py): labels, soft-prompt positions, the article's share of
the context, the cache, huge articles and prompts over the positions."""


import csv

import pytest

from peftsum.cli import main
from peftsum.config import load_config
from peftsum.data.demo import generate
from peftsum.data.tokenize import load_tokenized, make_budget
from peftsum.errors import UserError
from tests.conftest import train_args
from tests.data.conftest import data_cfg


def test_huge_article_is_truncated_without_blowing_up(tmp_path, tokenizer):

    from peftsum.config import load_config
    from peftsum.data.tokenize import load_tokenized

    rows = generate(12, seed=3)
    rows[0]["article"] = "The council met again today to discuss the bridge. " * 10_000  # about 100,000 tokens
    for name, part in (("train", rows[:8]), ("validation", rows[8:10]), ("test", rows[10:])):
        with open(tmp_path / f"{name}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["id", "article", "highlights"])
            w.writeheader()
            w.writerows(part)
    cfg = load_config("demo", overrides=[("data.source", str(tmp_path)), ("data.max_source_tokens", 512)])
    dd, _, budget = load_tokenized(cfg.data, tokenizer, 1024, 20, 20)
    big = next(x for x in dd["train"] if x["article_tokens"] > 90_000)
    assert big["source_truncated"] and big["prompt_len"] <= 512 + budget.separator
    assert 20 + len(big["input_ids"]) <= 1024


def test_prompt_tokens_over_the_positions_are_a_usage_error(tiny_model_dir, demo_dir, tmp_path, capsys):
    args = train_args(tiny_model_dir, demo_dir, "prompt-tuning", tmp_path / "r",
                    **{"method.prompt_tuning.num_prompts": 1000})
    assert main(args) == 2
    assert "token budget does not fit" in capsys.readouterr().err
    assert not (tmp_path / "r" / "results.json").exists()


def test_labels_are_exactly_summary_plus_eos(tokenizer, demo_dir):
    c = data_cfg(demo_dir, **{"data.train_size": 20, "data.val_size": 5, "data.test_size": 5})
    dd, report, budget = load_tokenized(c, tokenizer, 1024, 0)
    from peftsum.data.collate import collate

    for ex in dd["train"].select(range(10)):
        b = collate([ex], tokenizer.pad_token_id)
        lab = b["labels"][0]
        text = tokenizer.decode(lab[lab != -100])
        assert text == " " + ex["highlights"] + "<|endoftext|>"
        prompt = tokenizer.decode(ex["input_ids"][: ex["prompt_len"]])
        assert prompt == ex["article"] + "\nTL;DR:"


def test_budget_counts_soft_prompt_tokens(tokenizer, demo_dir):
    c = data_cfg(demo_dir, **{"data.max_source_tokens": 900, "data.max_target_tokens": 100})
    b = make_budget(tokenizer, c, 1024, num_virtual=20)
    assert b.num_virtual + b.source + b.separator + b.target + 1 == 1024
    c = data_cfg(demo_dir, **{"data.max_source_tokens": 60, "data.max_target_tokens": 10,
                             "data.train_size": 8, "data.val_size": 2, "data.test_size": 2})
    dd, _, b = load_tokenized(c, tokenizer, 1024, 20)
    for ex in dd["train"]:
        assert 20 + len(ex["input_ids"]) <= 20 + 60 + b.separator + 10 + 1
        assert ex["source_truncated"]
    with pytest.raises(UserError, match="token budget does not fit"):
        make_budget(tokenizer, data_cfg(demo_dir, **{"data.max_target_tokens": 900}), 1024, num_virtual=200)


def test_the_article_gets_the_whole_context_and_every_method_the_same_tokens(tokenizer, demo_dir):
    """max_source_tokens null: the article gets the positions the reserved soft tokens, the template and the
    summary (the longer of target + eos and the generation) leave, the same for a method with soft tokens and
    one without; a method with more soft tokens than the reserve is refused."""

    cfg = load_config("assignment", None, [])
    assert cfg.data.max_source_tokens is None and cfg.virtual_token_reserve() == 20
    assert cfg.generation_tokens() == 140  # fairseq's BART setting outlasts the zero-shot paper's 100
    lora = make_budget(tokenizer, cfg.data, 1024, 0, cfg.virtual_token_reserve(), cfg.generation_tokens())
    prompt = make_budget(tokenizer, cfg.data, 1024, 20, cfg.virtual_token_reserve(), cfg.generation_tokens())
    assert lora.separator == len(tokenizer("\nTL;DR:")["input_ids"]) == 5
    assert lora.source == prompt.source == 1024 - 20 - 5 - max(128 + 1, 140) == 859
    assert lora.summary == 140
    cap = load_config("assignment", None, [("data.max_source_tokens", 512)])
    assert make_budget(tokenizer, cap.data, 1024, 0, 20, 140).source == 512  # a number caps it
    tuned = load_config("assignment", None, [("sweep.num_prompts", [10, 50])])
    assert tuned.virtual_token_reserve() == 50  # a sweep over soft tokens reserves the largest
    with pytest.raises(UserError, match="virtual_token_reserve 30"):
        make_budget(tokenizer, cfg.data, 1024, 30, cfg.virtual_token_reserve(), cfg.generation_tokens())


def test_tokenization_is_cached(tokenizer, demo_dir):
    c = data_cfg(demo_dir, **{"data.train_size": 12, "data.val_size": 3, "data.test_size": 3, "data.seed": 99})
    a, ra, _ = load_tokenized(c, tokenizer, 1024, 0)
    b, rb, _ = load_tokenized(c, tokenizer, 1024, 0)
    assert ra["cache"]["hit"] is False and rb["cache"]["hit"] is True
    assert a["train"]["input_ids"] == b["train"]["input_ids"]
    _, rc, _ = load_tokenized(data_cfg(demo_dir, **{"data.train_size": 12, "data.val_size": 3, "data.test_size": 3,
                                                   "data.seed": 99, "data.max_target_tokens": 20}), tokenizer, 1024, 0)
    assert rc["cache"]["hit"] is False  # another length budget is another key
