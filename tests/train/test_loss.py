"""The summary loss (train/loss.py) against a hand computation."""


import pytest
import torch
import torch.nn.functional as F

from peftsum.experiment import load_components


def test_evaluation_loss_equals_a_hand_computation(tiny_cfg):
    cfg = tiny_cfg("zero-shot")
    parts = load_components(cfg)
    model, tok, lm = parts.model, parts.tokenizer, parts.summary_lm
    data, _ = parts.load_data()
    from peftsum.evaluate.metrics import evaluate_loss

    ds = data["validation"].select(range(5))
    ours = evaluate_loss(lm, ds, 2, torch.device("cpu"), tok.pad_token_id)
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for ex in ds:  # one example at a time, no padding, the model's own logits
            ids = torch.tensor([ex["input_ids"]])
            logp = F.log_softmax(model(ids).logits[0].double(), -1)
            for t in range(ex["prompt_len"], len(ex["input_ids"])):
                total -= logp[t - 1, ex["input_ids"][t]].item()
                n += 1
    assert ours["tokens"] == n
    assert ours["loss"] == pytest.approx(total / n, abs=1e-5)
    # no autograd graph: the evaluation's forwards run without gradients, trained parameters or not
    seen = []
    hook = lm.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    for p in model.parameters():
        p.requires_grad_(True)
    evaluate_loss(lm, ds, 2, torch.device("cpu"), tok.pad_token_id)
    hook.remove()
    assert seen and not any(seen)
