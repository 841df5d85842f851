import pytest
import torch

from peftsum.model.demo_base import ensure_demo_base
from peftsum.model.loading import load_model


def test_real_gpt2_tokenizer_offline(tokenizer):
    assert len(tokenizer) == 50257
    assert tokenizer("Hello")["input_ids"] == [15496]
    assert tokenizer(" world")["input_ids"] == [995]
    assert len(tokenizer("[SUMMARIZE]")["input_ids"]) == 6
    assert tokenizer.eos_token_id == 50256 and tokenizer.pad_token_id == 50256


def test_demo_base_is_reproducible_and_reused(tmp_path):
    from tests.conftest import TINY_CONFIG

    recipe = dict(steps=3, batch_size=2, seq_len=32, lr=1e-3, warmup=1, seed=0, corpus="demo-v1", version=1)
    a = ensure_demo_base(TINY_CONFIG, recipe, root=tmp_path / "a")
    b = ensure_demo_base(TINY_CONFIG, recipe, root=tmp_path / "b")
    ma, mb = load_model(str(a)), load_model(str(b))
    for (n, pa), (_, pb) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert torch.equal(pa, pb), n
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert ensure_demo_base(TINY_CONFIG, recipe, root=tmp_path / "a") == a
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert ma.lm_head.weight is ma.transformer.wte.weight  # tied, like GPT-2


def test_the_attention_kernel_is_the_configured_one_and_computes_the_same_loss(tiny_model_dir, tokenizer):
    """model.attn_implementation reaches transformers; eager and SDPA give the same summary loss; an unavailable
    kernel (flash-attention without its package) is one clear error."""
    from peftsum.errors import UserError

    ids = torch.tensor([tokenizer("The council approved a new rail line on Monday.\nTL;DR: A rail line.")["input_ids"]])
    losses = {}
    for kind in ("eager", "sdpa"):
        model = load_model(str(tiny_model_dir), attn_implementation=kind).eval()
        assert model.config._attn_implementation == kind
        with torch.no_grad():
            losses[kind] = model(input_ids=ids, labels=ids).loss.item()
    assert losses["eager"] == pytest.approx(losses["sdpa"], rel=1e-5)
    with pytest.raises(UserError, match="flash_attention_2"):
        load_model(str(tiny_model_dir), attn_implementation="flash_attention_2")


@pytest.mark.parametrize("name,params", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
                                         ("openai-community/gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_random_shape_knows_the_gpt2_family_offline(name, params):
    """plan --shape random: GPT-2's four sizes without the hub (the parameter counts of the published checkpoints,
    the tied head counted once), built on the meta device here."""
    from peftsum.model.loading import random_shape

    with torch.device("meta"):
        model, desc = random_shape(name)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.config.n_positions == 1024 and model.config.vocab_size == 50257
    assert "random weights" in desc
    with torch.device("meta"):  # model.attn_implementation reaches it (gpu.py's eager-attention lever on this shape)
        assert random_shape(name, attn_implementation="eager")[0].config._attn_implementation == "eager"


def test_random_shape_reads_a_local_config_and_refuses_an_unknown_name(tiny_model_dir):
    from peftsum.errors import UserError
    from peftsum.model.loading import random_shape

    model, desc = random_shape(str(tiny_model_dir))
    saved = load_model(str(tiny_model_dir))
    assert model.config.n_layer == saved.config.n_layer and model.config.n_embd == saved.config.n_embd
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in saved.parameters())
    assert not torch.equal(model.transformer.wte.weight, saved.transformer.wte.weight)  # random, not the saved weights
    with pytest.raises(UserError, match="no config for 'no-such/model'.*gpt2-medium"):
        random_shape("no-such/model")


def test_random_shape_of_a_demo_base_needs_no_pre_training(monkeypatch):
    from peftsum.model import demo_base, loading

    monkeypatch.setattr(demo_base, "pretrain", lambda *a, **k: pytest.fail("pre-trained a demo base for its shape"))
    model, _ = loading.random_shape("demo-large")
    assert (model.config.n_layer, model.config.n_embd) == (4, 192)
