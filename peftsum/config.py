"""One validated configuration tree: model, data, method, train, eval.

Loaded from a preset (``peftsum/presets/*.yaml``), then an optional YAML file, then command-line
overrides (``--train.lr 3e-4`` or ``--set train.lr=3e-4``).  Unknown keys and bad values raise
:class:`UserError` with a message that lists what is valid.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import UserError

METHODS = ("zero-shot", "lead-3", "prompt-tuning", "lora", "last-layer", "full")
PEFT_METHOD = "peft"  # any PEFT tuner from its config file (method.peft.config); compare: --methods peft:FILE
TRAINED_METHODS = ("prompt-tuning", "lora", "last-layer", "full")
PRESETS = ("demo", "assignment")


@dataclass
class ModelConfig:
    name: str = "gpt2"  # hub id, local directory written by save_pretrained, or "demo"
    tokenizer: str | None = None  # defaults to the model's own
    trust_remote_code: bool = False
    # Dropout of the transformer during training (attention probabilities, residuals, embeddings).
    # None keeps the checkpoint's (GPT-2: 0.1 each); 0 is the LoRA paper's GPT-2 code, and on CPU
    # about 1.5x faster for LoRA (attention dropout keeps SDPA off its fused kernels; performance.md §4).
    dropout: float | None = None


@dataclass
class DataConfig:
    source: str = "abisee/cnn_dailymail"  # hub id, Kaggle-style dir, a local file, or "demo"
    hub_config: str = "3.0.0"
    text_column: str = "article"
    summary_column: str = "highlights"
    id_column: str = "id"
    train_size: int = 21000
    val_size: int = 6000
    test_size: int = 3000
    seed: int = 42
    template: str = "{article}\nTL;DR: {summary}"
    # Article tokens: null = all the model's context leaves once the template, the summary budget
    # (max(max_target_tokens + eos, the longest generation)) and the reserved virtual tokens are taken;
    # a number caps that.  Every method of a comparison gets the same article tokens.
    max_source_tokens: int | None = None
    max_target_tokens: int = 128
    # Positions reserved for soft tokens in every method's budget, so prompt tuning's virtual tokens do not
    # buy it a shorter article than the others get; null = the largest of method.prompt_tuning.num_prompts
    # and sweep.num_prompts.  A method with more virtual tokens than this is refused.
    virtual_token_reserve: int | None = None
    group_by_length: bool = True
    cache: bool = True


@dataclass
class PromptTuningConfig:
    num_prompts: int = 20
    init: str = "text"  # text | vocab | random
    init_text: str = "[SUMMARIZE]"
    lr: float = 3e-2


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    # module-name suffixes to adapt; null: the model type's attention projections (GPT-2 attn.c_attn; Llama,
    # Qwen2, Mistral q_proj,v_proj; GPT-NeoX query_key_value; ...: model.arch.default_lora_targets)
    targets: list[str] | None = None
    backend: str = "peftsum"  # peftsum | peft
    lr: float = 2e-4


@dataclass
class LastLayerConfig:
    blocks: int = 0  # also train the last N transformer blocks and ln_f
    tied: bool = False  # the assignment's literal recipe: trains the tied input embeddings too
    cache_features: bool = True  # frozen trunk: compute its hidden states once, train the head on them
    lr: float = 1e-4


@dataclass
class FullConfig:
    lr: float = 5e-5


@dataclass
class PeftMethodConfig:
    """``method.name: peft``: any PEFT tuner (IA³, prefix tuning, LoHa, ...) from a PEFT config JSON."""

    config: str | None = None  # a PEFT config file as adapter_config.json holds it, or a folder with one
    name: str | None = None  # the method's name in reports and run folders (default: peft-<file stem>)
    lr: float = 3e-3


@dataclass
class ZeroShotConfig:
    # gpt2-paper: Radford et al. (2019), section 3.6: "TL;DR:" after the article, 100 tokens sampled with
    # top-k 2 (seeded: eval.decoding.seed), the first 3 generated sentences kept; decoding: eval.decoding
    protocol: str = "gpt2-paper"


@dataclass
class MethodConfig:
    name: str = "lora"
    zero_shot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    last_layer: LastLayerConfig = field(default_factory=LastLayerConfig)
    full: FullConfig = field(default_factory=FullConfig)
    peft: PeftMethodConfig = field(default_factory=PeftMethodConfig)


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    # Sequences per forward/backward pass inside a batch (the gradient is the same token-weighted sum).
    # None: on CPU, as many as keep one layer's attention scores within 32 MiB (GPT-2 small at ~600
    # tokens: 1; with its dropout that ran 1.1-1.5x faster than 4 at once, docs/performance.md §4);
    # on GPUs the whole batch.
    micro_batch_size: int | None = None
    lr: float | None = None  # None: the method's own default (method.<name>.lr); the optimizer is AdamW
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    schedule: str = "linear"  # linear | cosine | constant
    max_grad_norm: float = 1.0
    # Early stopping on validation loss, as transformers' EarlyStoppingCallback and Lightning do it: stop after
    # `patience` consecutive evaluations that do not beat the best by more than `min_delta` (null: never).
    patience: int | None = 2
    min_delta: float = 0.0
    # What picks the best checkpoint, stops early and is a sweep's objective: the validation loss, or
    # ROUGE-Lsum of summaries generated with eval.decoding on a fixed, seeded subset of rouge_examples
    # validation articles (its generation time counts as training time)
    select_by: str = "loss"  # loss | rougeLsum
    rouge_examples: int = 200
    eval_every_steps: int | None = None  # also validate every N optimizer steps (always at the end of an epoch)
    val_limit: int | None = None  # a fixed, seeded subset of validation examples for early stopping (None: all)
    checkpoint_every_steps: int = 200
    seed: int = 42
    mixed_precision: str = "auto"  # auto | no | bf16 | fp16
    progress: bool = True
    # experiment trackers (``--report-to``): tensorboard, wandb, mlflow, aim, ... or all; empty: none
    report_to: list[str] = field(default_factory=list)


@dataclass
class DecodingConfig:
    """How summaries are generated: the same rules for every method, in the evaluation, ``summarize`` and
    ROUGE-based checkpoint selection.  Beam search follows transformers' ``generate()`` (tested token for
    token); fairseq's BART CNN/DailyMail setting is beam 4, length penalty 2.0, 55-140 tokens, no 3-gram twice."""

    num_beams: int = 1
    length_penalty: float = 1.0  # beam search: a finished hypothesis scores sum(log p) / new_tokens ** length_penalty
    early_stopping: bool = True  # beam search: an article is done once num_beams hypotheses have finished
    min_new_tokens: int = 0  # the end-of-text token is forbidden before this many new tokens
    max_new_tokens: int = 128
    no_repeat_ngram_size: int = 3  # on the generated tokens only (not the article)
    do_sample: bool = False  # top-k sampling instead of greedy (num_beams 1)
    top_k: int = 0  # sampling: draw among the k most likely tokens (0: all)
    seed: int = 0  # sampling: each article's generator is seeded from this and the article's tokens
    max_sentences: int | None = None  # keep only the first N generated sentences


@dataclass
class EvalConfig:
    batch_size: int = 16
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    limit: int | None = None
    bootstrap: int = 1000
    examples: int = 5  # the report shows this many seeded test articles with every method's summary


@dataclass
class SweepConfig:
    """``peftsum sweep``: one Optuna study per method on the validation split (never the test split)."""

    trials: int = 12  # finished trials per method (complete or pruned), shared by every worker of a study
    steps: int = 300  # optimizer steps of a trial's short run; its objective is the validation loss after them
    reports: int = 4  # validations a trial makes (every steps/reports steps); the pruner reads them
    lr_factor: float = 10.0  # the learning rate is searched log-uniformly in [default / f, default * f]
    lora_ranks: list[int] = field(default_factory=list)  # also search LoRA's rank among these (empty: fixed)
    num_prompts: list[int] = field(default_factory=list)  # also search the number of soft tokens
    last_layer_blocks: list[int] = field(default_factory=list)  # also search last-layer's trained blocks
    val_limit: int | None = 500  # validation examples a trial reads (a fixed, seeded subset; None: all)
    seed: int = 0  # the sampler's seed


@dataclass
class Config:
    preset: str | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    # --- derived values -------------------------------------------------------------------
    def method_section(self):
        key = self.method.name.replace("-", "_")
        return getattr(self.method, key, None)

    def learning_rate(self) -> float:
        if self.train.lr is not None:
            return self.train.lr
        section = self.method_section()
        if section is None or not hasattr(section, "lr"):
            raise UserError(f"method {self.method.name!r} trains nothing and has no learning rate")
        return section.lr

    def virtual_token_reserve(self) -> int:
        """Positions every method's budget keeps for soft tokens (``data.virtual_token_reserve``)."""
        if self.data.virtual_token_reserve is not None:
            return self.data.virtual_token_reserve
        return max([self.method.prompt_tuning.num_prompts, *self.sweep.num_prompts])

    def generation_tokens(self) -> int:
        """The most new tokens any method of this config generates (the zero-shot protocol's 100 included)."""
        n = self.eval.decoding.max_new_tokens
        return max(n, GPT2_PAPER_DECODING.max_new_tokens) if self.method.zero_shot.protocol == "gpt2-paper" else n

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# Radford et al. (2019), 3.6 Summarization: "TL;DR:" after the article, 100 tokens of top-k sampling with k = 2,
# the first 3 generated sentences as the summary
GPT2_PAPER_DECODING = DecodingConfig(num_beams=1, do_sample=True, top_k=2, max_new_tokens=100, no_repeat_ngram_size=0,
                                     max_sentences=3)

# --- loading and validation ----------------------------------------------------------------

_CHOICES = {
    "method.name": (*METHODS, PEFT_METHOD),
    "method.prompt_tuning.init": ("text", "vocab", "random"),
    "method.lora.backend": ("peftsum", "peft"),
    "method.zero_shot.protocol": ("gpt2-paper", "decoding"),
    "train.select_by": ("loss", "rougeLsum"),
    "train.schedule": ("linear", "cosine", "constant"),
    "train.mixed_precision": ("auto", "no", "bf16", "fp16"),
    "preset": (*PRESETS, None),
}
_POSITIVE = {
    "data.train_size", "data.val_size", "data.test_size", "data.max_source_tokens",
    "data.max_target_tokens", "method.prompt_tuning.num_prompts", "method.lora.rank",
    "method.lora.alpha", "method.prompt_tuning.lr", "method.lora.lr", "method.last_layer.lr",
    "method.full.lr", "method.peft.lr", "train.epochs", "train.max_steps", "train.batch_size", "train.grad_accum",
    "train.lr", "train.micro_batch_size", "train.patience", "train.checkpoint_every_steps", "train.eval_every_steps", "train.val_limit",
    "eval.batch_size", "eval.limit", "eval.bootstrap",
    "train.max_grad_norm", "train.rouge_examples", "eval.decoding.num_beams", "eval.decoding.max_new_tokens",
    "eval.decoding.max_sentences", "sweep.trials", "sweep.steps", "sweep.reports", "sweep.val_limit",
}
_NON_NEGATIVE = {"train.weight_decay", "train.warmup_ratio", "train.min_delta", "method.lora.dropout",
                 "method.last_layer.blocks", "eval.decoding.no_repeat_ngram_size", "eval.decoding.min_new_tokens",
                 "eval.decoding.top_k", "eval.examples", "data.virtual_token_reserve"}


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except UserError:
                pass
        raise UserError(f"config key '{key}': expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise UserError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(v, item, key) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}': expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"config key '{key}': expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise UserError(f"config key '{key}': expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"config key '{key}': expected a string, got {value!r}")
    raise AssertionError(f"unsupported annotation {tp}")


def _merge(obj, data: dict, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise UserError(
                f"unknown config key '{full}'; valid keys in '{prefix.rstrip('.') or '<root>'}': {', '.join(names)}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def validate(cfg: Config) -> Config:
    flat = flatten_dict(cfg.to_dict())
    for key, choices in _CHOICES.items():
        if flat.get(key) not in choices:
            shown = ", ".join(str(c) for c in choices if c is not None)
            raise UserError(f"config key '{key}': {flat.get(key)!r} is not one of: {shown}")
    for key in _POSITIVE:
        v = flat.get(key)
        if v is not None and v <= 0:
            raise UserError(f"config key '{key}' must be > 0, got {v!r}")
    for key in _NON_NEGATIVE:
        v = flat.get(key)
        if v is not None and v < 0:
            raise UserError(f"config key '{key}' must be >= 0, got {v!r}")
    if cfg.train.warmup_ratio >= 1:
        raise UserError(f"config key 'train.warmup_ratio' must be < 1, got {cfg.train.warmup_ratio}")
    if "{article}" not in cfg.data.template or "{summary}" not in cfg.data.template:
        raise UserError("config key 'data.template' must contain both {article} and {summary}")
    if cfg.data.template.index("{article}") > cfg.data.template.index("{summary}"):
        raise UserError("config key 'data.template': {article} must come before {summary}")
    if cfg.model.dropout is not None and not 0 <= cfg.model.dropout < 1:
        raise UserError("config key 'model.dropout' must be in [0, 1)")
    if cfg.sweep.lr_factor <= 1:
        raise UserError(f"config key 'sweep.lr_factor' must be > 1, got {cfg.sweep.lr_factor}")
    for key in ("lora_ranks", "num_prompts", "last_layer_blocks"):
        values = getattr(cfg.sweep, key)
        if any(v < (0 if key == "last_layer_blocks" else 1) for v in values):
            raise UserError(f"config key 'sweep.{key}' holds a value out of range: {values}")
    dec = cfg.eval.decoding
    if dec.min_new_tokens > dec.max_new_tokens:
        raise UserError(f"config key 'eval.decoding.min_new_tokens' ({dec.min_new_tokens}) exceeds max_new_tokens "
                        f"({dec.max_new_tokens})")
    if dec.do_sample and dec.num_beams > 1:
        raise UserError("eval.decoding: do_sample with num_beams > 1 (beam sampling) is not offered; set one of them")
    if cfg.method.lora.dropout >= 1:
        raise UserError("config key 'method.lora.dropout' must be < 1")
    if cfg.method.name == PEFT_METHOD:
        if not cfg.method.peft.config:
            raise UserError("method peft needs a PEFT config file: --set method.peft.config=FILE (as adapter_config.json "
                            "holds it, e.g. {\"peft_type\": \"IA3\", ...})")
        if not cfg.method.peft.name:
            cfg.method.peft.name = peft_method_name(cfg.method.peft.config)
    return cfg


def peft_method_name(config_file: str) -> str:
    """``configs/ia3.json`` -> ``peft-ia3``: the method's name in reports and its run folder."""
    path = Path(config_file)
    stem = path.parent.name if path.name == "adapter_config.json" or not path.suffix else path.stem
    return f"peft-{stem}"


def flatten_dict(d: dict, prefix: str = "") -> dict:
    """``{'train': {'lr': 1}}`` -> ``{'train.lr': 1}``."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def preset_dict(name: str) -> dict:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    text = resources.files("peftsum.presets").joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    data["preset"] = name
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections (model, data, method, train, eval)")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``train.lr=3e-4`` -> ('train.lr', 0.0003); values are read as YAML scalars."""
    if "=" not in text:
        raise UserError(f"override {text!r} must look like key=value, e.g. train.lr=3e-4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _looks_numeric(value):  # YAML reads "3e-4" as a string
        value = float(value)
    return key.strip(), value


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def nest(key: str, value: Any) -> dict:
    out: dict = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def load_config(
    preset: str | None = None,
    file: str | Path | None = None,
    overrides: list[tuple[str, Any]] | None = None,
) -> Config:
    cfg = Config()
    if file is not None:
        data = read_yaml(file)
        preset = preset or data.get("preset")
    if preset is not None:
        _merge(cfg, preset_dict(preset))
    if file is not None:
        _merge(cfg, data)
    for key, value in overrides or []:
        _merge(cfg, nest(key, value))
    return validate(cfg)


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    _merge(cfg, data)
    return validate(cfg)
