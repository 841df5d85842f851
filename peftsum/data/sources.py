"""Raw data sources, all read through ``datasets`` (Arrow, memory-mapped).

``data.source`` may be:
  * ``demo``: the synthetic corpus (written once as a Kaggle-style CSV directory in the cache);
  * a Kaggle-style directory with ``train.csv``, ``validation.csv``, ``test.csv`` (or .jsonl/.json/.parquet);
  * a local copy of a hub dataset repository (a folder with a README that declares its configs);
  * one local CSV / JSON / JSONL / Parquet file, split here into test / validation / train;
  * a hub id such as ``abisee/cnn_dailymail`` (config ``data.hub_config``).
Every source comes back as a DatasetDict with the splits train / validation / test and the columns
``id``, ``article``, ``highlights`` (mapped from ``data.id_column`` / ``text_column`` / ``summary_column``).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import datasets

from ..errors import UserError
from ..utils import cache_dir
from .demo import write_demo_corpus
from .text import clean_text

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def is_hub_id(source: str) -> bool:
    """``owner/name`` that is not a local path: a data set on the Hugging Face Hub."""
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and not source.startswith((".", "/")) \
        and not Path(source).expanduser().exists()


def describe_source(source: str) -> str:
    return "synthetic demo corpus" if source == "demo" else source


def _find_split_files(folder: Path) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for split, aliases in _SPLIT_ALIASES.items():
        for alias in aliases:
            for ext in _BUILDERS:
                p = folder / f"{alias}{ext}"
                if p.is_file():
                    found.setdefault(split, p)
    return found or None


def _load_files(files: dict[str, Path]) -> datasets.DatasetDict:
    exts = {p.suffix.lower() for p in files.values()}
    if len(exts) != 1:
        raise UserError(f"split files must share one format, found {sorted(exts)} in {next(iter(files.values())).parent}")
    builder = _BUILDERS[exts.pop()]
    for split, p in files.items():
        if p.stat().st_size == 0:
            raise UserError(f"data file {p} is empty; the {split} split needs a header row and examples")
    kwargs = {"encoding_errors": "replace"} if builder == "csv" else {}  # bad bytes -> U+FFFD, counted later
    try:
        return datasets.load_dataset(builder, data_files={k: str(v) for k, v in files.items()}, **kwargs)
    except datasets.exceptions.DatasetGenerationError as e:
        cause = e.__cause__ or e
        raise UserError(f"could not read {', '.join(str(p) for p in files.values())}: {_first_line(cause)}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"could not read {', '.join(str(p) for p in files.values())}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def load_raw(cfg_data) -> datasets.DatasetDict:
    """Load the source named by ``cfg_data.source`` and map its columns to id / article / highlights."""
    source = cfg_data.source
    if source == "demo":
        folder = cache_dir() / "demo-corpus-v1"
        if not all((folder / f"{s}.csv").is_file() for s in SPLITS):
            write_demo_corpus(folder)
        dd = _load_files(_find_split_files(folder))
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            files = _find_split_files(path)
            if files:
                dd = _load_files(files)
            elif (path / "README.md").is_file() or any(path.glob("*/*.parquet")):
                dd = _load_hub(str(path), cfg_data.hub_config)
            else:
                raise UserError(
                    f"data directory {path} has no train/validation/test files (.csv, .jsonl, .json, .parquet) "
                    "and is not a copy of a hub dataset"
                )
        elif path.is_file():
            builder = _BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise UserError(f"data file {path}: unsupported format {path.suffix!r}; use .csv, .json, .jsonl or .parquet")
            # one file: map its columns once, then carve the splits out of it
            one = _load_files({"train": path})["train"]
            return _split_single(_map_split(one, "file", cfg_data, where=f"data file {path}"), cfg_data)
        elif is_hub_id(source):
            dd = _load_hub(source, cfg_data.hub_config)
        else:
            raise UserError(f"data source not found: {source!r} (give a directory, a data file, a hub id, or 'demo')")
    return _map_columns(dd, cfg_data)


def _load_hub(repo: str, config: str) -> datasets.DatasetDict:
    try:
        dd = datasets.load_dataset(repo, config)
    except Exception as e:  # network, missing repo, bad config: one clear message
        raise UserError(f"could not load dataset {repo!r} (config {config!r}): {_first_line(e)}") from None
    return dd


def _split_single(ds: datasets.Dataset, cfg_data) -> datasets.DatasetDict:
    """Carve test, then validation, then train out of one file, in the ratio of the asked sizes."""
    n = len(ds)
    if n < 3:
        raise UserError(f"data file {cfg_data.source} has {n} rows; splitting it into train, validation and test "
                        "needs at least 3")
    want = [cfg_data.test_size, cfg_data.val_size, cfg_data.train_size]
    total = sum(want)
    if total > n:
        want = [max(1, int(n * w / total)) for w in want]
        want[2] = n - want[0] - want[1]
    ds = ds.shuffle(seed=cfg_data.seed)
    test = ds.select(range(0, want[0]))
    val = ds.select(range(want[0], want[0] + want[1]))
    train = ds.select(range(want[0] + want[1], min(n, sum(want))))
    log.info("split one file of %d rows into %d train / %d validation / %d test", n, len(train), len(val), len(test))
    return datasets.DatasetDict(train=train, validation=val, test=test)


def _map_columns(dd: datasets.DatasetDict, cfg_data) -> datasets.DatasetDict:
    missing_splits = [s for s in SPLITS if s not in dd]
    if missing_splits:
        raise UserError(f"data source {cfg_data.source!r} has no {', '.join(missing_splits)} split (found: {', '.join(dd)})")
    return datasets.DatasetDict({split: _map_split(dd[split], split, cfg_data) for split in SPLITS})


def _map_split(ds: datasets.Dataset, split: str, cfg_data, where: str | None = None) -> datasets.Dataset:
    """Check and rename one split's columns to id / article / highlights (ids made if absent)."""
    where = where or f"{split} split of {describe_source(cfg_data.source)}"
    cols = ds.column_names
    for flag, col in (("--data.text_column", cfg_data.text_column), ("--data.summary_column", cfg_data.summary_column)):
        if col not in cols:
            raise UserError(
                f"{where} has no column {col!r}; columns found: "
                f"{', '.join(cols)}. Map yours with {flag} NAME"
            )
    keep = [cfg_data.text_column, cfg_data.summary_column]
    has_id = cfg_data.id_column in cols
    if has_id:
        keep.append(cfg_data.id_column)
    ds = ds.select_columns(keep)
    rename = {cfg_data.text_column: "article", cfg_data.summary_column: "highlights"}
    if has_id:
        rename[cfg_data.id_column] = "id"
    ds = ds.rename_columns({k: v for k, v in rename.items() if k != v})
    if not has_id:
        ds = ds.map(lambda _, i: {"id": f"{split}-{i}"}, with_indices=True, desc=f"ids for {split}")
    return ds.cast_column("id", datasets.Value("string")) if ds.features["id"].dtype != "string" else ds


def load_articles(source: str | Path, text_column: str = "article", id_column: str = "id") -> list[dict]:
    """Articles to summarize: a CSV / JSON / JSONL / Parquet file (columns mapped as for ``--data``) or a
    folder of ``.txt`` files (the id is the file name without .txt).  Each comes back as ``{"id",
    "article"}`` with the article cleaned as the training data is; an empty article is an error."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise UserError(f"input folder {path} holds no .txt files")
        rows = [{"id": p.stem, "article": p.read_text(encoding="utf-8", errors="replace")} for p in files]
    elif path.is_file():
        if path.suffix.lower() not in _BUILDERS:
            raise UserError(f"input file {path}: unsupported format {path.suffix!r}; use .csv, .json, .jsonl, "
                            ".parquet, or a folder of .txt files")
        ds = _load_files({"train": path})["train"]
        if text_column not in ds.column_names:
            raise UserError(f"input file {path} has no column {text_column!r}; columns found: "
                            f"{', '.join(ds.column_names)}. Map yours with --text-column NAME")
        ids = [str(i) for i in ds[id_column]] if id_column in ds.column_names else [str(i) for i in range(len(ds))]
        rows = [{"id": i, "article": a} for i, a in zip(ids, ds[text_column])]
    else:
        raise UserError(f"input not found: {source}")
    for row in rows:
        row["article"] = clean_text(row["article"], keep_lines=True)
    empty = [r["id"] for r in rows if not r["article"]]
    if empty:
        raise UserError(f"{len(empty)} article(s) of {path} are empty (e.g. id {empty[0]!r})")
    return rows
