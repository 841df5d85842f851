"""LoRA (methods/lora.py): targets by suffix, the start at the base model, merging, nn.Linear, dropout, rsLoRA's
scale, and equality with PEFT's own LoRA layers, injected from our LoraConfig (DoRA included: outputs, gradients,
saved adapters, merging)."""

import copy
import math

import pytest
import torch
from peft import PeftModel, inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import GPT2Config, GPT2LMHeadModel

from peftsum.methods import build_method
from peftsum.methods.lora import PEFT_PREFIX, LoRALayer, matches
from peftsum.model.loading import load_model
from tests.conftest import method_cfg, summary_logits, text_batch


def test_model_dropout_sets_the_transformer_not_lora():
    """model.dropout: every GPT-2 dropout (attention, residual, MLP, embeddings) and the config that the
    SDPA path reads; LoRA keeps its own method.lora.dropout; None keeps the checkpoint's 0.1."""
    from peftsum.model.loading import set_dropout

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
    set_dropout(model, None)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    m = build_method(method_cfg("lora", **{"method.lora.dropout": 0.05}))
    set_dropout(model, 0.0)  # as a run does it: on the base model, before the method adds its layers
    m.prepare_model(model)
    lora = {id(x.dropout) for x in model.modules() if isinstance(x, LoRALayer)}
    ps = [(id(x) in lora, x.p) for x in model.modules() if isinstance(x, torch.nn.Dropout)]
    assert sorted(ps) == [(False, 0.0)] * (1 + 2 * 3) + [(True, 0.05)] * 2
    assert model.config.attn_pdrop == model.config.resid_pdrop == model.config.embd_pdrop == 0.0


def test_lora_targets_match_by_suffix():
    assert matches("transformer.h.0.attn.c_proj", ["attn.c_proj"])
    assert not matches("transformer.h.0.mlp.c_proj", ["attn.c_proj"])
    assert matches("transformer.h.0.mlp.c_proj", ["c_proj"]) and matches("transformer.h.0.attn.c_proj", ["c_proj"])


def test_lora_starts_as_the_base_model_and_merges(tiny_model_dir, tokenizer):
    base = load_model(str(tiny_model_dir)).eval()
    model = copy.deepcopy(base)
    m = build_method(method_cfg("lora", str(tiny_model_dir), **{"method.lora.targets": ["attn.c_attn", "mlp.c_fc"]}))
    m.prepare_model(model)
    model.eval()
    ids, mask = text_batch(tokenizer, ["The mayor said on Monday that the bridge will open."])
    assert torch.equal(summary_logits(model, m, ids, mask), summary_logits(base, m, ids, mask))  # B = 0
    layers = m.layers(model)
    assert len(layers) == 4 and all(lay.lora_A.shape[1] == 8 for lay in layers.values())
    with torch.no_grad():
        for lay in layers.values():
            lay.lora_B.normal_(0, 0.05)
    unmerged = summary_logits(model, m, ids, mask)
    assert not torch.allclose(unmerged, summary_logits(base, m, ids, mask))
    assert {n for n, _ in m.trainable_parameters(model)} == {f"{k}.{ab}" for k in layers for ab in ("lora_A", "lora_B")}
    m.merge_and_unload(model)  # the export's merge: the base architecture again, the same outputs
    assert not m.layers(model) and torch.allclose(summary_logits(model, m, ids, mask), unmerged, atol=1e-5)


def test_lora_layer_wraps_linear_too():
    lin = torch.nn.Linear(6, 5)
    lay = LoRALayer(lin, 2, 4.0, 0.0)
    with torch.no_grad():
        lay.lora_B.normal_()
    x = torch.randn(3, 6)
    expected = lin(x) + x @ lay.lora_A @ lay.lora_B * 2.0
    assert torch.allclose(lay(x), expected, atol=1e-6)
    y = lay(x)
    lay.merge()
    assert torch.allclose(lay(x), y, atol=1e-5)


def test_rslora_scales_by_the_square_root_of_the_rank():
    lin = torch.nn.Linear(6, 5)
    assert LoRALayer(lin, 4, 16.0, 0.0).scaling == 4.0  # alpha / r
    assert LoRALayer(lin, 4, 16.0, 0.0, rslora=True).scaling == 8.0  # alpha / sqrt(r)
    assert LoRALayer(lin, 64, 16.0, 0.0, rslora=True).scaling == pytest.approx(16 / math.sqrt(64))


def with_peft_layers(model_dir, method, state: dict) -> torch.nn.Module:
    """The base model with PEFT's own LoRA layers injected from our method's LoraConfig, holding our adapter's
    tensors (``state``: PEFT's file names), the LoRA tensors trainable."""
    model = load_model(str(model_dir))
    inject_adapter_in_model(method.peft_config(model), model)
    set_peft_model_state_dict(model, {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()})
    for n, p in model.named_parameters():
        p.requires_grad_("lora_" in n)
    return model


@pytest.mark.parametrize("rslora", [False, True])
def test_our_lora_equals_peft_layers(tiny_model_dir, tokenizer, rslora):
    """Our LoRA layers and PEFT's, with the same A and B, give the same logits (rsLoRA: PEFT's use_rslora)."""
    ids, mask = text_batch(tokenizer, ["Floods hit homes.", "A new rail line opens in May, officials said."])
    model = load_model(str(tiny_model_dir)).eval()
    m = build_method(method_cfg("lora", str(tiny_model_dir), **{"method.lora.rslora": rslora, "method.lora.rank": 4}))
    m.prepare_model(model)
    model.eval()
    with torch.no_grad():
        for lay in m.layers(model).values():
            lay.lora_B.normal_(0, 0.05)
    peft = with_peft_layers(tiny_model_dir, m, m.peft_state_dict(model)).eval()
    assert any(isinstance(x, BaseTunerLayer) for x in peft.modules())
    ours = summary_logits(model, m, ids, mask)
    assert not torch.allclose(ours, summary_logits(load_model(str(tiny_model_dir)).eval(), m, ids, mask), atol=1e-3)
    assert torch.allclose(ours, summary_logits(peft, m, ids, mask), atol=1e-5)
    if rslora:  # the scale matters here: alpha / r would give other logits
        assert m.peft_config(model).use_rslora


def peft_format_grads(method, model) -> dict[str, torch.Tensor]:
    """The trained tensors' gradients under the names and layouts of PEFT's adapter file (our layers, or PEFT's)."""
    if not method.layers(model):
        return {PEFT_PREFIX + n.replace(".default", "").replace("lora_magnitude_vector.weight", "lora_magnitude_vector"):
                p.grad for n, p in model.named_parameters() if "lora_" in n}
    out = {}
    for n, lay in method.layers(model).items():
        out[f"{PEFT_PREFIX}{n}.lora_A.weight"] = lay.lora_A.grad.T
        out[f"{PEFT_PREFIX}{n}.lora_B.weight"] = lay.lora_B.grad.T
        out[f"{PEFT_PREFIX}{n}.lora_magnitude_vector"] = lay.lora_magnitude.grad
    return out


def test_dora_equals_peft_in_training_and_its_adapter_loads_in_peft(tiny_model_dir, tokenizer, tmp_path):
    """DoRA (method.lora.dora) against PEFT's use_dora, with A, B and the magnitudes moved off their start: the same
    loss and gradients in training with dropout (PEFT's dropped-input arrangement), the same logits in eval, and our
    saved adapter gives those logits in PeftModel; merging keeps them."""
    ids, mask = text_batch(tokenizer, ["Floods hit homes.", "A new rail line opens in May, officials said."])
    labels = ids.masked_fill(mask == 0, -100)
    model = load_model(str(tiny_model_dir))
    m = build_method(method_cfg("lora", str(tiny_model_dir), **{
        "method.lora.dora": True, "method.lora.rank": 4, "method.lora.dropout": 0.2,
        "method.lora.targets": ["c_attn", "mlp.c_fc"]}))
    m.prepare_model(model)
    with torch.no_grad():
        for lay in m.layers(model).values():
            lay.lora_B.normal_(0, 0.05)
            lay.lora_magnitude.mul_(1 + 0.1 * torch.randn_like(lay.lora_magnitude))
    m.save_adapter(model, tmp_path / "dora")
    peft = with_peft_layers(tiny_model_dir, m, m.peft_state_dict(model))
    results = {}
    for name, net in (("ours", model), ("peft", peft)):
        net.train()
        torch.manual_seed(7)
        loss = net(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        net.eval()
        with torch.no_grad():
            logits = net(input_ids=ids, attention_mask=mask).logits
        results[name] = (loss.item(), peft_format_grads(m, net), logits)
    ours, peft = results["ours"], results["peft"]
    assert ours[0] == pytest.approx(peft[0], rel=1e-6)
    assert ours[1].keys() == peft[1].keys() and any("magnitude" in k for k in ours[1])
    for k in ours[1]:
        torch.testing.assert_close(ours[1][k], peft[1][k], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours[2], peft[2], rtol=0, atol=1e-5)
    with torch.no_grad():
        loaded = PeftModel.from_pretrained(load_model(str(tiny_model_dir)), tmp_path / "dora").eval()
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits, ours[2], rtol=0, atol=1e-5)
        m.merge_and_unload(model)  # DoRA's s (W + ΔW) folded into the plain base layers: the same outputs
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, ours[2], rtol=0, atol=1e-4)


def test_dora_under_bf16_autocast_starts_as_the_base_layer():
    """At initialisation DoRA's scale m / ||W + ΔW||_c is 1 under mixed precision too (the norm in the input's dtype,
    not the bf16 update's), so the adapted layer gives the base layer's output."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 64)
    lay = LoRALayer(lin, 4, 8.0, 0.0, dora=True)
    x = torch.randn(32, 64)  # the norm taken in bf16 instead moves the scale off 1 by ~2^-9: outputs differ here
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(lay(x), lin(x))
