"""Activation (gradient) checkpointing on and off, side by side in one run: the bytes autograd keeps for the
backward (every tensor saved in the forward, counted once per storage: the activation memory, the same on any
device), the time of a forward/backward pass, and the loss, for LoRA, prompt tuning and full fine-tuning on GPT-2
small's shape (random weights) with one batch of CNN/DailyMail-length sequences.

    python benchmarks/checkpointing.py [--batch 2] [--passes 2] [--methods lora,prompt-tuning,full]
"""

from __future__ import annotations

from _common import args, gpt2_small, machine, peftsum_config, token_batch, training_passes


def main():
    from peftsum.methods import build_method
    from peftsum.model.loading import offline_gpt2_tokenizer

    a = args(__doc__.splitlines()[0], batch=2, passes=2, methods="lora,prompt-tuning,full")
    print(machine())
    tok = offline_gpt2_tokenizer()
    inputs = token_batch(a.batch)
    print(f"batch {a.batch} x {inputs['input_ids'].shape[1]} tokens, {a.passes} timed passes after one warm-up")
    for name in a.methods.split(","):
        row = {}
        for on in (False, True):
            cfg = peftsum_config(name, a.batch, 1, **{"model.dropout": 0.0, "train.gradient_checkpointing": on})
            model, method = gpt2_small(), build_method(cfg, tok)
            method.prepare_model(model)
            row[on] = training_passes(model, method, inputs, a.passes)
        (t0, s0, l0), (t1, s1, l1) = row[False], row[True]
        print(f"{name}: saved for backward {s0 / 2**20:.0f} MiB off, {s1 / 2**20:.0f} MiB on ({s0 / s1:.1f}x less); "
              f"pass {t0:.2f} s off, {t1:.2f} s on ({t1 / t0:.2f}x); loss {l0:.6f} off, {l1:.6f} on")


if __name__ == "__main__":
    main()
