"""Each method's contract: parameter counts, freezing, the LoRA and prompt equalities, PEFT
compatibility, generation equalities, save -> load -> identical logits."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from peftsum.config import load_config
from peftsum.methods import build_method
from peftsum.methods.lora import LoRALayer, matches
from peftsum.model.loading import load_model
from peftsum.train.loss import SummaryLM


def cfg_for(method, model="gpt2", **kw):
    ov = [("method.name", method), ("model.name", model)] + list(kw.items())
    return load_config(None, None, ov)


@pytest.fixture(scope="module")
def gpt2_small_shape():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config())  # GPT-2 small's shape, random weights, no download


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
    m = build_method(cfg_for(method, **kw))
    m.prepare_model(model)
    c = m.param_counts(model)
    assert (c["trainable"], c["added"]) == (trainable, added)
    assert c["total"] == 124_439_808 + added  # the tied matrix counted once


BLOCKS = 12 * 7_087_872  # GPT-2 small's twelve blocks
HEAD = 50_257 * 768


@pytest.mark.parametrize("method, kw, trunk, trainable_trunk, head_trainable, backward", [
    ("prompt-tuning", {}, BLOCKS, 0, False, 12),
    ("lora", {}, BLOCKS + 294_912, 294_912, False, 12),
    ("last-layer", {}, BLOCKS, 0, True, 0),
    ("last-layer", {"method.last_layer.blocks": 2}, BLOCKS, 2 * 7_087_872, True, 2),
    ("last-layer", {"method.last_layer.tied": True}, BLOCKS, 0, True, 12),  # the tied head is wte: input grads
    ("full", {}, BLOCKS, BLOCKS, True, 12),
])
def test_flop_shape_on_gpt2_small_shape(gpt2_small_shape, method, kw, trunk, trainable_trunk, head_trainable, backward):
    from peftsum.evaluate.cost import flop_shape

    model = copy.deepcopy(gpt2_small_shape)
    m = build_method(cfg_for(method, **kw))
    m.prepare_model(model)
    s = flop_shape(model, m)
    assert (s.trunk, s.head, s.n_layer, s.d_model) == (trunk, HEAD, 12, 768)
    assert (s.trainable_trunk, s.head_trainable, s.backward_layers) == (trainable_trunk, head_trainable, backward)


def test_train_flops_by_hand():
    """LoRA on GPT-2 small, 1,000 tokens of which 100 summary positions, mean length 500; and the cached
    last-layer run (trunk once over 3,000 tokens, head forward + weight gradient on the summary positions)."""
    from peftsum.evaluate.cost import FlopShape, train_flops

    lora = FlopShape(BLOCKS + 294_912, HEAD, 12, 768, 294_912, False, 12)
    per_token = 2 * (BLOCKS + 294_912) + 2 * 12 * 500 * 768
    head = 2 * HEAD * 100
    assert train_flops(lora, 1000, 100, 500) == (per_token * 1000 + head) * 2 + 2 * 294_912 * 1000
    cached = FlopShape(BLOCKS, HEAD, 12, 768, 0, True, 0)
    assert train_flops(cached, 1000, 100, 500, cached_trunk_tokens=3000) == \
        (2 * BLOCKS + 2 * 12 * 500 * 768) * 3000 + 2 * head
    # the head runs on summary positions only: counting it on all 1,000 would add 40 % here
    full_head = train_flops(lora, 1000, 1000, 500) / train_flops(lora, 1000, 100, 500)
    assert 1.3 < full_head < 1.5


def test_model_dropout_sets_the_transformer_not_lora():
    """model.dropout: every GPT-2 dropout (attention, residual, MLP, embeddings) and the config that the
    SDPA path reads; LoRA keeps its own method.lora.dropout; None keeps the checkpoint's 0.1."""
    from peftsum.model.loading import set_dropout

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100))
    set_dropout(model, None)
    assert {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    m = build_method(cfg_for("lora", **{"method.lora.dropout": 0.05}))
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


def _batch(tokenizer, texts):
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _logits(model, method, ids, mask):
    emb, m = method.embed(model, ids, mask)
    return model(inputs_embeds=emb, attention_mask=m).logits[:, method.num_virtual_tokens:]


def test_lora_starts_as_the_base_model_and_merges(tiny_model_dir, tokenizer):
    base = load_model(str(tiny_model_dir)).eval()
    model = copy.deepcopy(base)
    m = build_method(cfg_for("lora", str(tiny_model_dir), **{"method.lora.targets": ["attn.c_attn", "mlp.c_fc"]}))
    m.prepare_model(model)
    model.eval()
    ids, mask = _batch(tokenizer, ["The mayor said on Monday that the bridge will open."])
    assert torch.equal(_logits(model, m, ids, mask), _logits(base, m, ids, mask))  # B = 0
    layers = m.layers(model)
    assert len(layers) == 4 and all(lay.lora_A.shape[1] == 8 for lay in layers.values())
    with torch.no_grad():
        for lay in layers.values():
            lay.lora_B.normal_(0, 0.05)
    unmerged = _logits(model, m, ids, mask)
    assert not torch.allclose(unmerged, _logits(base, m, ids, mask))
    m.merge(model)
    assert torch.allclose(_logits(model, m, ids, mask), unmerged, atol=1e-5)
    m.unmerge(model)
    assert torch.allclose(_logits(model, m, ids, mask), unmerged, atol=1e-5)
    assert {n for n, _ in m.trainable_parameters(model)} == {f"{k}.{ab}" for k in layers for ab in ("lora_A", "lora_B")}


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


def test_our_lora_equals_peft_backend(tiny_model_dir, tokenizer):
    ids, mask = _batch(tokenizer, ["Floods hit homes.", "A new rail line opens in May, officials said."])
    outs = []
    state = None
    for backend in ("peftsum", "peft"):
        model = load_model(str(tiny_model_dir)).eval()
        m = build_method(cfg_for("lora", str(tiny_model_dir), **{"method.lora.backend": backend}))
        m.prepare_model(model)
        model.eval()
        if state is None:
            with torch.no_grad():
                for lay in m.layers(model).values():
                    lay.lora_B.normal_(0, 0.05)
            state = m.peft_state_dict(model)
        else:
            m.load_peft_state_dict(model, state)
        outs.append(_logits(model, m, ids, mask))
    assert torch.allclose(outs[0], outs[1], atol=1e-5)


def prepared_and_saved(model_dir, method: str, tokenizer, folder):
    """``method`` on the model in ``model_dir``, its weights moved off their initial values, saved to ``folder``."""
    model = load_model(str(model_dir)).eval()
    m = build_method(cfg_for(method, str(model_dir)), tokenizer)
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
    ids, mask = _batch(tokenizer, ["Researchers studied walking and blood pressure in a small town."])
    ours = _logits(model, m, ids, mask)
    peft_model = PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(tmp_path)).eval()
    theirs = peft_model(input_ids=ids, attention_mask=mask).logits[:, m.num_virtual_tokens:]
    assert torch.allclose(ours, theirs, atol=1e-5)
    # and our own load of the saved weights gives the same logits
    fresh = load_model(str(tiny_model_dir))
    m2 = build_method(cfg_for(method, str(tiny_model_dir)), tokenizer)
    m2.prepare_model(fresh)
    m2.load(fresh, tmp_path)
    fresh.eval()
    assert torch.equal(_logits(fresh, m2, ids, mask), ours)


@pytest.mark.parametrize("method, kw", [
    ("prompt-tuning", {}), ("lora", {}), ("last-layer", {}), ("last-layer", {"method.last_layer.blocks": 1}),
    ("last-layer", {"method.last_layer.tied": True}), ("full", {}),
])
def test_only_intended_parameters_change(tiny_model_dir, tokenizer, tmp_path, method, kw):
    model = load_model(str(tiny_model_dir))
    m = build_method(cfg_for(method, str(tiny_model_dir), **kw), tokenizer)
    m.prepare_model(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    trainable = {n for n, _ in m.trainable_parameters(model)}
    opt = torch.optim.AdamW([p for _, p in m.trainable_parameters(model)], lr=1e-2)
    lm = SummaryLM(model, m)
    ids, mask = _batch(tokenizer, ["A fire destroyed a warehouse on Friday.\nTL;DR: Fire hit a warehouse."])
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


def test_generation_cache_and_batching_equalities():
    """Soft prompt + generate(): cache on == cache off; a left-padded batch == one article at a time
    (the bugs of peft#2123 and peft#1391). A random model with a wide init gives varied tokens."""
    from peftsum.evaluate.generate import generate_ids, hf_generate_ids

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, initializer_range=0.3,
                                       eos_token_id=999, bos_token_id=999))
    cfg = cfg_for("prompt-tuning", **{"eval.decoding.max_new_tokens": 10, "eval.decoding.no_repeat_ngram_size": 0,
                                      "method.prompt_tuning.init": "random", "method.prompt_tuning.num_prompts": 5})
    m = build_method(cfg)
    m.prepare_model(model)
    model.eval()
    prompts = [torch.randint(0, 999, (n,)) for n in (9, 4, 6)]
    singles = []
    for p in prompts:
        ids = p[None]
        a = hf_generate_ids(model, m, ids, torch.ones_like(ids), cfg.eval.decoding, 999, 0, use_cache=True)
        b = hf_generate_ids(model, m, ids, torch.ones_like(ids), cfg.eval.decoding, 999, 0, use_cache=False)
        assert a == b == generate_ids(model, m, ids, torch.ones_like(ids), cfg.eval.decoding, 999, 0)
        singles.append(a[0])
    assert len({tuple(s) for s in singles}) == 3  # the outputs are not trivially identical
    T = max(len(p) for p in prompts)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):], mask[i, T - len(p):] = p, 1
    assert generate_ids(model, m, ids, mask, cfg.eval.decoding, 999, 0) == singles


DECODINGS = {
    "greedy": dict(num_beams=1, no_repeat_ngram_size=2),
    "greedy-min": dict(num_beams=1, no_repeat_ngram_size=2, min_new_tokens=6),
    "beam4-lp2-min": dict(num_beams=4, length_penalty=2.0, min_new_tokens=5, no_repeat_ngram_size=2),
    "beam3-lp05-late": dict(num_beams=3, length_penalty=0.5, early_stopping=False, no_repeat_ngram_size=0),
}


@pytest.mark.parametrize("decoding", list(DECODINGS))
@pytest.mark.parametrize("method", ["zero-shot", "prompt-tuning", "lora", "last-layer", "full"])
def test_decoding_loop_equals_generate(method, decoding):
    """peftsum's batched loop (unpadded prefill, one left-padded static cache, batched decode; beam search with
    only the generated part of the cache reordered) gives the tokens transformers' generate() gives one
    article at a time: greedy and beam search, with length penalty, min_new_tokens, no_repeat_ngram_size and
    both early-stopping rules, with rows of different lengths and rows that stop at eos while others go on."""
    from peftsum.config import DecodingConfig
    from peftsum.evaluate.generate import decode_ids, hf_generate_ids

    torch.manual_seed(1)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, initializer_range=0.3,
                                       eos_token_id=999, bos_token_id=999))
    cfg = cfg_for(method, **{"method.prompt_tuning.init": "random", "method.prompt_tuning.num_prompts": 5})
    m = build_method(cfg)
    m.prepare_model(model)
    if method == "lora":  # B starts at zero: move it so the adapter changes the output
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.5)
    model.eval()
    prompts = [torch.randint(0, 999, (n,)) for n in (9, 4, 6, 4, 11)]
    dec = DecodingConfig(max_new_tokens=12, **DECODINGS[decoding])
    free = decode_ids(model, m, prompts, DecodingConfig(max_new_tokens=12, no_repeat_ngram_size=2), 999, 0,
                      prefill_tokens=8)
    eos = free[1][7]  # a token row 1 emits eighth under greedy: as eos, rows stop at different steps
    fast = decode_ids(model, m, prompts, dec, eos, 0, prefill_tokens=8)
    slow = [hf_generate_ids(model, m, p[None], torch.ones(1, len(p), dtype=torch.long), dec, eos, 0)[0]
            for p in prompts]
    assert fast == slow
    assert min(len(r) for r in fast) >= dec.min_new_tokens
    if dec.length_penalty < 1 or dec.num_beams == 1:  # (a length penalty of 2 favours running to the limit)
        assert len({len(r) for r in fast}) > 1  # some rows ended at eos before others
    assert len({tuple(r) for r in fast}) == len(prompts)
