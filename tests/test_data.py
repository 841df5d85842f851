import csv
import json

import pytest

from peftsum.config import load_config
from peftsum.data.demo import generate
from peftsum.data.prepare import prepare_splits
from peftsum.data.sources import load_raw
from peftsum.data.tokenize import load_tokenized, make_budget
from peftsum.errors import UserError

TRICKY = [
    {"id": "a1", "article": 'He said, "Hello, world."\nThen left —  café ünïcode 東京.', "highlights": "Greeting given.\nHe left."},
    {"id": "a2", "article": "  Spaces   inside\tline.  \n\n\nNext para.  ", "highlights": "  Spaced  out. "},
    {"id": "a3", "article": "   ", "highlights": "Empty article."},
    {"id": "a4", "article": "Has no summary.", "highlights": " \n "},
]


def write_csv(path, rows, fields=("id", "article", "highlights")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)


def cfg_for(source, **kw):
    ov = [("data.source", str(source)), ("data.train_size", 1000), ("data.val_size", 1000), ("data.test_size", 1000)]
    return load_config("demo", overrides=ov + list(kw.items())).data


def kaggle_dir(tmp_path, train, val, test, ext="csv"):
    for name, rows in (("train", train), ("validation", val), ("test", test)):
        if ext == "csv":
            write_csv(tmp_path / f"{name}.csv", rows)
        elif ext == "jsonl":
            (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            import pandas as pd

            pd.DataFrame(rows).to_parquet(tmp_path / f"{name}.parquet")
    return tmp_path


def test_csv_with_newlines_quotes_commas_unicode_and_cleaning_counts(tmp_path):
    clean = {"id": "a5", "article": "A clean article.", "highlights": "Clean."}
    d = kaggle_dir(tmp_path, [*TRICKY, clean], TRICKY[:2], TRICKY[:1])
    dd, report = prepare_splits(load_raw(cfg_for(d)), cfg_for(d))
    # test keeps a1; validation loses a1 (leaked from test); train loses a1, a2 (leaked) and a3, a4 (empty)
    assert report["train"] == {"rows": 5, "empty_article": 1, "empty_summary": 1, "non_utf8_rows": 0,
                               "leaked": 2, "kept": 1}
    assert report["validation"]["leaked"] == 1 and report["test"]["kept"] == 1
    assert dd["train"]["id"] == ["a5"]
    art = dd["test"][0]["article"]
    assert art == 'He said, "Hello, world."\nThen left — café ünïcode 東京.'
    assert dd["test"][0]["highlights"] == "Greeting given.\nHe left."  # newline between sentences kept
    assert dd["validation"][0]["article"] == "Spaces inside line.\nNext para."


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_jsonl_and_parquet_directories(tmp_path, ext):
    rows = generate(30, seed=5)
    d = kaggle_dir(tmp_path, rows[:20], rows[20:25], rows[25:], ext=ext)
    dd, report = prepare_splits(load_raw(cfg_for(d)), cfg_for(d))
    assert [len(dd[s]) for s in ("train", "validation", "test")] == [20, 5, 5]


def test_a_split_emptied_by_leakage_is_an_error(tmp_path):
    rows = generate(4, seed=8)
    d = kaggle_dir(tmp_path, rows[:2], rows[2:3], rows[:2] + rows[3:])  # every train row is also in test
    with pytest.raises(UserError, match="the train split has no examples left"):
        prepare_splits(load_raw(cfg_for(d)), cfg_for(d))


def test_single_file_with_column_mapping(tmp_path):
    rows = [{"doc": r["article"], "summ": r["highlights"]} for r in generate(50, seed=3)]
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = cfg_for(f, **{"data.text_column": "doc", "data.summary_column": "summ", "data.train_size": 30,
                      "data.val_size": 10, "data.test_size": 10})
    dd, _ = prepare_splits(load_raw(c), c)
    assert [len(dd[s]) for s in ("train", "validation", "test")] == [30, 10, 10]
    ids = set(dd["train"]["article"]) & set(dd["test"]["article"])
    assert not ids


def test_missing_column_names_the_columns_found_and_the_flag(tmp_path):
    write_csv(tmp_path / "x.csv", [{"id": 1, "text": "a", "sum": "b"}], fields=("id", "text", "sum"))
    with pytest.raises(UserError) as e:
        load_raw(cfg_for(tmp_path / "x.csv"))
    msg = str(e.value)
    assert "no column 'article'" in msg and "id, text, sum" in msg and "--data.text_column" in msg


def test_hub_dataset_through_a_local_copy(tmp_path):
    """The real hub code path (load_dataset(repo, "3.0.0")) on a local copy laid out like the hub repo."""
    import pandas as pd

    repo = tmp_path / "cnn_dailymail"
    (repo / "3.0.0").mkdir(parents=True)
    rows = generate(24, seed=9)
    for split, part in (("train", rows[:12]), ("validation", rows[12:18]), ("test", rows[18:])):
        pd.DataFrame(part).to_parquet(repo / "3.0.0" / f"{split}-00000-of-00001.parquet")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: 3.0.0\n  data_files:\n  - split: train\n    path: 3.0.0/train-*\n"
        "  - split: validation\n    path: 3.0.0/validation-*\n  - split: test\n    path: 3.0.0/test-*\n---\n")
    dd = load_raw(cfg_for(repo))
    assert {s: len(dd[s]) for s in dd} == {"train": 12, "validation": 6, "test": 6}
    assert dd["test"][0]["article"] == rows[18]["article"]


def test_subset_is_seeded_and_warns_when_too_big(tmp_path, caplog):
    rows = generate(60, seed=1)
    d = kaggle_dir(tmp_path, rows[:40], rows[40:50], rows[50:])
    c = cfg_for(d, **{"data.train_size": 10, "data.val_size": 5, "data.test_size": 50})
    a, _ = prepare_splits(load_raw(c), c)
    b, _ = prepare_splits(load_raw(c), c)
    assert a["train"]["id"] == b["train"]["id"] and len(a["train"]) == 10
    assert len(a["test"]) == 10 and "only 10 are available" in caplog.text
    c2 = cfg_for(d, **{"data.train_size": 10, "data.seed": 7})
    assert prepare_splits(load_raw(c2), c2)[0]["train"]["id"] != a["train"]["id"]


def test_leakage_by_id_and_by_normalised_article(tmp_path):
    rows = generate(12, seed=2)
    dup = dict(rows[0], id="other-id", article=rows[0]["article"].upper() + "  ")  # same text, other id
    same_id = dict(rows[1], article="A different article entirely.")
    d = kaggle_dir(tmp_path, rows[4:10] + [dup, same_id], rows[2:4] + [dict(rows[0], id="v0")], rows[:2])
    _, report = prepare_splits(load_raw(cfg_for(d)), cfg_for(d))
    assert report["validation"]["leaked"] == 1 and report["train"]["leaked"] == 2


def test_labels_are_exactly_summary_plus_eos(tokenizer, demo_dir):
    c = cfg_for(demo_dir, **{"data.train_size": 20, "data.val_size": 5, "data.test_size": 5})
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
    c = cfg_for(demo_dir, **{"data.max_source_tokens": 900, "data.max_target_tokens": 100})
    b = make_budget(tokenizer, c, 1024, num_virtual=20)
    assert b.num_virtual + b.source + b.separator + b.target + 1 == 1024
    c = cfg_for(demo_dir, **{"data.max_source_tokens": 60, "data.max_target_tokens": 10,
                             "data.train_size": 8, "data.val_size": 2, "data.test_size": 2})
    dd, _, b = load_tokenized(c, tokenizer, 1024, 20)
    for ex in dd["train"]:
        assert 20 + len(ex["input_ids"]) <= 20 + 60 + b.separator + 10 + 1
        assert ex["source_truncated"]
    with pytest.raises(UserError, match="token budget does not fit"):
        make_budget(tokenizer, cfg_for(demo_dir, **{"data.max_target_tokens": 900}), 1024, num_virtual=200)


def test_the_article_gets_the_whole_context_and_every_method_the_same_tokens(tokenizer, demo_dir):
    """max_source_tokens null: the article gets the positions the reserved soft tokens, the template and the
    summary (the longer of target + eos and the generation) leave, the same for a method with soft tokens and
    one without; a method with more soft tokens than the reserve is refused."""
    from peftsum.config import load_config

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
    c = cfg_for(demo_dir, **{"data.train_size": 12, "data.val_size": 3, "data.test_size": 3, "data.seed": 99})
    a, ra, _ = load_tokenized(c, tokenizer, 1024, 0)
    b, rb, _ = load_tokenized(c, tokenizer, 1024, 0)
    assert ra["cache"]["hit"] is False and rb["cache"]["hit"] is True
    assert a["train"]["input_ids"] == b["train"]["input_ids"]
    _, rc, _ = load_tokenized(cfg_for(demo_dir, **{"data.train_size": 12, "data.val_size": 3, "data.test_size": 3,
                                                   "data.seed": 99, "data.max_target_tokens": 20}), tokenizer, 1024, 0)
    assert rc["cache"]["hit"] is False  # another length budget is another key


def test_demo_corpus_is_deterministic_and_not_extractive():
    a, b = generate(50, seed=4), generate(50, seed=4)
    assert a == b and generate(50, seed=5) != a
    for r in a:
        sents = [s.strip() for s in r["article"].replace("\n", " ").split(". ")]
        assert 2 <= len(r["highlights"].split("\n")) <= 4
        assert all(h.rstrip(".") not in sents for h in r["highlights"].split("\n"))


def test_data_command_prints_statistics(demo_dir, capsys):
    from peftsum.cli import main

    assert main(["data", "--preset", "demo", "--data", str(demo_dir), "--set", "data.train_size=50"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "p50/p90/p99" in out and " 160 " in out and "  50 " in out
