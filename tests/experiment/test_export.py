"""``peftsum export`` against the clients users load exports with: transformers' AutoModelForCausalLM and
PEFT's PeftModel, in a process that never imports peftsum; model cards read back with huggingface_hub;
run directories that still work after a move."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from peftsum.cli import main
from peftsum.experiment import evaluate_saved, load_trained, run_experiment

# computes the test loss of an export with transformers / PEFT only
LOSS_SCRIPT = r'''
import json, sys
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
out, examples, base = sys.argv[1:4]
skip = 0
if base != "-":
    from peft import PeftConfig, PeftModel
    config = PeftConfig.from_pretrained(out)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    if config.peft_type in ("PROMPT_TUNING", "P_TUNING"):
        skip = config.num_virtual_tokens
else:
    model = AutoModelForCausalLM.from_pretrained(out)
model.eval()
total, n = 0.0, 0
with torch.no_grad():
    for line in open(examples):
        e = json.loads(line)
        ids = torch.tensor([e["input_ids"]])
        p = e["prompt_len"]
        logits = model(input_ids=ids).logits[0, skip:]
        total += F.cross_entropy(logits[p - 1:-1].float(), ids[0, p:], reduction="sum").item()
        n += ids.shape[1] - p
print(json.dumps({"loss": total / n, "peftsum_imported": any(m.startswith("peftsum") for m in sys.modules)}))
'''

# runs a model card's "How to load" code as written (it prints the summary of ./article.txt), then its summarize()
# on more articles: what a user gets through transformers and PEFT alone
CARD_SCRIPT = r'''
import json, sys
code, articles = open(sys.argv[1]).read(), json.load(open(sys.argv[2]))
namespace = {}
exec(compile(code, "card", "exec"), namespace)
print(json.dumps({"summaries": [namespace["summarize"](a) for a in articles[1:]],
                  "peftsum_imported": any(m.startswith("peftsum") for m in sys.modules)}))
'''

METHODS = ["lora", "prompt-tuning", "last-layer", "full"]


def _card_summaries(out: Path, run: Path, demo_dir: Path, tmp_path: Path, n: int = 4) -> tuple[list[str], list[str]]:
    """The summaries the card's code writes for the first ``n`` test articles of the run's predictions, given the raw
    articles of the data set (white space made messier: runs of spaces, CRLF paragraph breaks), and the
    predictions the run stored for them."""
    import csv

    code = ModelCard.load(out / "README.md").text.split("```python\n", 1)[1].split("```", 1)[0]
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()][:n]
    with open(demo_dir / "test.csv", newline="") as f:
        raw = {row["id"]: row["article"] for row in csv.DictReader(f)}
    articles = ["  " + raw[p["id"]].replace(". ", ".   ").replace("\n", " \r\n\r\n") + " \n" for p in predictions]
    (tmp_path / "card.py").write_text(code)
    (tmp_path / "articles.json").write_text(json.dumps(articles))
    (tmp_path / "article.txt").write_text(articles[0])
    done = subprocess.run([sys.executable, "-c", CARD_SCRIPT, "card.py", "articles.json"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    r = json.loads(lines[-1])
    assert r["peftsum_imported"] is False
    return ["\n".join(lines[:-1]), *r["summaries"]], [p["prediction"] for p in predictions]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, compared, tiny_model_dir, demo_dir):
    """The shared compare's runs, copied (these tests move and export them), and LoRA on PEFT's own layers (method
    peft with a LoRA config)."""
    from peftsum.config import load_config
    from tests.conftest import tiny_overrides

    root = tmp_path_factory.mktemp("export-runs")
    out = {}
    for name in [*METHODS, "zero-shot"]:
        shutil.copytree(compared / name, root / name)
        out[name] = root / name
    config = root / "lora.json"
    config.write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["c_attn"],
                                  "fan_in_fan_out": True}))
    cfg = load_config("demo", None, tiny_overrides(tiny_model_dir, demo_dir, **{
        "method.name": "peft", "method.peft.config": str(config), "train.max_steps": 3,
        "eval.limit": 6}))
    run_experiment(cfg, root / "peft-lora")
    out["peft-lora"] = root / "peft-lora"
    return out


def _examples_file(run: Path, path: Path, limit: int | None = None) -> Path:
    """The first ``limit`` test examples (the run's eval.limit by default) as token ids, for a script without
    peftsum."""
    parts = load_trained(run)
    data, _ = parts.load_data()
    limit = limit or parts.cfg.eval.limit or len(data["test"])
    test = data["test"].select(range(min(limit, len(data["test"]))))
    path.write_text("".join(json.dumps({"input_ids": e["input_ids"], "prompt_len": e["prompt_len"]}) + "\n"
                            for e in test))
    return path


def _loss_without_peftsum(out: Path, examples: Path, base: str = "-") -> float:
    done = subprocess.run([sys.executable, "-c", LOSS_SCRIPT, str(out), str(examples), base],
                          capture_output=True, text=True, cwd=out.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    assert r["peftsum_imported"] is False
    return r["loss"]


@pytest.mark.parametrize("method, merge, kind", [
    ("lora", True, "model"),  # the fast suite's case; the others load in a fresh process too (slow)
    *(pytest.param(*case, marks=pytest.mark.slow) for case in [
        ("lora", False, "adapter"), ("peft-lora", True, "model"), ("prompt-tuning", True, "adapter"),
        ("last-layer", True, "model"), ("full", True, "model")]),
])
def test_export_loads_without_peftsum_with_the_same_test_loss(runs, tmp_path, tiny_model_dir, demo_dir, capsys, method,
                                                              merge, kind):
    run, out = runs[method], tmp_path / "export"
    assert main(["export", str(run), str(out), *([] if merge else ["--no-merge"])]) == 0
    printed = capsys.readouterr().out
    assert f"exported {kind}" in printed
    if method == "prompt-tuning":
        assert "cannot be merged" in printed
    files = {p.name for p in out.iterdir()}
    assert {"README.md", "tokenizer_config.json"} <= files
    assert ("adapter_config.json" in files) == (kind == "adapter") and ("config.json" in files) == (kind == "model")
    expected = evaluate_saved(run, "test", 6)["loss"]  # what `peftsum eval RUN` reports
    loss = _loss_without_peftsum(out, _examples_file(run, tmp_path / "ex.jsonl", 6),
                                 str(tiny_model_dir) if kind == "adapter" else "-")
    assert loss == pytest.approx(expected, rel=1e-5)
    card = ModelCard.load(out / "README.md")
    results = json.loads((run / "results.json").read_text())
    assert card.data.library_name == ("peft" if kind == "adapter" else "transformers")
    assert card.data.base_model == str(tiny_model_dir)
    rouge_l = [m for r in card.data.eval_results if r.metric_name == "ROUGE-L" for m in [r.metric_value]]
    assert rouge_l == [round(results["eval"]["metrics"]["rougeLsum"], 4)]  # the headline ROUGE-L is the summary-level one
    assert ("AutoModelForCausalLM.from_pretrained" in card.text) and (("PeftModel" in card.text) == (kind == "adapter"))
    # the card's code, run as written with transformers / PEFT alone, writes the summaries the report scored
    generation, decoding = json.loads((out / "generation_config.json").read_text()), results["config"]["eval"]["decoding"]
    assert (generation["num_beams"], generation["max_new_tokens"]) == (decoding["num_beams"], decoding["max_new_tokens"])
    assert generation.get("no_repeat_ngram_size") == decoding["no_repeat_ngram_size"] == 3
    written, stored = _card_summaries(out, run, demo_dir, tmp_path)
    assert written == stored


def test_merged_lora_logits_equal_the_adapter(runs, tmp_path, tiny_model_dir, tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert main(["export", str(runs["lora"]), str(tmp_path / "merged")]) == 0
    assert main(["export", str(runs["lora"]), str(tmp_path / "adapter"), "--no-merge"]) == 0
    ids = torch.tensor([tokenizer("Heavy rain flooded the old town on Monday.\nTL;DR:")["input_ids"]])
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
                                        str(tmp_path / "adapter")).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    with torch.no_grad():
        a, b, c = (m(input_ids=ids).logits for m in (merged, adapter, base))
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3)  # the adapter changed something
    assert not any("lora" in n for n, _ in merged.named_parameters())


@pytest.mark.slow
def test_adapter_of_the_demo_base_carries_it(runs, tmp_path, tiny_model_dir, demo_dir, monkeypatch):
    """A run on the demo base (built in peftsum's cache, on no hub) exports the base beside the adapter; the
    run directory itself names "demo", not the cache path."""
    import peftsum.model.loading as loading
    from peftsum.config import load_config
    from tests.conftest import tiny_overrides

    monkeypatch.setattr(loading, "demo_model_dir", lambda name: Path(tiny_model_dir))
    run = tmp_path / "run"
    cfg = load_config("demo", None, tiny_overrides("demo", demo_dir, **{"method.name": "lora", "train.max_steps": 1,
                                                                        "eval.limit": 6}))
    run_experiment(cfg, run)
    for name in ("adapter_config.json", "peftsum_method.json"):
        text = (run / name).read_text()
        assert str(tiny_model_dir) not in text and '"demo"' in text
    assert main(["export", str(run), str(tmp_path / "out"), "--no-merge"]) == 0
    assert (tmp_path / "out" / "base" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "out" / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
    examples = _examples_file(run, tmp_path / "ex.jsonl")
    loss = _loss_without_peftsum(tmp_path / "out", examples, str(tmp_path / "out" / "base"))
    assert loss == pytest.approx(evaluate_saved(run, "test", cfg.eval.limit)["loss"], rel=1e-5)


def test_a_moved_run_directory_still_works(runs, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "lora"
    shutil.copytree(runs["lora"], moved)
    article = tmp_path / "a.txt"
    article.write_text("Heavy rain flooded the old town on Monday, and officials said repairs would take weeks.")
    assert main(["summarize", str(runs["lora"]), str(article)]) == 0
    original = capsys.readouterr().out
    shutil.rmtree(runs["lora"].parent / "lora-gone", ignore_errors=True)
    runs["lora"].rename(runs["lora"].parent / "lora-gone")  # the original place no longer exists
    try:
        assert main(["summarize", str(moved), str(article)]) == 0
        assert capsys.readouterr().out == original
    finally:
        (runs["lora"].parent / "lora-gone").rename(runs["lora"])
    card = ModelCard.load(moved / "README.md")
    assert "peftsum summarize" in card.text and card.data.tags == ["peftsum", "summarization", "lora"]
    assert card.data.library_name == "peft"  # a LoRA run directory is a PEFT adapter folder


def test_export_refusals_leave_nothing(runs, tmp_path, capsys):
    assert main(["export", str(runs["zero-shot"]), str(tmp_path / "zs")]) == 2
    assert "trains nothing" in capsys.readouterr().err and not (tmp_path / "zs").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert main(["export", str(runs["full"]), str(busy)]) == 2
    assert "not empty" in capsys.readouterr().err and [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "o")]) == 2
    assert "not a finished run" in capsys.readouterr().err
    assert not list(tmp_path.glob(".o.*"))  # no temporary folder left


def test_a_mixed_precision_run_stores_frozen_weights_in_bf16_and_exports_float32(compared, tmp_path):
    """A run under bf16 mixed precision loads its frozen linear weights in bf16 (train.frozen_weights_in_compute_dtype);
    ``peftsum export`` (its own process: one mixed precision per process) merges into the float32 ones: a float32
    model equal to a merge done by hand in float32."""
    from transformers import AutoModelForCausalLM

    from peftsum.experiment import load_components, load_run_config

    run = tmp_path / "lora"
    shutil.copytree(compared / "lora", run)
    text = (run / "config.yaml").read_text()
    assert "mixed_precision: 'no'" in text  # the demo preset's
    (run / "config.yaml").write_text(text.replace("mixed_precision: 'no'", "mixed_precision: bf16"))
    cfg = load_run_config(run)
    parts = load_components(cfg, "cpu")
    assert parts.model.transformer.h[0].attn.c_attn.base.weight.dtype == torch.bfloat16
    assert parts.model.transformer.wte.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for _, p in parts.method.trainable_parameters(parts.model))
    done = subprocess.run([sys.executable, "-m", "peftsum.cli", "export", str(run), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert {p.dtype for p in exported.parameters()} == {torch.float32}
    full = load_components(cfg, "cpu", full_precision=True)
    assert full.model.transformer.h[0].attn.c_attn.base.weight.dtype == torch.float32
    full.method.load(full.model, run)
    merged = full.method.merge_and_unload(full.model)
    for (name, a), (_, b) in zip(exported.state_dict().items(), merged.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
