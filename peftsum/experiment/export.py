"""``peftsum export RUN OUT``: a finished run as a folder that transformers or PEFT loads without peftsum.

LoRA is merged into the base weights by default (``merge=False``: a PEFT adapter); last-layer (its untied
head included) and full fine-tuning write the whole model with ``save_pretrained``; prompt tuning cannot
be merged and is written as a PEFT adapter.  An adapter trained on a quantized base (QLoRA) is merged into the
base loaded in full precision, a slightly different model: the export measures the validation loss of both
(the same seeded examples) and reports the change.  The tokenizer and a model card go with each.  An adapter of
the demo base model also carries that base (``OUT/base``), which exists nowhere else.  The run's decoding goes
into ``generation_config.json``, and the card's "How to load" is code that gives the summaries the run scored.  OUT is written in
a temporary folder and moved into place at the end: an export that fails leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from transformers import AutoModelForCausalLM, GenerationConfig

from ..errors import UserError
from ..evaluate.generate import generation_settings
from ..evaluate.metrics import evaluate_loss
from ..model.demo_base import is_demo_model
from ..model.loading import is_quantized
from ..train.loop import validation_subset
from ..train.loss import SummaryLM
from ..utils import atomic_dir, write_text
from .card import model_card
from .results import read_results
from .run import load_trained
from .rundir import RESULTS

DEMO_BASE = "base"  # where an adapter export of the demo base model keeps that base
MERGE_CHECK_EXAMPLES = 200  # validation examples (seeded) on which a quantized run's merge is measured


def export_run(run_dir: str | Path, out: str | Path, merge: bool = True) -> dict:
    """Export ``run_dir`` into ``out`` (which must not exist or be empty); returns kind, path and a note."""
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / RESULTS).is_file():
        raise UserError(f"{run_dir} is not a finished run ({RESULTS} missing): train it to the end first")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not empty: export into a new folder")
    results = read_results(run_dir)
    parts = load_trained(run_dir, full_precision=True)  # merged weights from float32 ones
    if out.is_dir():
        out.rmdir()  # empty: replaced by the finished export in one rename
    merge_check = None
    with atomic_dir(out, "README.md") as tmp:
        kind, note = parts.method.export(parts.model, tmp, merge)
        parts.tokenizer.save_pretrained(str(tmp))
        # the run's decoding, for generate() (a model's own generation_config.json is replaced; an adapter gets one)
        tok = parts.tokenizer
        GenerationConfig(**generation_settings(parts.method.decoding(), tok.eos_token_id, tok.pad_token_id)
                         ).save_pretrained(str(tmp))
        base = None
        if kind == "adapter":
            base = _adapter_base(parts, tmp, out)
        if kind == "model" and is_quantized(parts.model):
            merge_check = merge_loss_change(parts, tmp)
            note += (f" Validation loss on {merge_check['examples']} seeded validation examples: "
                     f"{merge_check['quantized']:.4f} as trained (quantized base), {merge_check['merged']:.4f} "
                     f"merged into full-precision weights ({merge_check['change']:+.4f}).")
        write_text(tmp / "README.md", model_card(results, kind, path=str(out), base=base, note=note))
    return {"kind": kind, "path": str(out), "note": note, "merge_check": merge_check}


def merge_loss_change(parts, folder: Path) -> dict:
    """The validation loss of the run as trained (adapter on the quantized base) and of the merged model as written
    to ``folder`` and loaded back by plain transformers, on the same seeded validation examples."""
    cfg = parts.cfg
    data, _ = parts.load_data()
    val = validation_subset(data["validation"], MERGE_CHECK_EXAMPLES, cfg.train.seed)
    device = next(parts.model.parameters()).device
    merged = AutoModelForCausalLM.from_pretrained(str(folder)).to(device).eval()

    def loss(summary_lm) -> float:
        return evaluate_loss(summary_lm, val, cfg.eval.batch_size, device, parts.tokenizer.pad_token_id)["loss"]

    quantized, full = loss(parts.summary_lm), loss(SummaryLM(merged, parts.method))
    return {"examples": len(val), "quantized": quantized, "merged": full, "change": full - quantized}


def _adapter_base(parts, folder: Path, out: Path) -> str:
    """The base an adapter loads onto: the configured hub id or path; the demo base is copied beside it."""
    name = parts.cfg.model.name
    if not is_demo_model(name):
        return name
    shutil.copytree(parts.method.base_model_path(), folder / DEMO_BASE)
    config_file = folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = DEMO_BASE  # relative to the export: PeftModel is given the base itself
    write_text(config_file, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return str(out / DEMO_BASE)
