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
