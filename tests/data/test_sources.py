import json

import pytest

from peftsum.cli import main
from peftsum.data.demo import generate
from peftsum.data.prepare import prepare_splits
from peftsum.data.sources import load_raw
from peftsum.errors import UserError
from tests.data.conftest import TRICKY, data_cfg, kaggle_dir, write_csv


def test_csv_with_newlines_quotes_commas_unicode_and_cleaning_counts(tmp_path):
    clean = {"id": "a5", "article": "A clean article.", "highlights": "Clean."}
    d = kaggle_dir(tmp_path, [*TRICKY, clean], TRICKY[:2], TRICKY[:1])
    dd, report = prepare_splits(load_raw(data_cfg(d)), data_cfg(d))
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
    dd, report = prepare_splits(load_raw(data_cfg(d)), data_cfg(d))
    assert [len(dd[s]) for s in ("train", "validation", "test")] == [20, 5, 5]


def test_a_split_emptied_by_leakage_is_an_error(tmp_path):
    rows = generate(4, seed=8)
    d = kaggle_dir(tmp_path, rows[:2], rows[2:3], rows[:2] + rows[3:])  # every train row is also in test
    with pytest.raises(UserError, match="the train split has no examples left"):
        prepare_splits(load_raw(data_cfg(d)), data_cfg(d))


def test_single_file_with_column_mapping(tmp_path):
    rows = [{"doc": r["article"], "summ": r["highlights"]} for r in generate(50, seed=3)]
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = data_cfg(f, **{"data.text_column": "doc", "data.summary_column": "summ", "data.train_size": 30,
                      "data.val_size": 10, "data.test_size": 10})
    dd, _ = prepare_splits(load_raw(c), c)
    assert [len(dd[s]) for s in ("train", "validation", "test")] == [30, 10, 10]
    ids = set(dd["train"]["article"]) & set(dd["test"]["article"])
    assert not ids


def test_missing_column_names_the_columns_found_and_the_flag(tmp_path):
    write_csv(tmp_path / "x.csv", [{"id": 1, "text": "a", "sum": "b"}], fields=("id", "text", "sum"))
    with pytest.raises(UserError) as e:
        load_raw(data_cfg(tmp_path / "x.csv"))
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
    dd = load_raw(data_cfg(repo))
    assert {s: len(dd[s]) for s in dd} == {"train": 12, "validation": 6, "test": 6}
    assert dd["test"][0]["article"] == rows[18]["article"]


def test_subset_is_seeded_and_warns_when_too_big(tmp_path, caplog):
    rows = generate(60, seed=1)
    d = kaggle_dir(tmp_path, rows[:40], rows[40:50], rows[50:])
    c = data_cfg(d, **{"data.train_size": 10, "data.val_size": 5, "data.test_size": 50})
    a, _ = prepare_splits(load_raw(c), c)
    b, _ = prepare_splits(load_raw(c), c)
    assert a["train"]["id"] == b["train"]["id"] and len(a["train"]) == 10
    assert len(a["test"]) == 10 and "only 10 are available" in caplog.text
    c2 = data_cfg(d, **{"data.train_size": 10, "data.seed": 7})
    assert prepare_splits(load_raw(c2), c2)[0]["train"]["id"] != a["train"]["id"]


def test_leakage_by_id_and_by_normalised_article(tmp_path):
    rows = generate(12, seed=2)
    dup = dict(rows[0], id="other-id", article=rows[0]["article"].upper() + "  ")  # same text, other id
    same_id = dict(rows[1], article="A different article entirely.")
    d = kaggle_dir(tmp_path, rows[4:10] + [dup, same_id], rows[2:4] + [dict(rows[0], id="v0")], rows[:2])
    _, report = prepare_splits(load_raw(data_cfg(d)), data_cfg(d))
    assert report["validation"]["leaked"] == 1 and report["train"]["leaked"] == 2


def test_non_utf8_bytes_are_replaced_and_counted(tmp_path, capsys):
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.csv").write_bytes(
            b"id,article,highlights\n" + f"{split}1,Caf\xe9 in {split} opened.,New caf\xe9.\n".encode("latin-1")
            + f"{split}2,A plain {split} article.,Plain.\n".encode())
    assert main(["data", "--preset", "demo", "--data", str(tmp_path)]) == 0
    cap = capsys.readouterr()
    assert "not UTF-8" in cap.err and "replaced by U+FFFD" in cap.err
