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
from ..evaluate.registry import registry
from ..methods import PeftTuner, entry
from ..model.demo_base import is_demo_model
from .results import RunResult

DEMO_BANNER = ("> **Demo run.** The base model is peftsum's tiny demo model and the data its synthetic corpus: the "
               "numbers show the tool works, not how GPT-2 summarizes CNN/DailyMail.")

# how each kind of folder is loaded without peftsum (``{path}``: the folder, ``{base}``: the base model)
LOADING = {
    "model": '''model = AutoModelForCausalLM.from_pretrained("{path}").eval()''',
    "adapter": '''base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{path}").eval()''',
    "run": '''```bash
peftsum summarize {path} article.txt      # one article
peftsum eval {path} --split test          # the evaluation again
peftsum export {path} OUT                 # a folder transformers (or PEFT) loads without peftsum
```''',
}

# The card's code: the summaries the run scored, through transformers (and PEFT) alone.  The prompt is built as
# peftsum's PromptBuilder builds it (each piece tokenized alone, the article cut to its budget), from the article as
# data/text.py's clean_text leaves it; generation starts from the prompt's embeddings, so that the no-repeat rule of
# generation_config.json sees only the new tokens (given input_ids, generate() applies it to the article too).
SUMMARIZE = '''```python
import torch
{imports}from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

{load}
tokenizer = AutoTokenizer.from_pretrained("{path}")
generation = GenerationConfig.from_pretrained("{path}")  # the run's decoding


def encode(text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def summarize(article: str) -> str:
    # the article as the evaluation read it: white space inside a line as one space, paragraphs one newline apart
    lines = (" ".join(line.split()) for line in article.replace("\\r", "\\n").split("\\n"))
    article = "\\n".join(line for line in lines if line)
    first = tokenizer("a")["input_ids"][: -len(encode("a"))]  # a BOS where the tokenizer adds one (GPT-2: none)
    ids = torch.tensor([first + encode({before!r}) + encode(article)[:{budget}] + encode({between!r})])
    embeds = model.get_input_embeddings()(ids){soft_prompt}
    with torch.no_grad():  # from embeddings: the no-repeat rule sees the new tokens only, as in the evaluation
        out = {generator}.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long),
                                   generation_config=generation)
    return tokenizer.decode(out[0], skip_special_tokens=True).strip()


print(summarize(open("article.txt").read()))
```'''

SOFT_PROMPT = """
    embeds = torch.cat([model.get_prompt(batch_size=1), embeds], dim=1)  # the trained soft prompt, in front"""


def how_to_load(results: RunResult, kind: str, path: str, base: str) -> str:
    """The card's "How to load": for an export, code that prints the summary the run would score for article.txt."""
    if kind == "run":
        return LOADING["run"].format(path=path)
    from ..data.tokenize import Template

    template = Template.parse(results.config.data.template)
    soft = entry(results.method).soft_prompt
    code = SUMMARIZE.format(imports="from peft import PeftModel\n" if kind == "adapter" else "",
                            load=LOADING[kind].format(path=path, base=base), path=path, before=template.before,
                            between=template.between, budget=results.article_budget(),
                            soft_prompt=SOFT_PROMPT if soft else "", generator="model.base_model" if soft else "model")
    decoding = results.config.eval.decoding
    caveats = []
    if decoding.max_sentences:
        caveats.append(f"the evaluation kept the first {decoding.max_sentences} sentences of this summary (NLTK's "
                       "Punkt splitter, newlines as boundaries): `generate()` does not cut")
    if decoding.do_sample:
        caveats.append("the evaluation sampled with a generator seeded per article; `generate()` draws from torch's "
                       "global generator, so sampled summaries differ")
    if entry(results.method) is PeftTuner:
        caveats.append("a PEFT prompt-learning tuner other than prompt tuning (prefix tuning, P-tuning) feeds its "
                       "virtual tokens itself: load it with PEFT and call `model.generate(input_ids=...)`, which applies "
                       "the no-repeat rule to the article too")
    text = [code, "", "`generation_config.json` holds the run's decoding (" + (results.protocol.decoding_text or "")
            + "). Zero-shot's GPT-2-paper protocol (top-k sampling, the first three sentences) is not a trained "
            "model and is not exported."]
    if caveats:
        text += ["", "What `generate()` alone does not do: " + "; ".join(caveats) + "."]
    return "\n".join(text)


def _f(x, fmt: str = ".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def base_model_name(results: RunResult) -> str | None:
    """The base model as a hub id (or the user's path); None for the demo base, which exists only here."""
    name = results.config.model.name
    return None if is_demo_model(name) else name


def _metric_labels(results: RunResult) -> dict[str, str]:
    """Each metric the run computed, by its registered label (the registry's order; a metric no longer registered by
    its name)."""
    reg = registry()
    names = sorted(results.eval.metrics, key=lambda k: list(reg).index(k) if k in reg else len(reg))
    return {k: reg[k].label if k in reg else k for k in names}


def card_data(results: RunResult, library: str) -> ModelCardData:
    source = results.config.data.source
    hub_data = is_hub_id(source)
    name = f"{results.model}-{results.method}-summarization"
    quality = {k for k, m in registry().items() if m.group == "overlap"}  # the hub's metrics: scores, not descriptions
    evals = [EvalResult(task_type="summarization", dataset_type=source if hub_data else "local",
                        dataset_name=source if hub_data else "local data", dataset_split="test", metric_type=key,
                        metric_name=label, metric_value=round(results.eval.value(key), 4))
             for key, label in _metric_labels(results).items() if key in quality]
    return ModelCardData(base_model=base_model_name(results), library_name=library, pipeline_tag="text-generation",
                         tags=["peftsum", "summarization", results.method], datasets=[source] if hub_data else None,
                         model_name=name, eval_results=evals)


def model_card(results: RunResult, kind: str, path: str = ".", base: str | None = None, note: str = "") -> str:
    """The card of a run directory (``kind="run"``) or of an export (``"model"`` or ``"adapter"``)."""
    cfg = results.config
    data, train, scores, params, cost = cfg.data, cfg.train, results.eval, results.params, results.cost
    training = results.training
    method = results.method
    labels = _metric_labels(results)
    formats = {k: m.fmt for k, m in registry().items()}
    # a run directory of LoRA, prompt tuning or a PEFT tuner is a PEFT adapter folder
    adapter_run = kind == "run" and entry(method).adapter_folder
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
              "| validation loss | test loss | " + " | ".join(labels.values()) + " | test articles |",
              "|---|---|" + "---|" * len(labels) + "---|",
              f"| {_f(scores.val_loss)} | {_f(scores.test_loss)} | "
              + " | ".join(_f(scores.value(k), formats.get(k, ".2f")) for k in labels) + f" | {scores.examples} |",
              "",
              "Losses: mean negative log-likelihood per summary token. " + results.protocol.rouge
              + " On the generated new tokens only, decoded by "
              + (results.protocol.decoding_text or "the run's eval.decoding") + ".", "",
              "## How to load", "", how_to_load(results, kind, path, base or base_model_name(results) or "BASE"), "",
              "Prompt: the article, then the template's text before the summary (`\\nTL;DR:` by default); the model "
              "continues with the summary and ends it with its end-of-text token.", ""]
    return "\n".join(lines)
