"""Each method's contract (methods/base.py): parameter counts by formula, only the intended parameters change,
save -> PEFT's load -> identical logits."""

import copy
from pathlib import Path

import pytest
import torch
import torch.utils._python_dispatch
from transformers.pytorch_utils import Conv1D

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






















def prepared_and_saved(model_dir, method: str, tokenizer, folder, **kw):
    """``method`` on the model in ``model_dir``, its weights moved off their initial values, saved to ``folder``."""
    model = load_model(str(model_dir)).eval()
    m = build_method(method_cfg(method, str(model_dir), **kw), tokenizer)
    m.prepare_model(model)
    model.eval()
    with torch.no_grad():
        for _, p in m.trainable_parameters(model):
            p.add_(torch.randn_like(p) * 0.05)
    m.save(model, folder)
    return model, m


@pytest.mark.parametrize("method, kw", [("lora", {}), ("lora", {"method.lora.rslora": True, "method.lora.rank": 4}),
                                        ("prompt-tuning", {})])
def test_saved_adapter_loads_in_peft_with_same_logits(tiny_model_dir, tokenizer, tmp_path, method, kw):
    from peft import PeftModel

    model, m = prepared_and_saved(tiny_model_dir, method, tokenizer, tmp_path, **kw)
    ids, mask = text_batch(tokenizer, ["Researchers studied walking and blood pressure in a small town."])
    ours = summary_logits(model, m, ids, mask)
    peft_model = PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(tmp_path)).eval()
    theirs = peft_model(input_ids=ids, attention_mask=mask).logits[:, m.num_virtual_tokens:]
    assert torch.allclose(ours, theirs, atol=1e-5)
    # and our own load of the saved weights gives the same logits
    fresh = load_model(str(tiny_model_dir))
    m2 = build_method(method_cfg(method, str(tiny_model_dir), **kw), tokenizer)
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








@pytest.mark.parametrize("method", ["lora", "prompt-tuning", "full", "last-layer"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_cfg, tokenizer, method):
    """train.gradient_checkpointing: every block's forward runs again in the backward (counted by a hook on its attention; the
    recompute stops early, after the last tensor the backward needs), and the
    loss and the trained parameters' gradients equal those without it (dropout on: the recompute replays its
    masks). Last-layer trains the top block here (blocks=1), so its frozen blocks below run no backward."""
    from peftsum.experiment import load_components
    from peftsum.model.arch import decoder_blocks
    from tests.conftest import text_batch

    ids, mask = text_batch(tokenizer, ["The council approved a new rail line on Monday.\nTL;DR: A rail line.",
                                       "Rain flooded the old town.\nTL;DR: Floods."])
    labels = ids.masked_fill(mask == 0, -100)
    results = {}
    for on in (False, True):
        parts = load_components(tiny_cfg(method, **{"train.gradient_checkpointing": on,
                                                    "method.last_layer.blocks": 1}))
        model, lm = parts.model, parts.summary_lm
        assert all(b.gradient_checkpointing == on for b in decoder_blocks(model))  # prepare_model set it
        calls = []
        for block in decoder_blocks(model):  # inside the block: transformers checkpoints its forward, not its hooks
            block.attn.register_forward_hook(lambda *_, c=calls: c.append(1))
        parts.method.train_mode(model)
        torch.manual_seed(0)
        nll, n = lm(input_ids=ids, attention_mask=mask, labels=labels)
        forwards = len(calls)
        nll.backward()
        grads = {k: p.grad.clone() for k, p in parts.method.trainable_parameters(model)}
        results[on] = (nll.item(), grads, forwards, len(calls) - forwards)
    (loss0, g0, f0, again0), (loss1, g1, f1, again1) = results[False], results[True]
    assert f0 == f1 == 2 and again0 == 0
    assert again1 == (1 if method == "last-layer" else 2)  # the blocks the backward passes through, once more
    assert loss1 == pytest.approx(loss0, rel=1e-6)
    assert g0.keys() == g1.keys() and g0
    for k in g0:
        assert torch.allclose(g0[k], g1[k], rtol=1e-5, atol=1e-7), k


def test_gradient_checkpointing_where_transformers_has_only_its_older_name(tiny_cfg, monkeypatch):
    """transformers 5.17 (what a current GPU image ships) has gradient_checkpointing_enable and no
    activation_checkpointing_enable: before, an AttributeError as the model was prepared."""
    from transformers import PreTrainedModel

    from peftsum.experiment import load_components
    from peftsum.model.arch import decoder_blocks

    newer = getattr(PreTrainedModel, "activation_checkpointing_enable", None)
    if newer is not None:  # a newer transformers made to show 5.17's API: only the older name, the same work
        def older(self, gradient_checkpointing_kwargs=None):
            newer(self, activation_checkpointing_kwargs=gradient_checkpointing_kwargs)

        monkeypatch.setattr(PreTrainedModel, "gradient_checkpointing_enable", older)
        monkeypatch.delattr(PreTrainedModel, "activation_checkpointing_enable")
    parts = load_components(tiny_cfg("lora", **{"train.gradient_checkpointing": True}))
    assert not hasattr(parts.model, "activation_checkpointing_enable")
    assert all(b.gradient_checkpointing for b in decoder_blocks(parts.model))


def test_gradient_checkpointing_refuses_prefix_tuning(tiny_model_dir, tmp_path):
    import json

    from peftsum.config import load_config
    from peftsum.errors import UserError
    from peftsum.experiment import load_components

    prefix = tmp_path / "prefix.json"
    prefix.write_text(json.dumps({"peft_type": "PREFIX_TUNING", "num_virtual_tokens": 4}))
    cfg = load_config(None, None, [("method.name", "peft"), ("model.name", str(tiny_model_dir)),
                                   ("method.peft.config", str(prefix)), ("train.gradient_checkpointing", True)])
    with pytest.raises(UserError, match="gradient_checkpointing does not work with .*prefix"):
        load_components(cfg)


class WeightCasts(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the casts to bfloat16 of the given tensors (by storage): what autocast does to a float32 weight."""

    def __init__(self, tensors):
        super().__init__()
        self.pointers, self.casts = {t.data_ptr() for t in tensors}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16 \
                and args[0].data_ptr() in self.pointers:
            self.casts += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("method", ["lora", "prompt-tuning", "zero-shot"])
def test_frozen_weights_in_the_compute_dtype_change_nothing_but_the_casts(tiny_model_dir, tokenizer, method):
    """Under bf16 autocast (on the CPU here, as on a GPU) the frozen linear weights stored in bf16: autocast casts
    none of them again (stored in fp32: each at every forward), and the logits, the loss, every trained gradient and
    a greedy decode are exactly those with fp32 storage.  The trained tensors and the embeddings stay fp32."""
    from peftsum.evaluate.generate import decode_ids
    from peftsum.methods.base import Untrained

    ids, mask = text_batch(tokenizer, ["Floods hit homes.\nTL;DR: Floods.", "A rail line opens in May.\nTL;DR: Rail."])
    labels = ids.masked_fill(mask == 0, -100)
    prompts = [torch.tensor(tokenizer("Officials said the bridge opens.\nTL;DR:")["input_ids"])]
    got = {}
    for on in (False, True):
        model = load_model(str(tiny_model_dir))
        m = build_method(method_cfg(method, str(tiny_model_dir), **{"train.frozen_weights_in_compute_dtype": on,
                                                                     "method.lora.dropout": 0.0}),
                         tokenizer, torch.bfloat16)
        torch.manual_seed(0)  # LoRA's A
        m.prepare_model(model)
        model.eval()
        frozen = [mod.weight for mod in model.modules() if isinstance(mod, (torch.nn.Linear, Conv1D))
                  and mod.weight is not model.get_input_embeddings().weight and not mod.weight.requires_grad]
        assert frozen and all(w.dtype == (torch.bfloat16 if on else torch.float32) for w in frozen)
        assert all(p.dtype == torch.float32 for _, p in m.trainable_parameters(model))
        assert model.get_input_embeddings().weight.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16), WeightCasts(frozen) as casts:
            emb, emask = m.embed(model, ids, mask)
            out = model(inputs_embeds=emb, attention_mask=emask)
        assert casts.casts == (0 if on else len(frozen))
        grads = None
        if not isinstance(m, Untrained):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                nll, n = SummaryLM(model, m)(input_ids=ids, attention_mask=mask, labels=labels)
            (nll / n).backward()
            grads = [p.grad for _, p in m.trainable_parameters(model)]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            decoded = decode_ids(model, m, prompts, m.cfg.eval.decoding, tokenizer.eos_token_id, tokenizer.pad_token_id)
        got[on] = (out.logits, grads, decoded)
    assert torch.equal(got[True][0], got[False][0])
    if got[True][1] is not None:
        assert all(torch.equal(a, b) for a, b in zip(got[True][1], got[False][1], strict=True))
    assert got[True][2] == got[False][2]


def test_a_method_is_one_registry_entry_that_every_layer_asks():
    """The traits callers read (trained, adapter folder, colour, defaults, the scale report's reference, the sweep's
    search space) live on the entries."""
    from peftsum.config import METHODS, SweepConfig, load_config
    from peftsum.experiment.compare import planned_runs
    from peftsum.methods import REGISTRY, default_methods, entry, trained_methods
    from peftsum.report import plots, scale

    assert trained_methods() == ("prompt-tuning", "lora", "qlora", "last-layer", "full")
    assert default_methods() == tuple(m for m in METHODS if m != "qlora")
    assert default_methods(trained_only=True) == ("prompt-tuning", "lora", "last-layer", "full")
    assert [m for m in METHODS if entry(m).adapter_folder] == ["prompt-tuning", "lora", "qlora"]
    assert entry("peft-ia3").adapter_folder and entry("peft-ia3").trained() and scale.REFERENCE == "full"
    assert len({entry(m).color for m in METHODS}) == len(METHODS)
    assert plots.color("peft-ia3") == plots.EXTRA_COLORS[0] != plots.color("lora") == entry("lora").color
    sweep = SweepConfig(lora_ranks=[4, 8], num_prompts=[10])
    assert dict(entry("qlora").search_space(sweep))["rank"] == [4, 8]
    assert dict(entry("prompt-tuning").search_space(sweep)) == {"num_prompts": [10]}
    assert entry("full").search_space(sweep) == []
    # compare asks the entry whether a method trains: the baselines run once whatever the seeds
    runs = planned_runs(load_config("demo"), ["lead-3", "full"], Path("o"), seeds=2)
    assert [(m, run.name) for m, run, _ in runs] == [("lead-3", "lead-3"), ("full", "seed-42"), ("full", "seed-43")]
    assert all(REGISTRY[m].name == m for m in METHODS)
