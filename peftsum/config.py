"""One validated configuration tree: model, data, method, train, eval.

Loaded from a preset (``peftsum/presets/*.yaml``), then an optional YAML file, then command-line
overrides (``--train.lr 3e-4`` or ``--set train.lr=3e-4``).  Unknown keys and bad values raise
:class:`UserError` with a message that lists what is valid.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import UserError

log = logging.getLogger(__name__)

METHODS = ("zero-shot", "lead-3", "prompt-tuning", "lora", "qlora", "last-layer", "full")
PEFT_METHOD = "peft"  # any PEFT tuner from its config file (method.peft.config); compare: --methods peft:FILE
QLORA = "qlora"  # LoRA (method.lora's settings) on the base quantized to model.quantize (nf4 where that says none)
# the methods that train base weights: a quantized base (model.quantize) has none to train
UNQUANTIZABLE = ("last-layer", "full")
FSDP_METHODS = ("full", "lora")  # the methods train.fsdp shards (tested against data parallel)
UNTRAINED_METHODS = ("zero-shot", "lead-3")  # the registry checks these against its Untrained entries
PRESETS = ("demo", "demo-scale", "assignment")
DEMO_PRESETS = ("demo", "demo-scale")  # the synthetic corpus: reports say their numbers are not CNN/DailyMail's


def section_key(method: str) -> str:
    """The ``method.<key>`` section that holds a method's settings: ``last_layer`` for last-layer, ``lora`` for qlora."""
    return "lora" if method == QLORA else method.replace("-", "_")


def positive(default):
    """A field whose value, where set, must be > 0."""
    return field(default=default, metadata={"range": (0, False, None)})


def non_negative(default):
    """A field whose value, where set, must be >= 0."""
    return field(default=default, metadata={"range": (0, True, None)})


def fraction(default):
    """A field in [0, 1) where set."""
    return field(default=default, metadata={"range": (0, True, 1)})


@dataclass
class ModelConfig:
    name: str = "gpt2"  # hub id, local directory written by save_pretrained, or "demo"
    tokenizer: str | None = None  # defaults to the model's own
    trust_remote_code: bool = False
    # Dropout of the transformer during training (attention probabilities, residuals, embeddings).
    # None keeps the checkpoint's (GPT-2: 0.1 each); 0 is the LoRA paper's GPT-2 code, and on CPU
    # about 1.5x faster for LoRA (attention dropout keeps SDPA off its fused kernels; performance.md §4).
    dropout: float | None = fraction(None)
    # The attention kernel transformers runs: "auto" (its default: SDPA where the model supports it), "sdpa",
    # "eager" (the plain matmul-softmax), or "flash_attention_2" (needs the flash-attn package and a GPU).
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    # The frozen base's linear layers quantized by bitsandbytes as they load (peftsum[qlora]): nf4 (4-bit NormalFloat
    # with double quantization, Dettmers et al. 2023), int8 (LLM.int8()), or none.  For methods that train only added
    # weights (LoRA, prompt tuning, PEFT tuners, zero-shot's evaluation); method qlora uses nf4 where this says none.
    quantize: Literal["none", "nf4", "int8"] = "none"


@dataclass
class DataConfig:
    source: str = "abisee/cnn_dailymail"  # hub id, Kaggle-style dir, a local file, or "demo"
    hub_config: str = "3.0.0"
    text_column: str = "article"
    summary_column: str = "highlights"
    id_column: str = "id"
    train_size: int = positive(21000)
    val_size: int = positive(6000)
    test_size: int = positive(3000)
    seed: int = 42
    template: str = "{article}\nTL;DR: {summary}"
    # Article tokens: null = all the model's context leaves once the template, the summary budget
    # (max(max_target_tokens + eos, the longest generation)) and the reserved virtual tokens are taken;
    # a number caps that.  Every method of a comparison gets the same article tokens.
    max_source_tokens: int | None = positive(None)
    max_target_tokens: int = positive(128)
    # Positions reserved for soft tokens in every method's budget, so prompt tuning's virtual tokens do not
    # buy it a shorter article than the others get; null = the largest of method.prompt_tuning.num_prompts
    # and sweep.num_prompts.  A method with more virtual tokens than this is refused.
    virtual_token_reserve: int | None = non_negative(None)
    group_by_length: bool = True
    cache: bool = True


@dataclass
class PromptTuningConfig:
    num_prompts: int = positive(20)
    init: Literal["text", "vocab", "random"] = "text"
    init_text: str = "[SUMMARIZE]"
    lr: float = positive(3e-2)


@dataclass
class LoraConfig:
    rank: int = positive(8)
    alpha: float = positive(16.0)
    dropout: float = fraction(0.05)
    # module-name suffixes to adapt; null: the model type's attention projections (GPT-2 attn.c_attn; Llama,
    # Qwen2, Mistral q_proj,v_proj; GPT-NeoX query_key_value; ...: model.arch.default_lora_targets)
    targets: list[str] | None = None
    # rank-stabilised LoRA (Kalajdzievski 2023, PEFT's use_rslora): the update scaled by alpha / sqrt(rank) instead
    # of alpha / rank, so its size does not shrink as the rank grows
    rslora: bool = False
    # LoRA+ (Hayou et al. 2024, PEFT's create_loraplus_optimizer): B's learning rate is lr x lr_ratio (they suggest
    # 16); 1: plain LoRA
    lr_ratio: float = positive(1.0)
    # DoRA (Liu et al. 2024, PEFT's use_dora): the adapted weight as a trained magnitude per output times the
    # direction of W + ΔW (one more vector per adapted matrix; slower: the norm is taken at every forward)
    dora: bool = False
    lr: float = positive(2e-4)


@dataclass
class LastLayerConfig:
    blocks: int = non_negative(0)  # also train the last N transformer blocks and ln_f
    tied: bool = False  # the assignment's literal recipe: trains the tied input embeddings too
    lr: float = positive(1e-4)


@dataclass
class FullConfig:
    lr: float = positive(5e-5)


@dataclass
class PeftMethodConfig:
    """``method.name: peft``: any PEFT tuner (IA³, prefix tuning, LoHa, ...) from a PEFT config JSON."""

    config: str | None = None  # a PEFT config file as adapter_config.json holds it, or a folder with one
    name: str | None = None  # the method's name in reports and run folders (default: peft-<file stem>)
    lr: float = positive(3e-3)


@dataclass
class ZeroShotConfig:
    # gpt2-paper: Radford et al. (2019), section 3.6: "TL;DR:" after the article, 100 tokens sampled with
    # top-k 2 (seeded: eval.decoding.seed), the first 3 generated sentences kept; decoding: eval.decoding
    protocol: Literal["gpt2-paper", "decoding"] = "gpt2-paper"


@dataclass
class MethodConfig:
    name: Literal[(*METHODS, PEFT_METHOD)] = "lora"
    zero_shot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    prompt_tuning: PromptTuningConfig = field(default_factory=PromptTuningConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    last_layer: LastLayerConfig = field(default_factory=LastLayerConfig)
    full: FullConfig = field(default_factory=FullConfig)
    peft: PeftMethodConfig = field(default_factory=PeftMethodConfig)


@dataclass
class TrainConfig:
    epochs: int = positive(10)
    max_steps: int | None = positive(None)
    batch_size: int = positive(8)
    grad_accum: int = positive(1)
    # Sequences per forward/backward pass inside a batch (the gradient is the same token-weighted sum).
    # None: on CPU, as many as keep one layer's attention scores within 32 MiB (GPT-2 small at ~600
    # tokens: 1; with its dropout that ran 1.1-1.5x faster than 4 at once, docs/performance.md §4);
    # on GPUs the whole batch.
    micro_batch_size: int | None = positive(None)
    lr: float | None = positive(None)  # None: the method's own default (method.<name>.lr); the optimizer is AdamW
    weight_decay: float = non_negative(0.0)
    warmup_ratio: float = fraction(0.06)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = positive(1.0)
    # Early stopping on validation loss, as transformers' EarlyStoppingCallback and Lightning do it: stop after
    # `patience` consecutive evaluations that do not beat the best by more than `min_delta` (null: never).
    patience: int | None = positive(2)
    min_delta: float = non_negative(0.0)
    # What picks the best checkpoint, stops early and is a sweep's objective: the validation loss, or
    # ROUGE-Lsum of summaries generated with eval.decoding on a fixed, seeded subset of rouge_examples
    # validation articles (its generation time counts as training time)
    select_by: Literal["loss", "rougeLsum"] = "loss"
    rouge_examples: int = positive(200)
    eval_every_steps: int | None = positive(None)  # also validate every N optimizer steps (always at the end of an epoch)
    val_limit: int | None = positive(None)  # a fixed, seeded subset of validation examples for early stopping (None: all)
    checkpoint_every_steps: int = positive(200)
    seed: int = 42
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    # Under bf16 / fp16 mixed precision, store the frozen linear weights (those that do not train, are not quantized
    # and are not the input embeddings) in that dtype: autocast would otherwise cast each of them again in every
    # forward and every decode step.  The matmuls see the same values (autocast's cast is the same rounding), so
    # losses and summaries are unchanged; the frozen weights take half the memory.  Exports keep float32.
    frozen_weights_in_compute_dtype: bool = True
    # float32 matmuls on TF32 tensor cores (Ampere and later; 10-bit mantissa inputs, fp32 accumulation), as
    # torch.set_float32_matmul_precision("high") does on a GPU; the CPU keeps exact float32
    tf32: bool = True
    # AdamW's fused kernel (one launch for every tensor): "auto" on CUDA, off on the CPU (where torch's per-tensor
    # loop is its reference implementation; the fused kernel's float rounding differs in the last bits)
    fused_optimizer: Literal["auto", "on", "off"] = "auto"
    # Activation (gradient) checkpointing: each decoder block keeps only its input in the forward and runs its
    # forward again in the backward: less activation memory for one more forward of the blocks the backward
    # passes through (counted in train FLOPs).  Not with prefix tuning (PEFT feeds its prefix as a cache).
    gradient_checkpointing: bool = False
    # Several processes: shard the weights, gradients and optimizer state over them (FSDP2, through Accelerate's
    # FSDP plugin; each decoder block its own unit), for a model whose training state does not fit one device.
    # Full fine-tuning and LoRA; the same losses and saved weights as data parallel.  One process: no effect.
    # ``accelerate launch`` with an FSDP (version 2) config does the same.
    fsdp: bool = False
    # torch.compile each decoder block while training (regional compilation: one block's graph serves them all,
    # names and saved weights unchanged); the evaluation and generation run eager.  Costs a compilation per new
    # batch shape at the start (tens of seconds on a CPU); pays off on a GPU's long runs.
    compile: bool = False
    # Several processes: how long a rank waits at a barrier or collective before the job fails.  torch's NCCL
    # default (10 min) is shorter than rank 0 downloading and tokenizing CNN/DailyMail while the others wait.
    process_group_timeout_minutes: float = positive(120.0)
    progress: bool = True
    # experiment trackers (``--report-to``): tensorboard, wandb, mlflow, aim, ... or all; empty: none
    report_to: list[str] = field(default_factory=list)


@dataclass
class DecodingConfig:
    """How summaries are generated: the same rules for every method, in the evaluation, ``summarize`` and
    ROUGE-based checkpoint selection.  Beam search follows transformers' ``generate()`` (tested token for
    token); fairseq's BART CNN/DailyMail setting is beam 4, length penalty 2.0, 55-140 tokens, no 3-gram twice."""

    num_beams: int = positive(1)
    length_penalty: float = 1.0  # beam search: a finished hypothesis scores sum(log p) / new_tokens ** length_penalty
    early_stopping: bool = True  # beam search: an article is done once num_beams hypotheses have finished
    min_new_tokens: int = non_negative(0)  # the end-of-text token is forbidden before this many new tokens
    max_new_tokens: int = positive(128)
    no_repeat_ngram_size: int = non_negative(3)  # on the generated tokens only (not the article)
    do_sample: bool = False  # top-k sampling instead of greedy (num_beams 1)
    top_k: int = non_negative(0)  # sampling: draw among the k most likely tokens (0: all)
    seed: int = 0  # sampling: each article's generator is seeded from this and the article's tokens
    max_sentences: int | None = positive(None)  # keep only the first N generated sentences


@dataclass
class BertScoreConfig:
    """BERTScore (``eval.metrics`` names ``bertscore``; needs ``pip install 'peftsum[bertscore]'``)."""

    model: str = "roberta-large"  # a hub id or a local folder; bert-score's (and the literature's) English default
    num_layers: int | None = positive(None)  # the layer whose embeddings are matched; None: bert-score's table
    batch_size: int = positive(32)
    device: str | None = None  # None: bert-score's choice (CUDA when there is one)


@dataclass
class EvalConfig:
    batch_size: int = positive(16)
    # the metrics each evaluation computes (peftsum.evaluate.registry); null: every metric that needs no model (ROUGE
    # and the summary statistics); a list adds model-based ones such as bertscore (rougeLsum is always computed)
    metrics: list[str] | None = None
    bertscore: BertScoreConfig = field(default_factory=BertScoreConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    limit: int | None = positive(None)
    bootstrap: int = positive(1000)
    examples: int = non_negative(5)  # the report shows this many seeded test articles with every method's summary
    # torch.compile the decode step of generation (a static cache of one width per evaluation; on a GPU also a CUDA
    # graph): the same tokens, one compilation per batch size at the start; pays off on a GPU's long generations.
    compile: bool = False


@dataclass
class SweepConfig:
    """``peftsum sweep``: one Optuna study per method on the validation split (never the test split)."""

    trials: int = positive(12)  # finished trials per method (complete or pruned), shared by every worker of a study
    steps: int = positive(300)  # optimizer steps of a trial's short run; its objective is the validation loss after them
    reports: int = positive(4)  # validations a trial makes (every steps/reports steps); the pruner reads them
    lr_factor: float = 10.0  # the learning rate is searched log-uniformly in [default / f, default * f]
    lora_ranks: list[int] = field(default_factory=list)  # also search LoRA's rank among these (empty: fixed)
    lora_rslora: list[bool] = field(default_factory=list)  # also search LoRA's scaling: [false, true] tries both
    lora_lr_ratios: list[float] = field(default_factory=list)  # also search LoRA+'s B/A learning-rate ratio
    lora_dora: list[bool] = field(default_factory=list)  # also search DoRA: [false, true] tries both
    num_prompts: list[int] = field(default_factory=list)  # also search the number of soft tokens
    last_layer_blocks: list[int] = field(default_factory=list)  # also search last-layer's trained blocks
    val_limit: int | None = positive(500)  # validation examples a trial reads (a fixed, seeded subset; None: all)
    seed: int = 0  # the sampler's seed


@dataclass
class GridConfig:
    """``peftsum compare`` over a grid (``--models``, ``--train-sizes``): every method on every model and training-set
    size, one comparison per cell (empty: the one model and size of model.name and data.train_size)."""

    models: list[str] = field(default_factory=list)
    train_sizes: list[int] = field(default_factory=list)


@dataclass
class Config:
    preset: Literal[PRESETS] | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    grid: GridConfig = field(default_factory=GridConfig)

    # --- derived values -------------------------------------------------------------------
    def method_section(self):
        """The method's own settings (QLoRA is LoRA's: the same adapter on a quantized base)."""
        return getattr(self.method, section_key(self.method.name), None)

    def quantization(self) -> str:
        """How the base model's linear layers load: ``model.quantize``, and nf4 for method qlora where that is none."""
        if self.method.name == QLORA and self.model.quantize == "none":
            return "nf4"
        return self.model.quantize

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

def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"config key '{key}': {value!r} is not one of: {', '.join(map(str, choices))}")
        return value
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
        if len(args) == 2 and typing.get_origin(args[0]) is Literal:  # a choice or null: say the choices
            _coerce(value, args[0], key)
        raise UserError(f"config key '{key}': expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):  # "4,8" or "false,true" from a command line: each item read as YAML
            value = [v.strip() if item is str else yaml.safe_load(v) for v in value.split(",") if v.strip()]
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


# Keys that are the behaviour now: {key: (the value the behaviour is, what to use for another)}.  They are dropped
# where they appear (an older run's config.yaml, which holds every method's section, loads); another value than the
# behaviour's is said once, with what replaces it.
REMOVED = {
    "method.lora.backend": ("peftsum", "PEFT's own LoRA layers run as method peft with a LoraConfig JSON "
                                       "(method.peft.config, peft_type LORA)"),
    "method.last_layer.cache_features": (True, "a frozen trunk's features are always computed once (the same loss as "
                                               "running the trunk at every step, a fraction of the work)"),
}


_SAID: set[tuple[str, Any]] = set()


def _merge(obj, data: dict, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise UserError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        full = f"{prefix}{key}"
        if full in REMOVED:
            kept, instead = REMOVED[full]
            if value != kept and (full, value) not in _SAID:
                _SAID.add((full, value))
                log.warning("config key '%s' is gone (%r ignored): %s", full, value, instead)
            continue
        if key not in names:
            raise UserError(
                f"unknown config key '{full}'; valid keys in '{prefix.rstrip('.') or '<root>'}': {', '.join(names)}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{full}.")
        else:
            setattr(obj, key, _coerce(value, hints[key], full))


def _check_fields(obj, prefix: str = "") -> None:
    """Every field against its annotation (type, ``Literal`` choices) and its ``range`` metadata
    (:func:`positive`, :func:`non_negative`, :func:`fraction`): values set in code are checked as a file's are."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _check_fields(value, f"{key}.")
            continue
        _coerce(value, hints[f.name], key)
        if value is not None and "range" in f.metadata:
            low, inclusive, high = f.metadata["range"]
            if value < low or (value == low and not inclusive):
                raise UserError(f"config key '{key}' must be {'>=' if inclusive else '>'} {low}, got {value!r}")
            if high is not None and value >= high:
                raise UserError(f"config key '{key}' must be in [{low}, {high}), got {value!r}")


def validate(cfg: Config) -> Config:
    """Check every field (:func:`_check_fields`), then the rules across fields; changes nothing."""
    _check_fields(cfg)
    if "{article}" not in cfg.data.template or "{summary}" not in cfg.data.template:
        raise UserError("config key 'data.template' must contain both {article} and {summary}")
    if cfg.data.template.index("{article}") > cfg.data.template.index("{summary}"):
        raise UserError("config key 'data.template': {article} must come before {summary}")
    if cfg.sweep.lr_factor <= 1:
        raise UserError(f"config key 'sweep.lr_factor' must be > 1, got {cfg.sweep.lr_factor}")
    in_range = {"lora_ranks": lambda v: v >= 1, "num_prompts": lambda v: v >= 1, "last_layer_blocks": lambda v: v >= 0,
                "lora_lr_ratios": lambda v: v > 0}
    for key, ok in in_range.items():
        values = getattr(cfg.sweep, key)
        if not all(map(ok, values)):
            raise UserError(f"config key 'sweep.{key}' holds a value out of range: {values}")
    if not all(n >= 1 for n in cfg.grid.train_sizes):
        raise UserError(f"config key 'grid.train_sizes' must hold positive sizes, got {cfg.grid.train_sizes}")
    dec = cfg.eval.decoding
    if dec.min_new_tokens > dec.max_new_tokens:
        raise UserError(f"config key 'eval.decoding.min_new_tokens' ({dec.min_new_tokens}) exceeds max_new_tokens "
                        f"({dec.max_new_tokens})")
    if dec.do_sample and dec.num_beams > 1:
        raise UserError("eval.decoding: do_sample with num_beams > 1 (beam sampling) is not offered; set one of them")
    if cfg.quantization() != "none" and cfg.method.name in UNQUANTIZABLE:
        raise UserError(f"model.quantize {cfg.model.quantize}: method {cfg.method.name} trains the base model's own "
                        "weights, which a quantized base freezes; quantize for lora, qlora, prompt-tuning or peft, or set "
                        "model.quantize none")
    if cfg.train.fsdp and cfg.method.name not in (*FSDP_METHODS, *UNTRAINED_METHODS):
        raise UserError(f"train.fsdp shards full fine-tuning and lora; method {cfg.method.name} is not offered with it "
                        "(use data parallel: set train.fsdp false)")
    if cfg.train.fsdp and cfg.train.compile:
        raise UserError("train.compile with train.fsdp is not offered (not tested together); set one of them false")
    if cfg.train.fsdp and cfg.train.select_by != "loss":
        raise UserError("train.fsdp: selecting by validation ROUGE (train.select_by) generates from the sharded model "
                        "while it trains, which is not offered; select by loss")
    if cfg.method.name == PEFT_METHOD and not cfg.method.peft.config:
        raise UserError("method peft needs a PEFT config file: --set method.peft.config=FILE (as adapter_config.json "
                        "holds it, e.g. {\"peft_type\": \"IA3\", ...})")
    return cfg


def resolve(cfg: Config) -> Config:
    """Fill the values derived from others (a PEFT tuner's run name from its config file), then validate."""
    if cfg.method.name == PEFT_METHOD and cfg.method.peft.config and not cfg.method.peft.name:
        cfg.method.peft.name = peft_method_name(cfg.method.peft.config)
    return validate(cfg)


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
    return resolve(cfg)


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    _merge(cfg, data)
    return resolve(cfg)
