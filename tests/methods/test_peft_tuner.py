"""Any PEFT tuner through the same protocol (``--method peft``, ``compare --methods peft:FILE``): IA³
(injected layers) and prefix tuning (a key/value prefix), checked against PEFT's own model and generate()."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from peftsum.cli import main
from peftsum.config import load_config
from peftsum.errors import UserError
from peftsum.methods import OwnTrunk, build_method
from peftsum.model.loading import load_model
from peftsum.train.loss import SummaryLM
from peftsum.utils import read_jsonl
from tests.conftest import compare_args, raw_test_articles, set_args

IA3 = {"peft_type": "IA3", "target_modules": ["c_attn", "mlp.c_proj"], "feedforward_modules": ["mlp.c_proj"],
       "fan_in_fan_out": True}
PREFIX = {"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 6}
PTUNING = {"peft_type": "P_TUNING", "num_virtual_tokens": 5, "encoder_hidden_size": 32}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("peft-configs")
    for name, cfg in (("ia3", IA3), ("prefix", PREFIX), ("ptuning", PTUNING)):
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    return folder


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_dir, demo_dir, configs):
    out = tmp_path_factory.mktemp("peft-compare")
    methods = f"lora,peft:{configs / 'ia3.json'},peft:{configs / 'prefix.json'}"
    # greedy: prefix tuning refuses beam search
    assert main(compare_args(tiny_model_dir, demo_dir, out, methods=methods,
                             **{"method.peft.lr": 3e-2, "eval.decoding.num_beams": 1})) == 0
    return out


def _cfg(tiny_model_dir, config_file, **kw):
    return load_config(None, None, [("method.name", "peft"), ("model.name", str(tiny_model_dir)),
                                    ("method.peft.config", str(config_file)), *kw.items()])


def test_compare_runs_peft_tuners_beside_the_built_in_methods(compared):
    for name in ("lora", "peft-ia3", "peft-prefix"):
        r = json.loads((compared / name / "results.json").read_text())
        assert r["method"] == name and r["training"]["steps"] == 3 and r["eval"]["metrics"]["rougeL"] is not None
    report = (compared / "report.md").read_text()
    assert "peft-ia3" in report and "peft-prefix" in report
    rows = (compared / "results.csv").read_text().splitlines()
    assert sorted(line.split(",")[0] for line in rows[1:]) == ["lora", "peft-ia3", "peft-prefix"]


def test_parameter_counts_by_formula(compared, tiny_model_dir):
    cfg = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).config
    d, L = cfg.n_embd, cfg.n_layer
    ia3 = json.loads((compared / "peft-ia3" / "results.json").read_text())["params"]
    assert ia3["trainable"] == ia3["added"] == L * (3 * d + 4 * d)  # scales c_attn's outputs and c_proj's inputs
    prefix = json.loads((compared / "peft-prefix" / "results.json").read_text())["params"]
    assert prefix["trainable"] == prefix["added"] == 6 * 2 * L * d  # a key and a value per layer per virtual token


@pytest.mark.parametrize("name", ["peft-ia3", "peft-prefix"])
def test_peft_loads_the_run_with_the_same_logits(compared, tiny_model_dir, tokenizer, name):
    run = compared / name
    from peftsum.experiment import load_trained

    parts = load_trained(run)
    ids = torch.tensor([tokenizer("Heavy rain flooded the old town on Monday.\nTL;DR: Rain")["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ours = parts.model.get_output_embeddings()(parts.summary_lm.hidden_states(ids, mask))
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(run)).eval()
        theirs = peft_model(input_ids=ids, attention_mask=mask).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()(input_ids=ids).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, base, atol=1e-4)  # trained: it changed the model


@pytest.mark.parametrize("name", ["peft-ia3", "peft-prefix"])
def test_summarize_prints_what_the_evaluation_stored(compared, demo_dir, tmp_path, capsys, name):
    preds = read_jsonl(compared / name / "predictions.jsonl")
    articles = raw_test_articles(demo_dir, [p["id"] for p in preds])
    for k in (0, len(preds) - 1):
        (tmp_path / "a.txt").write_text(articles[k], encoding="utf-8")
        assert main(["summarize", str(compared / name), str(tmp_path / "a.txt")]) == 0
        assert capsys.readouterr().out.strip() == preds[k]["prediction"].strip()


def test_a_moved_peft_run_needs_not_its_config_file(compared, configs, tmp_path, capsys):
    """The tuner's config travels with its weights: the run loads without the file it was made from."""
    moved = tmp_path / "moved"
    shutil.copytree(compared / "peft-ia3", moved)
    hidden = configs / "ia3.json.away"
    (configs / "ia3.json").rename(hidden)
    try:
        assert main(["eval", str(moved), "--split", "test"]) == 0
        printed = capsys.readouterr().out
    finally:
        hidden.rename(configs / "ia3.json")
    r = json.loads((compared / "peft-ia3" / "results.json").read_text())
    loss = float(next(line for line in printed.splitlines() if line.strip().startswith("loss:")).split(":")[1])
    assert loss == pytest.approx(r["eval"]["test_loss"], abs=1e-4)


@torch.no_grad()
def _plain_greedy(peft_model, ids, n_new, eos, no_repeat):
    """Greedy decoding by full forward passes of PEFT's model, the n-gram rule on the new tokens only."""
    new: list[int] = []
    for _ in range(n_new):
        seq = torch.cat([ids, torch.tensor([new], dtype=torch.long)], 1) if new else ids
        logits = peft_model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits[0, -1]
        if no_repeat and len(new) >= no_repeat - 1:
            prefix = tuple(new[len(new) - no_repeat + 1:]) if no_repeat > 1 else ()
            for i in range(len(new) - no_repeat + 1):
                if tuple(new[i:i + no_repeat - 1]) == prefix:
                    logits[new[i + no_repeat - 1]] = -float("inf")
        token = int(logits.argmax())
        if token == eos:
            break
        new.append(token)
    return new


@pytest.mark.parametrize("spec", [IA3, PREFIX, PTUNING])
def test_generation_equals_a_plain_greedy_decode(tmp_path, spec):
    """IA³ and P-tuning take peftsum's fast greedy loop, prefix tuning PEFT's generate() (the stated fall
    back): both give the tokens of step-by-step greedy decoding with PEFT's own forward."""
    from peftsum.evaluate.generate import generate_ids, hf_generate_ids
    from tests.model.test_arch import tiny_config

    (tmp_path / "c.json").write_text(json.dumps(spec))
    torch.manual_seed(2)
    cfg = tiny_config("gpt2", vocab=1000, eos=999)
    cfg.initializer_range = 0.3
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(str(tmp_path / "base"))
    ecfg = load_config(None, None, [("method.name", "peft"), ("method.peft.config", str(tmp_path / "c.json")),
                                    ("eval.decoding.max_new_tokens", 10), ("eval.decoding.no_repeat_ngram_size", 2)])
    m = build_method(ecfg)
    m.prepare_model(model)
    with torch.no_grad():
        for _, p in m.trainable_parameters(model):
            p.add_(torch.randn_like(p) * 0.5)
    model.eval()
    assert isinstance(m, OwnTrunk) == (spec is PREFIX)  # only prefix tuning needs its own trunk call and decoding
    m.save(model, tmp_path / "run")
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tmp_path / "base")),
                                          str(tmp_path / "run")).eval()
    prompts = [torch.randint(0, 999, (n,)) for n in (9, 4, 7)]
    T = max(len(p) for p in prompts)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):], mask[i, T - len(p):] = p, 1
    ours = generate_ids(model, m, ids, mask, ecfg.eval.decoding, 999, 0)
    plain = [_plain_greedy(reference, p[None], 10, 999, 2) for p in prompts]
    assert ours == plain
    assert len({tuple(r) for r in ours}) > 1
    if spec is not PREFIX:  # beam search on the batched path equals generate() on the same weights
        beam = dataclasses.replace(ecfg.eval.decoding, num_beams=4, length_penalty=2.0, min_new_tokens=3)
        slow = [hf_generate_ids(model, m, p[None], torch.ones(1, len(p), dtype=torch.long), beam, 999, 0)[0]
                for p in prompts]
        assert generate_ids(model, m, ids, mask, beam, 999, 0) == slow


def test_prefix_tuning_refuses_beam_search_before_training(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(PREFIX))
    with pytest.raises(UserError, match="prefix tuning generates greedily"):
        build_method(load_config(None, None, [("method.name", "peft"), ("method.peft.config", str(tmp_path / "p.json")),
                                              ("eval.decoding.num_beams", 4)]))


def test_a_bad_peft_config_is_one_clear_error(tiny_model_dir, demo_dir, tmp_path, capsys):

    bad = tmp_path / "bad.json"
    bad.write_text('{"target_modules": ["c_attn"]}')
    args = ["train", "--preset", "demo", "--method", "peft", "--out", str(tmp_path / "run"),
            *set_args(tiny_model_dir, demo_dir)]
    assert main([*args, "--set", f"method.peft.config={bad}"]) == 2
    assert "must be a JSON object with a peft_type" in capsys.readouterr().err
    assert main(args) == 2
    assert "method peft needs a PEFT config file" in capsys.readouterr().err
    bad.write_text('{"peft_type": "IA3", "target_modules": ["no_such_module"]}')
    assert main([*args, "--set", f"method.peft.config={bad}"]) == 2
    assert "PEFT could not apply" in capsys.readouterr().err
    assert not (tmp_path / "run" / "results.json").exists()


def test_ia3_trains_only_its_vectors(tiny_model_dir, tokenizer, tmp_path):
    (tmp_path / "ia3.json").write_text(json.dumps(IA3))
    model = load_model(str(tiny_model_dir))
    m = build_method(_cfg(tiny_model_dir, tmp_path / "ia3.json"))
    m.prepare_model(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for _, p in m.trainable_parameters(model)], lr=1e-2)
    ids = torch.tensor([tokenizer("A fire destroyed a warehouse on Friday.\nTL;DR: Fire hit a warehouse.")["input_ids"]])
    labels = ids.clone()
    labels[:, :10] = -100
    nll, n = SummaryLM(model, m)(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels)
    (nll / n).backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("ia3_" in n for n in changed)


@pytest.mark.slow
@pytest.mark.parametrize("name, kind", [("peft-ia3", "model"), ("peft-prefix", "adapter")])
def test_export_of_a_peft_tuner_loads_without_peftsum(compared, tiny_model_dir, tmp_path, capsys, name, kind):
    """IA³ merges into the weights; prefix tuning cannot and is exported as a PEFT adapter."""
    from peftsum.experiment import evaluate_saved
    from tests.experiment.test_export import _examples_file, _loss_without_peftsum

    run, out = compared / name, tmp_path / "export"
    assert main(["export", str(run), str(out)]) == 0
    assert f"exported {kind}" in capsys.readouterr().out
    limit = json.loads((run / "results.json").read_text())["config"]["eval"]["limit"]
    loss = _loss_without_peftsum(out, _examples_file(run, tmp_path / "ex.jsonl"),
                                 str(tiny_model_dir) if kind == "adapter" else "-")
    assert loss == pytest.approx(evaluate_saved(run, "test", limit)["loss"], rel=1e-5)
