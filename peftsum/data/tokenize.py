"""Formatting and tokenization for a decoder-only model.

One example is ``{article}\\nTL;DR: {summary}<|endoftext|>`` (``data.template``).  It is tokenized in
three pieces — the article, the template text around it, the summary — so that the article can be
truncated on its own.  The budget guarantees

    num_virtual (soft prompt) + source + separator + target + 1 (eos) <= n_positions

where source <= ``max_source_tokens`` and target <= ``max_target_tokens``.  Each stored example keeps
``input_ids`` (prompt + summary + eos) and ``prompt_len``; labels are derived at collation time:
-100 on the prompt (and the soft prompt and padding), the token ids on the summary and the final eos
of the same sequence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..errors import UserError
from ..utils import cache_dir, write_json
from .sources import SPLITS

log = logging.getLogger(__name__)

TOKENIZE_VERSION = 4


@dataclass(frozen=True)
class Template:
    """The template split around its two slots; trailing spaces of the prompt move to the summary
    (GPT-2's BPE attaches a space to the following word: "TL;DR:" + " The ...")."""

    before: str
    between: str
    after: str

    @classmethod
    def parse(cls, template: str) -> Template:
        before, rest = template.split("{article}", 1)
        between, after = rest.split("{summary}", 1)
        stripped = between.rstrip(" ")
        return cls(before, stripped, " " * (len(between) - len(stripped)) + "\x00" + after)

    def summary_text(self, summary: str) -> str:
        lead, after = self.after.split("\x00", 1)
        return lead + summary + after


@dataclass(frozen=True)
class Budget:
    source: int
    target: int
    separator: int
    num_virtual: int
    n_positions: int


def make_budget(tokenizer, cfg_data, n_positions: int, num_virtual: int = 0) -> Budget:
    t = Template.parse(cfg_data.template)
    sep = len(tokenizer(t.before)["input_ids"]) + len(tokenizer(t.between)["input_ids"])
    target = cfg_data.max_target_tokens
    room = n_positions - num_virtual - sep - target - 1
    if room < 16:
        raise UserError(
            f"token budget does not fit: {num_virtual} soft-prompt + {sep} template + {target} target + 1 eos "
            f"tokens leave {room} of the model's {n_positions} positions for the article; lower "
            "data.max_target_tokens or method.prompt_tuning.num_prompts"
        )
    source = min(cfg_data.max_source_tokens, room)
    if source < cfg_data.max_source_tokens:
        log.warning("data.max_source_tokens %d lowered to %d so that %d soft-prompt + %d template + %d target + "
                    "1 eos tokens fit in %d positions", cfg_data.max_source_tokens, source, num_virtual, sep,
                    target, n_positions)
    return Budget(source, target, sep, num_virtual, n_positions)


def _tokenize_batch(batch, tokenizer, template: Template, budget: Budget):
    eos = tokenizer.eos_token_id
    before = tokenizer(template.before)["input_ids"] if template.before else []
    between = tokenizer(template.between)["input_ids"]
    arts = tokenizer(batch["article"])["input_ids"]
    sums = tokenizer([template.summary_text(s) for s in batch["highlights"]])["input_ids"]
    out = {"input_ids": [], "length": [], "prompt_len": [], "article_tokens": [], "summary_tokens": [],
           "source_truncated": [], "target_truncated": []}
    for a, s in zip(arts, sums):
        prompt = before + a[: budget.source] + between
        target = s[: budget.target] + [eos]
        out["input_ids"].append(prompt + target)
        out["length"].append(len(prompt) + len(target))
        out["prompt_len"].append(len(prompt))
        out["article_tokens"].append(len(a))
        out["summary_tokens"].append(len(s))
        out["source_truncated"].append(len(a) > budget.source)
        out["target_truncated"].append(len(s) > budget.target)
    return out


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of the whole tokenizer (vocabulary, merges, normalisation) where it can be serialised."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        blob = backend.to_str()
    else:
        blob = json.dumps(sorted(tokenizer.get_vocab().items()))
    blob += f"|{type(tokenizer).__name__}|{tokenizer.eos_token}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _source_fingerprint(cfg_data) -> str:
    """Identity of the raw data: file paths, sizes and modification times, or the hub id."""
    parts = [cfg_data.source, cfg_data.hub_config]
    path = Path(cfg_data.source).expanduser()
    if path.exists():
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for p in files:
            st = p.stat()
            parts.append(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    elif cfg_data.source == "demo":
        parts.append("demo-v1")
    return "|".join(parts)


def dataset_key(cfg_data, tokenizer, budget: Budget) -> str:
    blob = json.dumps({
        "v": TOKENIZE_VERSION, "src": _source_fingerprint(cfg_data), "text": cfg_data.text_column,
        "summary": cfg_data.summary_column, "id": cfg_data.id_column, "sizes": [cfg_data.train_size,
        cfg_data.val_size, cfg_data.test_size], "seed": cfg_data.seed, "template": cfg_data.template,
        "tok": tokenizer_fingerprint(tokenizer), "budget": [budget.source, budget.target],
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_tokenized(cfg_data, tokenizer, n_positions: int, num_virtual: int = 0):
    """Cleaned, subset, tokenized splits plus the preparation report; cached on disk by key."""
    budget = make_budget(tokenizer, cfg_data, n_positions, num_virtual)
    key = dataset_key(cfg_data, tokenizer, budget)
    folder = cache_dir() / "data" / key
    if cfg_data.cache and (folder / "report.json").is_file():
        dd = datasets.load_from_disk(str(folder / "dataset"))
        report = json.loads((folder / "report.json").read_text())
        report["cache"] = {"hit": True, "path": str(folder)}
        return dd, report, budget
    from .prepare import prepare_splits
    from .sources import load_raw

    raw = load_raw(cfg_data)
    splits, report = prepare_splits(raw, cfg_data)
    template = Template.parse(cfg_data.template)
    tokenized = {}
    for split in SPLITS:
        tokenized[split] = splits[split].map(
            _tokenize_batch, batched=True, batch_size=500, desc=f"tokenizing {split}",
            fn_kwargs={"tokenizer": tokenizer, "template": template, "budget": budget},
            new_fingerprint=f"{key}-{split}",
        )
    dd = datasets.DatasetDict(tokenized)
    report = {"splits": report, "budget": budget.__dict__, "key": key}
    if cfg_data.cache:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        dd.save_to_disk(str(tmp / "dataset"))
        write_json(tmp / "report.json", report)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        dd = datasets.load_from_disk(str(folder / "dataset"))
    report["cache"] = {"hit": False, "path": str(folder) if cfg_data.cache else None}
    return dd, report, budget
