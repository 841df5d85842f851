"""QLoRA and ``model.quantize`` (methods/lora.py, model/loading.py): bitsandbytes' 4-bit NF4 and 8-bit layers under
our LoRA, checked against PEFT on the quantized and the full-precision base, plain transformers for the merged
export, and the error a user without bitsandbytes sees."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from peftsum.cli import main
from peftsum.config import load_config
from peftsum.data.collate import collate
from peftsum.evaluate.metrics import evaluate_loss
from peftsum.experiment import load_trained
from peftsum.experiment.export import MERGE_CHECK_EXAMPLES
from peftsum.experiment.run import load_components
from peftsum.model import loading
from peftsum.model.loading import is_quantized, quantization_config
from peftsum.train.loop import validation_subset
from peftsum.train.loss import SummaryLM
from peftsum.utils import read_jsonl
from tests.conftest import eval_figure, text_batch, tiny_overrides, train_args

ARTICLES = ["Officials in Redfield said the new bridge would open in May after two years of work.",
            "The council voted 7 to 2 on Tuesday to raise the tax on property."]


def trained_lora_grads(parts, batch) -> dict[str, torch.Tensor]:
    parts.method.train_mode(parts.model)
    nll, n = parts.summary_lm(**batch)
    (nll / n).backward()
    return {name: p.grad.clone() for name, p in parts.method.trainable_parameters(parts.model)}


def a_batch(parts):
    data, _ = parts.load_data()
    padded = collate([data["train"][i] for i in range(4)], parts.tokenizer.pad_token_id)
    return {k: padded[k] for k in ("input_ids", "attention_mask", "labels")}


@pytest.mark.parametrize("quantize", ["nf4", "int8"])
def test_a_quantized_base_trains_after_a_validation_as_before_it(tiny_cfg, quantize):
    """The loop validates (eval mode, no gradients) between training steps.  bitsandbytes' 4-bit layers repack their
    weights for inference at such a forward on CPUs with AVX512-BF16, and the repacked path has no backward: the
    gradients after a validation must equal those of a model that never validated, and reach the lowest block."""
    cfg = tiny_cfg("lora", **{"model.quantize": quantize, "method.lora.dropout": 0.0, "model.dropout": 0.0,
                              "method.lora.targets": ["c_attn", "c_fc"]})
    fresh = load_components(cfg)
    assert is_quantized(fresh.model)
    batch = a_batch(fresh)
    want = trained_lora_grads(fresh, batch)
    validated = load_components(cfg)
    with torch.no_grad():
        validated.model.eval()
        validated.summary_lm(**batch)
    got = trained_lora_grads(validated, batch)
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    lowest = [g for name, g in got.items() if ".h.0." in name and "lora_B" in name]  # A: 0 while B is
    assert lowest and all(g.abs().sum() > 0 for g in lowest)


def test_quantized_layers_hold_about_a_quarter_of_half_precision(gpt2_small_shape, tmp_path):
    """GPT-2 small's blocks in NF4: 4.13 bits a weight (the packed values, an absmax per 64, the double quantization's
    constants), 0.26 of their fp16 bytes; the counts of parameters are those of the unquantized model."""
    gpt2_small_shape.save_pretrained(tmp_path / "gpt2-small")
    cfg = load_config(None, None, [("model.name", str(tmp_path / "gpt2-small")), ("method.name", "qlora"),
                                   ("model.tokenizer", None)])
    model = loading.load_model(str(tmp_path / "gpt2-small"), quantize=cfg.quantization())
    blocks = [p for block in model.transformer.h for p in block.parameters() if hasattr(p, "quant_state")]
    numbers = sum(loading.logical_numel(p) for p in blocks)
    assert numbers == 12 * 12 * 768 * 768  # c_attn 3d², attn c_proj d², c_fc 4d², mlp c_proj 4d²
    stored = sum(t.numel() * t.element_size() for p in blocks for t in loading.stored_tensors(p))
    assert 0.25 < stored / (2 * numbers) < 0.27
    total = sum(loading.logical_numel(p) for p in {id(p): p for p in model.parameters()}.values())
    assert total == sum(p.numel() for p in gpt2_small_shape.parameters())


def test_qlora_adapter_loads_in_peft_on_the_4bit_and_the_full_precision_base(compared):
    """The run's adapter in PEFT: on the base quantized alike (BitsAndBytesConfig) the logits the run evaluated with;
    on the full-precision base those of ``export``'s merged model, a little away from the quantized ones."""
    run = compared / "qlora"
    parts = load_trained(run)
    base = json.loads((run / "peftsum_method.json").read_text())["base_model"]
    ids, mask = text_batch(parts.tokenizer, ARTICLES)
    with torch.no_grad():
        ours = parts.model(input_ids=ids, attention_mask=mask).logits
        quantized_base = AutoModelForCausalLM.from_pretrained(base, quantization_config=quantization_config("nf4"),
                                                              device_map={"": "cpu"})
        loading.keep_trainable_layout(quantized_base)  # the same kernel as the run (see test above)
        on_4bit = PeftModel.from_pretrained(quantized_base, run).eval()(input_ids=ids, attention_mask=mask).logits
        on_full = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), run).eval()
        full_logits = on_full(input_ids=ids, attention_mask=mask).logits
        merged = parts.method.merged_full_precision(parts.model).eval()(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(on_4bit, ours, rtol=0, atol=1e-5)
    torch.testing.assert_close(merged, full_logits, rtol=0, atol=1e-4)
    gap = (full_logits - ours).abs().max().item()
    assert 1e-3 < gap < 0.1 * ours.abs().max().item()


def test_export_merges_qlora_into_full_precision_and_reports_the_loss_change(compared, tmp_path, capsys):
    run = tmp_path / "qlora"
    shutil.copytree(compared / "qlora", run)
    assert main(["export", str(run), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")  # plain transformers
    assert not is_quantized(exported)
    parts = load_trained(run)
    data, _ = parts.load_data()
    val = validation_subset(data["validation"], MERGE_CHECK_EXAMPLES, parts.cfg.train.seed)
    pad = parts.tokenizer.pad_token_id
    quantized = evaluate_loss(parts.summary_lm, val, 4, "cpu", pad)["loss"]
    merged = evaluate_loss(SummaryLM(exported, parts.method), val, 4, "cpu", pad)["loss"]
    assert f"{quantized:.4f} as trained (quantized base), {merged:.4f} merged" in printed
    assert f"({merged - quantized:+.4f})" in printed
    assert merged != quantized and abs(merged - quantized) < 0.01 * quantized
    assert f"{merged:.4f} merged" in (tmp_path / "out" / "README.md").read_text()


def test_missing_bitsandbytes_is_one_clear_error(tiny_model_dir, demo_dir, tmp_path, monkeypatch, capsys):
    real = loading.importlib.util.find_spec
    monkeypatch.setattr(loading.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    assert main(train_args(tiny_model_dir, demo_dir, "qlora", tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs bitsandbytes" in err[0] and "pip install 'peftsum[qlora]'" in err[0]
    assert not (tmp_path / "run").exists()


def test_quantize_is_refused_for_methods_that_train_base_weights(tiny_model_dir, demo_dir, tmp_path, capsys):
    """By train, and by compare and sweep for the methods of a list, before anything runs or is written."""
    from tests.conftest import compare_args, set_args

    for method in ("full", "last-layer"):
        assert main(train_args(tiny_model_dir, demo_dir, method, tmp_path / method, **{"model.quantize": "nf4"})) == 2
        assert "trains the base model's own weights" in capsys.readouterr().err
        assert not (tmp_path / method).exists()
    assert main(compare_args(tiny_model_dir, demo_dir, tmp_path / "cmp", "lora,full", **{"model.quantize": "nf4"})) == 2
    assert "method full trains the base model's own weights" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()
    assert main(["sweep", "--preset", "demo", "--methods", "lora,last-layer", "--out", str(tmp_path / "sw"),
                 *set_args(tiny_model_dir, demo_dir, **{"model.quantize": "int8"})]) == 2
    assert "method last-layer trains the base model's own weights" in capsys.readouterr().err
    assert not (tmp_path / "sw").exists()
    cfg = load_config("demo", None, tiny_overrides(tiny_model_dir, demo_dir, **{"method.name": "qlora"}))
    assert cfg.quantization() == "nf4" and cfg.method_section() is cfg.method.lora
    cfg.model.quantize = "int8"
    assert cfg.quantization() == "int8"


@pytest.mark.slow
def test_two_processes_train_qlora_as_one(tiny_model_dir, demo_dir, tmp_path):
    """2 gloo processes, each loading the base quantized on its device, with batch 4 against 1 process with batch 8:
    the same training and validation losses and final figures."""
    extra = {"train.max_steps": 4, "method.lora.dropout": 0.0, "model.dropout": 0.0, "train.eval_every_steps": 2}
    runs = {}
    for procs, batch in ((1, 8), (2, 4)):
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"] if procs == 2 else []
        done = subprocess.run([sys.executable, *launcher, "-m", "peftsum.cli",
                               *train_args(tiny_model_dir, demo_dir, "qlora", tmp_path / str(procs), **extra,
                                           **{"train.batch_size": batch})],
                              capture_output=True, text=True, env=dict(os.environ), timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        runs[procs] = (read_jsonl(tmp_path / str(procs) / "metrics.jsonl"),
                       json.loads((tmp_path / str(procs) / "results.json").read_text()))
    (m1, r1), (m2, r2) = runs[1], runs[2]
    assert len(m1) == len(m2)
    for x, y in zip(m1, m2):
        for key in ("loss", "val_loss"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=1e-5)
    for key in ("val_loss", "test_loss", "rougeLsum"):
        assert eval_figure(r2, key) == pytest.approx(eval_figure(r1, key), rel=1e-5), key
    assert r2["cost"]["processes"] == 2 and r2["method_hyperparameters"]["quantize"] == "nf4"
