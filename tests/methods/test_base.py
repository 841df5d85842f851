"""Each method's contract (methods/base.py): parameter counts by formula, only the intended parameters change,
save -> PEFT's load -> identical logits."""

import copy

import pytest
import torch

from peftsum.methods import build_method
from peftsum.model.loading import load_model
from peftsum.train.loss import SummaryLM
from tests.conftest import method_cfg, summary_logits, text_batch


@pytest.mark.parametrize("method, kw, trainable, added", [
    ("prompt-tuning", {}, 15_360, 15_360),
    ("lora", {}, 294_912, 294_912),
    ("last-layer", {}, 38_597_376, 38_597_376),
    ("last-layer", {"method.last_layer.tied": True}, 38_597_376, 0),
    ("full", {}, 124_439_808, 0),
    ("zero-shot", {}, 0, 0),
])
def test_parameter_counts_on_gpt2_small_shape(gpt2_small_shape, method, kw, trainable, added):
    model = copy.deepcopy(gpt2_small_shape)
    m = build_method(method_cfg(method, **kw))
    m.prepare_model(model)
    c = m.param_counts(model)
    assert (c["trainable"], c["added"]) == (trainable, added)
    assert c["total"] == 124_439_808 + added  # the tied matrix counted once






















def prepared_and_saved(model_dir, method: str, tokenizer, folder):
    """``method`` on the model in ``model_dir``, its weights moved off their initial values, saved to ``folder``."""
    model = load_model(str(model_dir)).eval()
    m = build_method(method_cfg(method, str(model_dir)), tokenizer)
    m.prepare_model(model)
    model.eval()
    with torch.no_grad():
        for _, p in m.trainable_parameters(model):
            p.add_(torch.randn_like(p) * 0.05)
    m.save(model, folder)
    return model, m


@pytest.mark.parametrize("method", ["lora", "prompt-tuning"])
def test_saved_adapter_loads_in_peft_with_same_logits(tiny_model_dir, tokenizer, tmp_path, method):
    from peft import PeftModel

    model, m = prepared_and_saved(tiny_model_dir, method, tokenizer, tmp_path)
    ids, mask = text_batch(tokenizer, ["Researchers studied walking and blood pressure in a small town."])
    ours = summary_logits(model, m, ids, mask)
    peft_model = PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(tmp_path)).eval()
    theirs = peft_model(input_ids=ids, attention_mask=mask).logits[:, m.num_virtual_tokens:]
    assert torch.allclose(ours, theirs, atol=1e-5)
    # and our own load of the saved weights gives the same logits
    fresh = load_model(str(tiny_model_dir))
    m2 = build_method(method_cfg(method, str(tiny_model_dir)), tokenizer)
    m2.prepare_model(fresh)
    m2.load(fresh, tmp_path)
    fresh.eval()
    assert torch.equal(summary_logits(fresh, m2, ids, mask), ours)


@pytest.mark.parametrize("method, kw", [
    ("prompt-tuning", {}), ("lora", {}), ("last-layer", {}), ("last-layer", {"method.last_layer.blocks": 1}),
    ("last-layer", {"method.last_layer.tied": True}), ("full", {}),
])
def test_only_intended_parameters_change(tiny_model_dir, tokenizer, tmp_path, method, kw):
    model = load_model(str(tiny_model_dir))
    m = build_method(method_cfg(method, str(tiny_model_dir), **kw), tokenizer)
    m.prepare_model(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    trainable = {n for n, _ in m.trainable_parameters(model)}
    opt = torch.optim.AdamW([p for _, p in m.trainable_parameters(model)], lr=1e-2)
    lm = SummaryLM(model, m)
    ids, mask = text_batch(tokenizer, ["A fire destroyed a warehouse on Friday.\nTL;DR: Fire hit a warehouse."])
    labels = ids.clone()
    labels[:, :10] = -100
    for _ in range(3):
        m.train_mode(model)
        nll, n = lm(input_ids=ids, attention_mask=mask, labels=labels)
        (nll / n).backward()
        opt.step()
        opt.zero_grad()
    after = dict(model.named_parameters(remove_duplicate=False))
    changed = {n for n in before if n in after and not torch.equal(before[n], after[n])}
    if m.settings.tied if method == "last-layer" else False:
        assert changed == {"transformer.wte.weight", "lm_head.weight"}  # the same tied tensor
        return
    expected = trainable if method != "full" else set(before)
    assert changed == {n for n in expected if n in before}
    if method == "last-layer":
        assert torch.equal(after["transformer.wte.weight"], before["transformer.wte.weight"])
        assert "lm_head.weight" in changed






