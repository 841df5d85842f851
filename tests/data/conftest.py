"""Helpers of the data tests: tricky rows, CSV / JSONL / Parquet split folders, a data config for a source."""

import csv
import json

from peftsum.config import load_config

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


def data_cfg(source, **kw):
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
