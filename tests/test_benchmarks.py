"""The benchmarks that wait for a GPU keep working: benchmarks/gpu.py runs end to end on the CPU with its smoke
flag, every part of it (the matmul peak, the LoRA step, plan's projection and the aim's verdict)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_script_runs_on_the_cpu(tiny_model_dir):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu",
                           "--smoke-model", str(tiny_model_dir)], capture_output=True, text=True, timeout=900,
                          cwd=ROOT / "benchmarks", env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "matmul peak (torch.float32)" in out  # the CPU runs fp32, as train.mixed_precision auto decides
    assert out.count("LoRA step, batch 1") == 2
    for method in ("prompt-tuning", "lora", "last-layer"):
        assert method in out
    assert "aim: the whole protocol under 20 device-minutes" in out and ("met" in out)
    assert "prefill of 4 mixed-length prompts, one padded forward against equal-length groups" in out
    assert out.count("the same tokens (float32): True") == 2  # the mixed-length prefill, and the compiled decode
    assert "decode of 4 prompts x 4 tokens, eval.compile against eager" in out
    assert "aim: eval.compile's decode faster than eager, the same tokens" in out
    assert "memory by part" in out and "aim: LoRA's step at least 30 % MFU" in out
    for lever in ("train.tf32", "model.attn_implementation", "train.fused_optimizer", "train.compile",
                  "train.gradient_checkpointing"):
        assert f"  {lever} = " in out, lever
    assert "aim: train.fused_optimizer's default no slower than its alternative" in out
    assert "frozen weights in the compute dtype: casts of the 4 frozen weights in one forward: 4 off, 0 on" in out
    assert "decoded tokens equal" in out


@pytest.mark.parametrize("flips_in_float32", [False, True])
def test_the_gpu_script_compares_tokens_where_it_means_something(monkeypatch, flips_in_float32):
    """Under bf16, near-tied logits of random weights flip a greedy token between two prefill paths with nothing
    wrong: before, gpu.py called that 'not the same tokens' and its aim 'not met'.  The tokens are compared in
    float32: a flip under bf16 alone passes, a flip in float32 too is reported."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import decode_compile
    import gpu
    from transformers import GPT2Config, GPT2LMHeadModel

    import peftsum.evaluate.generate as generate

    def small(seed=0, n_layer=1):  # GPT-2's vocabulary, a narrow trunk: the comparison is under test, not the speed
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=32, n_head=2)).eval()

    monkeypatch.setattr(decode_compile, "gpt2_small", small)

    real = generate.decode_ids

    def flipping(*a, **k):  # the mixed prefill path decodes one other token, in half precision (or always)
        out = real(*a, **k)
        if k.get("mixed_prefill") and (flips_in_float32 or torch.is_autocast_enabled("cpu")):
            out = [row[:-1] + [row[-1] + 1] for row in out]
        return out

    monkeypatch.setattr(generate, "decode_ids", flipping)
    r = gpu.measure_prefill(torch.device("cpu"), torch.bfloat16, prompts=2, n_layer=1)
    assert r["same"] is (not flips_in_float32)
