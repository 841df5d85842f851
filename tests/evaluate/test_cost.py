"""FLOP counts by formula (evaluate/cost.py): each method's FLOP shape on GPT-2 small's shape, a step's FLOPs by hand."""

import copy

import pytest
import torch

from peftsum.methods import build_method
from tests.conftest import method_cfg

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
    m = build_method(method_cfg(method, **kw))
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
    # activation checkpointing: one more forward of the blocks the backward passes through (all 12 for LoRA; a
    # last-layer run training the top 2 blocks recomputes those 2; the cached trunk has no backward to recompute)
    assert train_flops(lora, 1000, 100, 500, recompute=True) - train_flops(lora, 1000, 100, 500) == per_token * 1000
    top2 = FlopShape(BLOCKS, HEAD, 12, 768, BLOCKS // 6, True, 2)
    per_token_base = 2 * BLOCKS + 2 * 12 * 500 * 768
    assert train_flops(top2, 1000, 100, 500, recompute=True) - train_flops(top2, 1000, 100, 500) == \
        pytest.approx(per_token_base * 1000 * 2 / 12, rel=1e-12)
    assert train_flops(cached, 1000, 100, 500, 3000, recompute=True) == train_flops(cached, 1000, 100, 500, 3000)
    # the head runs on summary positions only: counting it on all 1,000 would add 40 % here
    full_head = train_flops(lora, 1000, 1000, 500) / train_flops(lora, 1000, 100, 500)
    assert 1.3 < full_head < 1.5


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA L40S", "bf16", 362.05e12), ("NVIDIA L40", "bf16", 181.05e12), ("NVIDIA L4", "bf16", 121e12),
    ("NVIDIA H100 PCIe", "bf16", 756.5e12), ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),
    ("NVIDIA H100 80GB HBM3", "tf32", 494.7e12), ("NVIDIA H100 80GB HBM3", "fp32", 66.9e12),
    ("NVIDIA H200", "bf16", 989.4e12), ("NVIDIA A100-SXM4-80GB", "tf32", 156e12), ("Tesla T4", "fp16", 65e12),
    ("Tesla T4", "bf16", None),  # no bf16 tensor cores: the measured peak stands in
    ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", "bf16", None),  # a MIG slice is not the whole GPU
    ("NVIDIA GeForce RTX 4090", "bf16", 165.2e12), ("CPU: Intel(R) Xeon(R) (2 threads)", "fp32", None),
])
def test_the_datasheet_peak_by_exact_name_and_precision(name, precision, peak):
    """Exact names (no "L4" inside "L40S", no SXM figure for a PCIe card) and the peak of the precision in use."""
    from peftsum.evaluate.cost import peak_flops

    assert peak_flops(name, precision) == peak


def test_the_matmuls_precision_follows_mixed_precision_and_tf32(monkeypatch):
    from peftsum.evaluate.cost import matmul_precision

    assert matmul_precision("bf16") == "bf16" and matmul_precision("fp16") == "fp16"
    assert torch.get_float32_matmul_precision() == "highest" and matmul_precision("no") == "fp32"
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")  # TF32 allowed
    assert matmul_precision("no") == "tf32"
