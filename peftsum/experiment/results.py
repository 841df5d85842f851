"""One run's results: the typed record ``RUN/results.json`` holds, written and read here and nowhere else.

``RunResult`` is what ``run_experiment`` returns and what the report, the model card, the trackers and the
CLI read, attribute by attribute (``result.eval.value("rougeLsum")``, ``result.cost.train_seconds``).  The file
carries ``schema_version``; a file of another version (or a damaged one) is one clear error naming the run
directory, never a KeyError deep in the report.  Versions 1 (the files written before the version existed) and
2 held the four ROUGE scores as fields of ``eval`` (and ``rouge_n`` for ``examples``): they are read into
``eval.metrics``.

Sections:

* ``params``: parameter counts (``added`` = parameters the method put into the model; ``adapter_bytes``: what
  it saved on disk);
* ``eval``: the final evaluation (losses on the validation and test splits; ``metrics``: each registered metric's
  mean on the test split's summaries, ROUGE F1 x 100 among them; their mean length in tokens and the share cut at
  the token limit);
* ``cost``: training time, throughput, peak memory, FLOPs and MFU;
* ``training``: how training went (steps, epochs, the validation history, why it stopped);
* ``protocol``: how the scores were made (ROUGE variant, decoding, sentence splitter);
* ``data``: split sizes, source, the token budget and the share of articles it cut;
* ``config``: the run's whole validated config.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, config_from_dict
from ..errors import UserError
from ..utils import write_json

SCHEMA_VERSION = 3
RESULTS = "results.json"


@dataclass
class Params:
    total: int = 0
    trainable: int = 0
    added: int = 0  # parameters the method added to the base model
    adapter_bytes: int = 0  # bytes on disk of what the method saved


@dataclass
class Scores:
    val_loss: float | None = None  # token-weighted NLL of the summary tokens
    test_loss: float | None = None
    test_perplexity: float | None = None
    # each metric the evaluation computed (peftsum.evaluate.registry: ROUGE F1 x 100, the summary statistics, ...):
    # its mean over the test articles
    metrics: dict[str, float] = field(default_factory=dict)
    mean_generated_tokens: float | None = None  # None for Lead-3, which generates nothing
    hit_max_new_tokens: float | None = None  # share of summaries cut at eval.decoding.max_new_tokens
    examples: int = 0  # test articles scored

    def value(self, key: str) -> float | None:
        """A figure by its name: a metric (``rougeLsum``, ``novel_2gram``, ...) or a field (``val_loss``)."""
        if key in self.metrics:
            return self.metrics[key]
        if key not in SCORE_KEYS or key == "metrics":
            raise KeyError(key)
        return getattr(self, key)


SCORE_KEYS = frozenset(f.name for f in dataclasses.fields(Scores))


@dataclass
class Cost:
    train_seconds: float = 0.0  # the optimizer steps, the trunk's feature cache, ROUGE-based selection
    eval_seconds: float = 0.0
    examples_per_second: float | None = None
    tokens_per_second: float | None = None
    tokens_per_second_per_device: float | None = None
    processes: int = 1
    peak_memory_bytes: int | None = None  # the whole run's peak (the largest of its phases)
    memory_measure: str = ""
    # the training state by its parts, exact bytes of the tensors (weights: all the model's, frozen included)
    weights_bytes: int = 0
    gradient_bytes: int = 0
    optimizer_bytes: int = 0
    # measured peaks, each from the start of its phase (weights and data are inside them: what was resident)
    train_peak_bytes: int | None = None
    eval_peak_bytes: int | None = None
    reserved_peak_bytes: int | None = None  # CUDA: the allocator's peak reservation; None on the CPU
    train_flops: float = 0.0
    mfu: float | None = None
    device: str = ""
    mixed_precision: str = ""  # what the run trained and generated in: no, bf16 or fp16 (train.mixed_precision auto decides)
    peak_flops: float | None = None  # the MFU's denominator per device, in the matmuls' precision
    peak_source: str = ""  # "datasheet" or "measured" (a GPU the table does not name)

    @property
    def training_state_bytes(self) -> int:
        """The whole training state: weights, gradients and optimizer state."""
        return self.weights_bytes + self.gradient_bytes + self.optimizer_bytes


@dataclass
class Training:
    epochs_run: int = 0
    best_epoch: int | None = None
    steps: int = 0
    early_stopped: bool = False
    stopped_reason: str = "not trained"
    best_step: int | None = None
    validation_history: list[float] = field(default_factory=list)
    initial_val_loss: float | None = None
    feature_cache_bytes: int = 0
    learning_rate: float | None = None
    tokens: int = 0
    examples: int = 0
    target_tokens: int = 0
    select_by: str | None = None
    selection_seconds: float = 0.0
    validation_scores: list[float] = field(default_factory=list)
    best_value: float | None = None
    # sequences per forward pass that ran: after out-of-memory back-offs (oom_backoffs of them), else the configured
    # train.micro_batch_size (None: the whole batch on a GPU, the attention-size rule on a CPU)
    micro_batch_size: int | None = None
    oom_backoffs: int = 0


@dataclass
class Protocol:
    rouge: str = ""
    headline: str = "rougeLsum"
    sentence_splitter: str = ""
    decoding: dict = field(default_factory=dict)
    decoding_text: str = ""
    zero_shot: str | None = None
    select_by: str | None = None


@dataclass
class DataSummary:
    train: int = 0
    validation: int = 0
    test: int = 0
    source: str = ""
    budget: dict = field(default_factory=dict)  # the token budget: source, summary, template, ...
    articles_truncated: dict = field(default_factory=dict)  # split -> share of articles cut to the budget


@dataclass
class RunResult:
    method: str
    model: str
    preset: str | None
    config: Config
    params: Params = field(default_factory=Params)
    eval: Scores = field(default_factory=Scores)
    cost: Cost = field(default_factory=Cost)
    training: Training = field(default_factory=Training)
    protocol: Protocol = field(default_factory=Protocol)
    data: DataSummary = field(default_factory=DataSummary)
    method_hyperparameters: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    peftsum: str = ""
    schema_version: int = SCHEMA_VERSION

    @property
    def trained(self) -> bool:
        return bool(self.training.steps)

    def article_budget(self) -> int | None:
        """The article tokens the run's method read (the resolved budget; the configured cap where absent)."""
        return self.data.budget.get("source", self.config.data.max_source_tokens)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["config"] = self.config.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "results") -> RunResult:
        version = d.get("schema_version", 1)
        if version not in (1, 2, SCHEMA_VERSION):
            raise UserError(f"{where} has results schema {version}; this peftsum reads {SCHEMA_VERSION} (and 1, 2): "
                            "run it again with this version (--rerun)")
        if version < 3 and isinstance(d.get("eval"), dict):  # the ROUGE fields of versions 1 and 2
            ev = dict(d["eval"])
            ev["metrics"] = {**ev.get("metrics", {}),
                             **{k: ev.pop(k) for k in ("rouge1", "rouge2", "rougeLsum", "rougeL") if k in ev}}
            if "rouge_n" in ev:
                ev["examples"] = ev.pop("rouge_n")
            d = {**d, "eval": ev}
        try:
            sections = {f.name for f in dataclasses.fields(cls)}
            kinds = {"params": Params, "eval": Scores, "cost": Cost, "training": Training, "protocol": Protocol,
                     "data": DataSummary}
            values = {k: v for k, v in d.items() if k in sections and k not in kinds and k != "config"}
            values.update({k: kind(**d.get(k, {})) for k, kind in kinds.items()})
            return cls(config=config_from_dict(d["config"]), **{**values, "schema_version": SCHEMA_VERSION})
        except (KeyError, TypeError) as e:
            raise UserError(f"{where} does not hold a peftsum results record ({type(e).__name__}: {e}); delete that "
                            "run directory, or run it again with --rerun") from None


def write_results(run_dir: Path, result: RunResult) -> None:
    write_json(Path(run_dir) / RESULTS, result.to_dict())


def read_results(run_dir: Path) -> RunResult:
    path = Path(run_dir) / RESULTS
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{run_dir} has no {RESULTS}: the run has not finished") from None
    except ValueError:
        raise UserError(f"{path} is not valid JSON; delete that run directory and run it again") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a peftsum results record")
    return RunResult.from_dict(data, str(path))
