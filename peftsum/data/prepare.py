"""Cleaning, leakage removal and subsetting of the raw splits.

Order: clean every split (strip, normalise whitespace inside lines, drop empty articles or
summaries), drop examples whose id or normalised-article hash already appears in a higher-priority
split (test > validation > train), then draw the seeded subset of each split.
"""

from __future__ import annotations

import logging

import datasets

from ..errors import UserError
from .sources import SPLITS, load_raw
from .text import article_hash, clean_text

log = logging.getLogger(__name__)

def _clean_batch(batch):
    arts = [clean_text(a, keep_lines=True) for a in batch["article"]]
    sums = [clean_text(s, keep_lines=True) for s in batch["highlights"]]
    return {"article": arts, "highlights": sums, "hash": [article_hash(a) for a in arts],
            "empty_article": [not a for a in arts], "empty_summary": [not s for s in sums],
            "replaced": ["\ufffd" in a or "\ufffd" in s for a, s in zip(arts, sums)]}


def prepare_splits(raw: datasets.DatasetDict, cfg_data) -> tuple[datasets.DatasetDict, dict]:
    """Return the cleaned, leak-free subsets and a report of what was dropped and why."""
    report: dict = {}
    cleaned = {}
    for split in SPLITS:
        ds = raw[split]
        n0 = len(ds)
        ds = ds.map(_clean_batch, batched=True, batch_size=1000, desc=f"cleaning {split}")
        # only the small flag columns are read into memory, never the texts
        empty_article = sum(ds["empty_article"]) if n0 else 0
        empty_summary = sum(ds["empty_summary"]) if n0 else 0
        ds = ds.filter(lambda a, s: [not (x or y) for x, y in zip(a, s)], input_columns=["empty_article", "empty_summary"],
                       batched=True, batch_size=10000, desc=f"dropping empty rows of {split}")
        replaced = sum(ds["replaced"]) if len(ds) else 0
        if replaced:
            log.warning("%s: %d rows held bytes that are not UTF-8; they were replaced by U+FFFD and the rows kept",
                        split, replaced)
        ds = ds.remove_columns(["empty_article", "empty_summary", "replaced"])
        if len(ds) == 0:
            raise UserError(
                f"the {split} split has no usable rows: {n0} rows, {empty_article} with an empty article, "
                f"{empty_summary} with an empty summary"
            )
        report[split] = {"rows": n0, "empty_article": empty_article, "empty_summary": empty_summary,
                         "non_utf8_rows": replaced}
        cleaned[split] = ds
    # leakage: test > validation > train
    seen_ids: set[str] = set()
    seen_hashes: set[str] = set()
    for split in ("test", "validation", "train"):
        ds = cleaned[split]
        ids, hashes = ds["id"], ds["hash"]
        keep = [i for i, (x, h) in enumerate(zip(ids, hashes)) if x not in seen_ids and h not in seen_hashes]
        dropped = len(ds) - len(keep)
        report[split]["leaked"] = dropped
        if dropped:
            log.warning("%s: dropped %d examples that also appear in a higher-priority split", split, dropped)
            ds = ds.select(keep)
        seen_ids.update(ids)
        seen_hashes.update(hashes)
        cleaned[split] = ds
    # seeded subsets
    want = {"train": cfg_data.train_size, "validation": cfg_data.val_size, "test": cfg_data.test_size}
    out = {}
    for split in SPLITS:
        ds = cleaned[split]
        n = want[split]
        if n > len(ds):
            log.warning("%s: asked for %d examples but only %d are available; using all", split, n, len(ds))
            n = len(ds)
        if n == 0:
            raise UserError(f"the {split} split has no examples left: all {report[split]['rows']} rows were empty "
                            "or also appear in a higher-priority split (test > validation > train)")
        ds = ds.shuffle(seed=cfg_data.seed).select(range(n)).flatten_indices()
        report[split]["kept"] = n
        out[split] = ds.remove_columns("hash")
    return datasets.DatasetDict(out), report


def test_articles(cfg_data) -> dict[str, str]:
    """The cleaned test split's articles by id, as a run with ``cfg_data`` read them (what ``peftsum report`` scores
    the summaries of an older run against, for the statistics it did not store)."""
    splits, _ = prepare_splits(load_raw(cfg_data), cfg_data)
    return dict(zip(splits["test"]["id"], splits["test"]["article"]))
