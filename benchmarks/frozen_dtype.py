"""The frozen weights stored in the compute dtype (``train.frozen_weights_in_compute_dtype``) on and off, side by side
in one run, under bf16 autocast on this CPU (as a GPU runs bf16): LoRA on GPT-2 small's shape (random weights), the
casts autocast makes of the frozen weights in one forward, the time of a training pass, the time of a greedy decode
step (what ROUGE generation repeats), and the loss and decoded tokens (equal when on).

    python benchmarks/frozen_dtype.py [--batch 1] [--passes 2] [--prompts 4] [--new-tokens 16]
"""

from __future__ import annotations

import time

import torch
import torch.utils._python_dispatch
from _common import (
    args,
    gpt2_small,
    machine,
    peftsum_config,
    synthetic_examples,
    token_batch,
    training_passes,
)


class Casts(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts bf16 casts of the tensors given (by storage)."""

    def __init__(self, tensors):
        super().__init__()
        self.pointers, self.n = {t.data_ptr() for t in tensors}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and kwargs.get("dtype") == torch.bfloat16 \
                and args[0].data_ptr() in self.pointers:
            self.n += 1
        return func(*args, **kwargs)


def measure(device, dtype=torch.bfloat16, batch: int = 1, passes: int = 2, prompts: int = 4, new_tokens: int = 16,
            n_layer: int = 12) -> dict:
    """Both settings of ``train.frozen_weights_in_compute_dtype`` under autocast in ``dtype`` on ``device``: per setting
    (False, True) the casts of the frozen weights in one forward, their number, the training pass's seconds, a decode
    step's seconds, the whole generation's seconds, the loss and the decoded tokens."""
    from transformers.pytorch_utils import Conv1D

    from peftsum.evaluate.cost import synchronize
    from peftsum.evaluate.generate import decode_ids
    from peftsum.methods import build_method
    from peftsum.model.loading import offline_gpt2_tokenizer

    tok = offline_gpt2_tokenizer()
    inputs = {k: v.to(device) for k, v in token_batch(batch).items()}
    texts = [torch.tensor(e["input_ids"][: e["prompt_len"]], device=device) for e in synthetic_examples(prompts, seed=2)]
    rows = {}
    for on in (False, True):
        cfg = peftsum_config("lora", batch, 1, **{"model.dropout": 0.0, "method.lora.dropout": 0.0,
                                                  "train.frozen_weights_in_compute_dtype": on,
                                                  "eval.decoding.max_new_tokens": new_tokens,
                                                  "eval.decoding.no_repeat_ngram_size": 0})
        model = gpt2_small(n_layer=n_layer)
        method = build_method(cfg, tok, dtype)
        torch.manual_seed(0)
        method.prepare_model(model)
        model.to(device)
        frozen = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D))
                  and not m.weight.requires_grad and m.weight is not model.get_input_embeddings().weight]
        with torch.autocast(device.type, dtype=dtype):
            model.eval()
            with torch.no_grad(), Casts(frozen) as casts:
                model(input_ids=inputs["input_ids"][:, :8])
            seconds, _, loss = training_passes(model, method, inputs, passes)
            model.eval()
            with torch.no_grad():
                decode_ids(model, method, texts[:1], cfg.eval.decoding, 50256, 50256)  # warm-up
                timings: dict = {}
                synchronize(device)
                t0 = time.perf_counter()
                tokens = decode_ids(model, method, texts, cfg.eval.decoding, 50256, 50256, timings=timings)
                synchronize(device)
                total = time.perf_counter() - t0
        rows[on] = {"casts": casts.n, "frozen": len(frozen), "pass": seconds,
                    "step": timings["decode"] / max(timings["decode_steps"], 1), "generation": total, "loss": loss,
                    "tokens": tokens}
    return rows


def describe(rows: dict) -> list[str]:
    off, on = rows[False], rows[True]
    return [f"casts of the {off['frozen']} frozen weights in one forward: {off['casts']} off, {on['casts']} on",
            f"training pass: {off['pass']:.3f} s off, {on['pass']:.3f} s on ({off['pass'] / on['pass']:.2f}x faster)",
            f"decode step: {off['step'] * 1000:.2f} ms off, {on['step'] * 1000:.2f} ms on "
            f"({off['step'] / on['step']:.2f}x faster); whole generation {off['generation']:.2f} s off, "
            f"{on['generation']:.2f} s on ({off['generation'] / on['generation']:.2f}x)",
            f"loss {off['loss']:.6f} off, {on['loss']:.6f} on; decoded tokens "
            f"{'equal' if off['tokens'] == on['tokens'] else 'DIFFER'}"]


def main():
    a = args(__doc__.splitlines()[0], batch=1, passes=2, prompts=4, new_tokens=16)
    print(machine())
    print(f"training pass: batch {a.batch} x ~600 tokens, {a.passes} timed after one warm-up; decode: {a.prompts} "
          f"prompts of 400-512 tokens, {a.new_tokens} greedy tokens; bf16 autocast")
    for line in describe(measure(torch.device("cpu"), torch.bfloat16, a.batch, a.passes, a.prompts, a.new_tokens)):
        print(line)


if __name__ == "__main__":
    main()
