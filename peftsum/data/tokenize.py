"""Formatting and tokenization for a decoder-only model.

One example is ``{article}\\nTL;DR: {summary}<|endoftext|>`` (``data.template``).  It is tokenized in
three pieces — the article, the template text around it, the summary — so that the article can be
truncated on its own.  The budget guarantees

    reserve (soft tokens) + source + separator + max(target + 1 (eos), generated tokens) <= n_positions

where target <= ``max_target_tokens``, the generated tokens are the most any method generates, and the
reserve is the same for every method of a comparison (``data.virtual_token_reserve``), so every method
reads the same article tokens: prompt tuning's virtual tokens do not buy it a shorter article.  The
article gets all the positions left (``max_source_tokens: null``) or at most ``max_source_tokens``.  Each stored example keeps
``input_ids`` (prompt + summary + eos) and ``prompt_len``; labels are derived at collation time:
-100 on the prompt (and the soft prompt and padding), the token ids on the summary and the final eos
of the same sequence.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets

from ..errors import UserError
from ..utils import atomic_dir, cache_dir, write_json
from .prepare import prepare_splits
from .sources import SPLITS, load_raw

log = logging.getLogger(__name__)

TOKENIZE_VERSION = 5  # 5: special tokens once at the start (Llama's BOS), none inside


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
    source: int  # article tokens at most
    target: int  # summary tokens at most (training), before the eos
    separator: int  # the template's tokens around the article (and a leading BOS)
    num_virtual: int  # this method's soft tokens
    n_positions: int  # the model's context
    reserve: int = 0  # positions every method keeps for soft tokens (>= num_virtual)
    summary: int = 0  # positions kept for the summary: max(target + eos, the most new tokens generated)


def encode(tokenizer, texts):
    """Token ids of a text (or a list of texts) alone: no special tokens (the prompt gets them once, in front)."""
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def leading_special_tokens(tokenizer) -> list[int]:
    """What the tokenizer puts before a text by itself (Llama's BOS; nothing for GPT-2): a sequence starts
    with it once, as the model was trained, and no piece of the template repeats it."""
    full, plain = tokenizer("a")["input_ids"], encode(tokenizer, "a")
    return full[: len(full) - len(plain)] if plain and full[len(full) - len(plain):] == plain else []


def make_budget(tokenizer, cfg_data, n_positions: int, num_virtual: int = 0, reserve: int | None = None,
                generated: int = 0) -> Budget:
    """The article's token budget: what the context leaves after the reserved soft tokens, the template and the
    summary (the longer of the training target with its eos and the generation), capped by ``max_source_tokens``."""
    reserve = num_virtual if reserve is None else reserve
    if num_virtual > reserve:
        raise UserError(f"the method has {num_virtual} virtual tokens but every method's budget reserves {reserve} "
                        f"positions for them; set --data.virtual_token_reserve {num_virtual} (for every method of the "
                        "comparison, so that all read the same article tokens)")
    t = Template.parse(cfg_data.template)
    sep = len(leading_special_tokens(tokenizer)) + len(encode(tokenizer, t.before)) + len(encode(tokenizer, t.between))
    target = cfg_data.max_target_tokens
    summary = max(target + 1, generated)
    room = n_positions - reserve - sep - summary
    if room < 16:
        raise UserError(
            f"token budget does not fit: {reserve} soft-token + {sep} template + {summary} summary (the longer of "
            f"data.max_target_tokens + eos and the generated tokens) positions leave {room} of the model's "
            f"{n_positions} for the article; lower data.max_target_tokens, eval.decoding.max_new_tokens or the "
            "soft tokens (data.virtual_token_reserve, method.prompt_tuning.num_prompts)"
        )
    source = room if cfg_data.max_source_tokens is None else min(cfg_data.max_source_tokens, room)
    if cfg_data.max_source_tokens is not None and source < cfg_data.max_source_tokens:
        log.warning("data.max_source_tokens %d lowered to %d so that %d soft-token + %d template + %d summary "
                    "positions fit in %d", cfg_data.max_source_tokens, source, reserve, sep, summary, n_positions)
    return Budget(source, target, sep, num_virtual, n_positions, reserve, summary)


class PromptBuilder:
    """The one place a prompt is built: training, evaluation and ``summarize`` all call it.

    ``prompt_ids(article)`` is ``before + article[:budget.source] + between``: the article truncated
    alone, the template around it.  ``example(article, summary)`` appends the summary (cut to
    ``budget.target``) and eos, the sequence whose summary tokens carry the labels."""

    def __init__(self, tokenizer, cfg_data, n_positions: int, num_virtual: int = 0, reserve: int | None = None,
                 generated: int = 0):
        self.tokenizer = tokenizer
        self.template = Template.parse(cfg_data.template)
        self.budget = make_budget(tokenizer, cfg_data, n_positions, num_virtual, reserve, generated)
        self.before = leading_special_tokens(tokenizer) + (encode(tokenizer, self.template.before)
                                                           if self.template.before else [])
        self.between = encode(tokenizer, self.template.between)

    def article_ids(self, articles: list[str]) -> list[list[int]]:
        return encode(self.tokenizer, list(articles))

    def prompt_ids(self, article_ids: list[int]) -> list[int]:
        return self.before + article_ids[: self.budget.source] + self.between

    def prompts(self, articles: list[str]) -> list[list[int]]:
        """Token ids of the prompts of ``articles`` (cleaned text), ready to generate from."""
        return [self.prompt_ids(a) for a in self.article_ids(articles)]

    def examples(self, batch: dict) -> dict:
        """``datasets.map`` function: a batch of id / article / highlights -> the stored example columns."""
        eos = self.tokenizer.eos_token_id
        arts = self.article_ids(batch["article"])
        sums = encode(self.tokenizer, [self.template.summary_text(s) for s in batch["highlights"]])
        out = {"input_ids": [], "length": [], "prompt_len": [], "article_tokens": [], "summary_tokens": [],
               "source_truncated": [], "target_truncated": []}
        for a, s in zip(arts, sums):
            prompt = self.prompt_ids(a)
            target = s[: self.budget.target] + [eos]
            out["input_ids"].append(prompt + target)
            out["length"].append(len(prompt) + len(target))
            out["prompt_len"].append(len(prompt))
            out["article_tokens"].append(len(a))
            out["summary_tokens"].append(len(s))
            out["source_truncated"].append(len(a) > self.budget.source)
            out["target_truncated"].append(len(s) > self.budget.target)
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


def load_tokenized(cfg_data, tokenizer, n_positions: int, num_virtual: int = 0, reserve: int | None = None,
                   generated: int = 0):
    """Cleaned, subset, tokenized splits plus the preparation report; cached on disk by key."""
    builder = PromptBuilder(tokenizer, cfg_data, n_positions, num_virtual, reserve, generated)
    budget = builder.budget
    key = dataset_key(cfg_data, tokenizer, budget)
    folder = cache_dir() / "data" / key
    if cfg_data.cache and (folder / "report.json").is_file():
        dd = datasets.load_from_disk(str(folder / "dataset"))
        report = json.loads((folder / "report.json").read_text())
        report["cache"] = {"hit": True, "path": str(folder)}
        return dd, report, budget
    raw = load_raw(cfg_data)
    splits, report = prepare_splits(raw, cfg_data)
    tokenized = {}
    for split in SPLITS:
        tokenized[split] = splits[split].map(builder.examples, batched=True, batch_size=500,
                                             desc=f"tokenizing {split}", new_fingerprint=f"{key}-{split}")
    dd = datasets.DatasetDict(tokenized)
    report = {"splits": report, "budget": budget.__dict__, "key": key}
    if cfg_data.cache:
        with atomic_dir(folder, "report.json") as tmp:  # several processes may tokenize at once
            dd.save_to_disk(str(tmp / "dataset"))
            write_json(tmp / "report.json", report)
        dd = datasets.load_from_disk(str(folder / "dataset"))
    report["cache"] = {"hit": False, "path": str(folder) if cfg_data.cache else None}
    return dd, report, budget
