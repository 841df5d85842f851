"""Any causal LM from transformers: tiny random GPT-2, Llama, Qwen2 and GPT-NeoX models built in code, each
saved with save_pretrained beside the real GPT-2 tokenizer.  Every method trains, saves and reloads; PEFT
loads LoRA and prompt tuning with equal logits; the fast greedy path returns generate()'s tokens; FLOP and
parameter counts follow each model's shape."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

from peftsum.config import load_config
from peftsum.errors import UserError
from peftsum.evaluate import cost as costs
from peftsum.methods import build_method
from peftsum.model.arch import decoder_blocks, default_lora_targets
from peftsum.model.loading import load_model
from peftsum.train.loss import SummaryLM
from tests.conftest import prepared_for_decoding, tiny_overrides

EOS = 50256


def tiny_config(arch: str, vocab: int = 50257, eos: int = EOS):
    common = dict(vocab_size=vocab, bos_token_id=eos, eos_token_id=eos)
    if arch == "gpt2":
        return GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=512, **common)
    if arch == "llama":
        return LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=512, **common)
    if arch == "qwen2":
        return Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=512, **common)
    if arch == "gpt_neox":
        return GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             max_position_embeddings=512, rotary_pct=0.5, **common)
    raise ValueError(arch)


ARCHS = ["gpt2", "llama", "qwen2", "gpt_neox"]


@pytest.fixture(scope="module", params=ARCHS)
def arch_dir(request, tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(request.param))
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return request.param, folder


def _cfg(model_dir, data_dir, method, **extra):
    ov = tiny_overrides(model_dir, data_dir, **{"method.name": method, "train.max_steps": 2,
                                                "data.train_size": 16, "data.val_size": 8, "data.test_size": 8,
                                                "eval.decoding.max_new_tokens": 6, **extra})
    return load_config("demo", None, ov)


def test_default_lora_targets_per_model_type():
    expect = {"gpt2": ["attn.c_attn"], "llama": ["q_proj", "v_proj"], "qwen2": ["q_proj", "v_proj"],
              "gpt_neox": ["query_key_value"]}
    for arch, targets in expect.items():
        assert default_lora_targets(AutoModelForCausalLM.from_config(tiny_config(arch, vocab=100))) == targets


def test_unknown_model_type_without_targets_is_a_clear_error():
    model = AutoModelForCausalLM.from_config(tiny_config("llama", vocab=100))
    model.config.model_type = "my-new-lm"
    with pytest.raises(UserError, match="model type 'my-new-lm'.*method.lora.targets.*q_proj"):
        default_lora_targets(model)
    m = build_method(load_config(None, None, [("method.name", "lora"), ("method.lora.targets", "q_proj,o_proj")]))
    m.prepare_model(model)  # explicit targets need no table
    assert len(m.layers(model)) == 4


def _per_layer_params(arch: str, cfg) -> int:
    """One decoder block's parameters by formula."""
    d, f = cfg.hidden_size, cfg.intermediate_size if arch != "gpt2" else 4 * cfg.n_embd
    if arch == "gpt2":
        return 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d  # qkv + proj (with biases), MLP, two LayerNorms
    if arch in ("llama", "qwen2"):
        kv = cfg.num_key_value_heads * d // cfg.num_attention_heads
        attn = 2 * d * d + 2 * d * kv + (d + 2 * kv if arch == "qwen2" else 0)  # q, o, k, v (+ Qwen2's qkv biases)
        return attn + 3 * d * f + 2 * d  # gated MLP, two RMSNorms
    # GPT-NeoX: fused qkv and dense with biases, MLP with biases, two LayerNorms
    return 3 * d * d + 3 * d + d * d + d + 2 * d * f + f + d + 4 * d


@pytest.mark.parametrize("arch", ARCHS)
def test_flop_and_parameter_counts_follow_the_shape(arch):
    cfg = tiny_config(arch, vocab=100)
    model = AutoModelForCausalLM.from_config(cfg)
    m = build_method(load_config(None, None, [("method.name", "lora")]))
    m.prepare_model(model)
    shape = costs.flop_shape(model, m)
    d = cfg.hidden_size
    rank = 8
    qkv_out = {"gpt2": 3 * d, "gpt_neox": 3 * d}.get(arch)
    if qkv_out:  # one fused projection per block
        lora = 2 * rank * (d + qkv_out)
    else:  # q_proj (d -> d) and v_proj (d -> kv)
        kv = cfg.num_key_value_heads * d // cfg.num_attention_heads
        lora = 2 * (rank * (d + d) + rank * (d + kv))
    assert m.param_counts(model)["trainable"] == lora
    assert shape.trunk == 2 * _per_layer_params(arch, cfg) + lora
    assert shape.n_layer == 2 and shape.d_model == d and shape.head == 100 * d
    assert shape.trainable_trunk == lora and shape.backward_layers == 2


@pytest.mark.parametrize("beams", [1, 4])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["prompt-tuning", "lora", "last-layer"])
def test_decoding_loop_equals_generate_on_each_architecture(arch, method, beams):
    """Greedy and beam search (length penalty 2, a minimum length) on each architecture's cache layout."""
    from peftsum.evaluate.generate import decode_ids, hf_generate_ids

    torch.manual_seed(1)
    cfg = tiny_config(arch, vocab=1000, eos=999)
    cfg.initializer_range = 0.3
    model = AutoModelForCausalLM.from_config(cfg)
    ecfg = load_config(None, None, [("method.name", method), ("eval.decoding.max_new_tokens", 10),
                                    ("eval.decoding.no_repeat_ngram_size", 2), ("method.prompt_tuning.init", "random"),
                                    ("method.prompt_tuning.num_prompts", 4)])
    m = prepared_for_decoding(model, ecfg)
    prompts = [torch.randint(0, 999, (n,)) for n in (9, 4, 6, 11)]
    dec = dataclasses.replace(ecfg.eval.decoding, num_beams=beams, length_penalty=2.0, min_new_tokens=3)
    fast = decode_ids(model, m, prompts, dec, 999, 0, prefill_tokens=8)
    slow = [hf_generate_ids(model, m, p[None], torch.ones(1, len(p), dtype=torch.long), dec, 999, 0)[0]
            for p in prompts]
    assert fast == slow
    assert decode_ids(model, m, prompts, dec, 999, 0, mixed_prefill=True) == slow  # a GPU's right-padded prefill
    assert len({tuple(r) for r in fast}) > 1


@pytest.mark.parametrize("method", ["lora", "prompt-tuning"])
def test_peft_loads_adapters_of_each_architecture(arch_dir, tokenizer, tmp_path, method):
    from peft import PeftModel

    from tests.methods.test_base import prepared_and_saved

    arch, folder = arch_dir
    model, m = prepared_and_saved(folder, method, tokenizer, tmp_path)
    ids = torch.tensor([tokenizer("Rain flooded the town on Monday, officials said.")["input_ids"]])
    mask = torch.ones_like(ids)
    lm = SummaryLM(model, m)
    with torch.no_grad():
        ours = model.get_output_embeddings()(lm.hidden_states(ids, mask))
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(folder)), str(tmp_path)).eval()
        theirs = peft_model(input_ids=ids, attention_mask=mask).logits[:, m.num_virtual_tokens:]
    assert torch.allclose(ours, theirs, atol=1e-5), arch


@pytest.mark.parametrize("method", ["prompt-tuning", "lora", "last-layer", "full"])
def test_every_method_trains_saves_and_reloads(arch_dir, demo_dir, tmp_path, method):
    """Through the run: 2 steps, save, reload in a fresh process's way (load_trained) and evaluate: the
    same test loss as the run reported."""
    from peftsum.experiment import evaluate_saved, run_experiment

    arch, folder = arch_dir
    cfg = _cfg(folder, demo_dir, method)
    r = run_experiment(cfg, tmp_path / "run")
    assert r.training.steps == 2 and r.params.trainable > 0
    if method == "lora":
        assert r.method_hyperparameters["targets"] == default_lora_targets(load_model(str(folder)))
    again = evaluate_saved(tmp_path / "run", "test", cfg.eval.limit)
    assert again["loss"] == pytest.approx(r.eval.test_loss, rel=1e-6), arch
    assert len(decoder_blocks(load_model(str(folder)))) == 2


def test_a_tokenizer_that_adds_bos_puts_it_once_at_the_start(tokenizer):
    """Llama-style tokenizers add BOS to every text they encode; a prompt is built from pieces (template,
    article, summary), which must not each carry one."""
    from transformers import AutoTokenizer

    from peftsum.data.tokenize import PromptBuilder
    from peftsum.utils import cache_dir

    bos_tok = AutoTokenizer.from_pretrained(str(cache_dir() / "gpt2-bpe"), add_bos_token=True)
    bos_tok.pad_token = bos_tok.eos_token
    data_cfg = load_config(None, None, [("data.max_source_tokens", 20), ("data.max_target_tokens", 8)]).data
    plain = PromptBuilder(tokenizer, data_cfg, 64)
    with_bos = PromptBuilder(bos_tok, data_cfg, 64)
    batch = {"article": ["Heavy rain flooded the old town on Monday, officials said."], "highlights": ["Rain hit."]}
    a, b = plain.examples(batch), with_bos.examples(batch)
    assert b["input_ids"][0] == [EOS] + a["input_ids"][0]  # BOS once, in front; the rest identical
    assert b["prompt_len"][0] == a["prompt_len"][0] + 1
    assert with_bos.budget.separator == plain.budget.separator + 1  # the budget counts it
    assert with_bos.prompts(batch["article"])[0] == [EOS] + plain.prompts(batch["article"])[0]
