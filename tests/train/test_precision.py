"""Mixed precision from the hardware (train/precision.py), observed through monkeypatched torch.cuda queries:
bf16 from compute capability 8.0, fp16 with loss scaling below it (where is_bf16_supported() says True through
emulation), none on the CPU."""

import logging

import pytest
import torch

from peftsum.train.precision import compute_dtype, resolve_mixed_precision


def _gpu(monkeypatch, capability):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # T4: emulated
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU")


@pytest.mark.parametrize("capability, expected", [((7, 5), "fp16"), ((7, 0), "fp16"), ((8, 0), "bf16"),
                                                  ((8, 9), "bf16"), ((9, 0), "bf16")])
def test_auto_follows_the_compute_capability(monkeypatch, capability, expected):
    _gpu(monkeypatch, capability)  # T4 is 7.5, V100 7.0, A100 8.0, L4 8.9, H100 9.0
    assert resolve_mixed_precision("auto", cpu=False) == expected
    assert resolve_mixed_precision("auto", cpu=True) == "no"  # plan --device cpu
    assert resolve_mixed_precision("no", cpu=False) == "no"
    assert compute_dtype(expected) == {"fp16": torch.float16, "bf16": torch.bfloat16}[expected]


def test_auto_without_a_gpu_is_full_precision():
    assert not torch.cuda.is_available()
    assert resolve_mixed_precision("auto", cpu=False) == "no" and compute_dtype("no") == torch.float32


def test_bf16_asked_for_on_a_t4_runs_with_a_warning(monkeypatch, caplog):
    _gpu(monkeypatch, (7, 5))
    with caplog.at_level(logging.WARNING):
        assert resolve_mixed_precision("bf16", cpu=False) == "bf16"
    assert "no bf16 tensor cores" in caplog.text and "7.5" in caplog.text


def test_tf32_is_set_on_a_gpu_and_never_on_the_cpu(monkeypatch):
    from peftsum.train.precision import set_tf32

    calls = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", calls.append)
    set_tf32(True, on_gpu=False)
    assert calls == []  # the CPU stays exact
    set_tf32(True, on_gpu=True)
    set_tf32(False, on_gpu=True)
    assert calls == ["high", "highest"]
