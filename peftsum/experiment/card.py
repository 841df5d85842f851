"""Model cards: the ``README.md`` of every run directory and every export, in the Hub's convention.

The metadata block (base model, library, tags, data set, the test metrics as a ``model-index``) is
written by ``huggingface_hub``'s :class:`~huggingface_hub.ModelCardData`; the body says what was trained,
on which data and split, with which hyperparameters, what it scored and how to load it.  Everything comes
from the run's ``results.json`` (its config included), so a card never disagrees with the run.
"""

from __future__ import annotations

from huggingface_hub import EvalResult, ModelCardData

from ..config import DEMO_PRESETS
from ..data.sources import is_hub_id
from ..evaluate.metrics import LABELS
from ..model.demo_base import is_demo_model
from .results import RunResult

DEMO_BANNER = ("> **Demo run.** The base model is peftsum's tiny demo model and the data its synthetic corpus: the "
               "numbers show the tool works, not how GPT-2 summarizes CNN/DailyMail.")

# how each kind of folder is loaded without peftsum (``{path}``: the folder, ``{base}``: the base model)
LOADING = {
    "model": '''```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
```''',
    "adapter": '''```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
```''',
    "run": '''```bash
peftsum summarize {path} article.txt      # one article
peftsum eval {path} --split test          # the evaluation again
peftsum export {path} OUT                 # a folder transformers (or PEFT) loads without peftsum
```''',
}


def _f(x, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def base_model_name(results: RunResult) -> str | None:
    """The base model as a hub id (or the user's path); None for the demo base, which exists only here."""
    name = results.config.model.name
    return None if is_demo_model(name) else name


def card_data(results: RunResult, library: str) -> ModelCardData:
    source = results.config.data.source
    hub_data = is_hub_id(source)
    name = f"{results.model}-{results.method}-summarization"
    evals = [EvalResult(task_type="summarization", dataset_type=source if hub_data else "local",
                        dataset_name=source if hub_data else "local data", dataset_split="test", metric_type="rouge",
                        metric_name=label, metric_value=round(results.eval.value(key), 2))
             for key, label in LABELS.items()]
    return ModelCardData(base_model=base_model_name(results), library_name=library, pipeline_tag="text-generation",
                         tags=["peftsum", "summarization", results.method], datasets=[source] if hub_data else None,
                         model_name=name, eval_results=evals)


def model_card(results: RunResult, kind: str, path: str = ".", base: str | None = None, note: str = "") -> str:
    """The card of a run directory (``kind="run"``) or of an export (``"model"`` or ``"adapter"``)."""
    cfg = results.config
    data, train, scores, params, cost = cfg.data, cfg.train, results.eval, results.params, results.cost
    training = results.training
    method = results.method
    # a run directory of LoRA, prompt tuning or a PEFT tuner is a PEFT adapter folder
    adapter_run = kind == "run" and (method in ("lora", "qlora", "prompt-tuning") or method.startswith("peft-"))
    library = "peft" if kind == "adapter" or adapter_run else "transformers"
    lines = ["---", card_data(results, library).to_yaml(), "---", "",
             f"# {method} on {results.model} for summarization", ""]
    if results.preset in DEMO_PRESETS or is_demo_model(cfg.model.name):
        lines += [DEMO_BANNER, ""]
    if note:
        lines += [note, ""]
    lines += [f"Made with [peftsum](https://pypi.org/project/peftsum/) {results.peftsum}: the base model "
              f"`{cfg.model.name}` adapted with **{method}** to continue `{data.template!r}` with the summary.",
              "", "## Training", "",
              "| setting | value |", "|---|---|"]
    rows = [("method", method), *((f"method.{k}", v) for k, v in results.method_hyperparameters.items()),
            ("learning rate", training.learning_rate), ("batch size x accumulation",
                                                        f"{train.batch_size} x {train.grad_accum}"),
            ("epochs (run / limit)", f"{training.epochs_run} / {train.epochs}"),
            ("early stopping patience", train.patience), ("best epoch", training.best_epoch),
            ("optimizer steps", training.steps), ("seed", train.seed),
            ("trainable parameters", f"{params.trainable:,}"), ("added parameters", f"{params.added:,}"),
            ("training time", f"{cost.train_seconds:.1f} s on {cost.device}")]
    lines += [f"| {k} | {v} |" for k, v in rows]
    split = results.data
    lines += ["", "## Data", "",
              f"Source `{data.source}` ({data.text_column} -> {data.summary_column}); "
              f"{split.train} train / {split.validation} validation / {split.test} test examples "
              f"(seed {data.seed}); articles cut to {results.article_budget()} tokens, summaries to "
              f"{data.max_target_tokens}. Early stopping read the validation split only.", "",
              "## Results", "",
              "| validation loss | test loss | " + " | ".join(LABELS.values()) + " | test articles |",
              "|---|---|" + "---|" * len(LABELS) + "---|",
              f"| {_f(scores.val_loss)} | {_f(scores.test_loss)} | "
              + " | ".join(_f(scores.value(k), ".2f") for k in LABELS) + f" | {scores.rouge_n} |", "",
              "Losses: mean negative log-likelihood per summary token. " + results.protocol.rouge
              + " On the generated new tokens only, decoded by "
              + (results.protocol.decoding_text or "the run's eval.decoding") + ".", "",
              "## How to load", "", LOADING[kind].format(path=path, base=base or base_model_name(results) or "BASE"), "",
              "Prompt: the article, then the template's text before the summary (`\\nTL;DR:` by default); the model "
              "continues with the summary and ends it with its end-of-text token.", ""]
    return "\n".join(lines)
