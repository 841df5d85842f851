"""LoRA on the full-precision base against LoRA on the base quantized by bitsandbytes (QLoRA's NF4, LLM.int8()),
side by side in one run on GPT-2 small's shape (random weights, saved once and loaded three ways): the bytes of the
weights as stored (the blocks' quantized matrices with their constants), the time of a training pass, the bytes
saved for the backward, and the loss on the same batch of CNN/DailyMail-length sequences.

    python benchmarks/qlora.py [--batch 2] [--passes 2] [--quantize nf4,int8]
"""

from __future__ import annotations

import tempfile

from _common import args, gpt2_small, machine, peftsum_config, token_batch, training_passes


def main():
    from peftsum.evaluate.cost import tensor_bytes
    from peftsum.methods import build_method
    from peftsum.model.loading import load_model, offline_gpt2_tokenizer

    a = args(__doc__.splitlines()[0], batch=2, passes=2, quantize="nf4,int8")
    print(machine())
    tok = offline_gpt2_tokenizer()
    inputs = token_batch(a.batch)
    print(f"batch {a.batch} x {inputs['input_ids'].shape[1]} tokens, {a.passes} timed passes after one warm-up; "
          "LoRA r=8 on attn.c_attn")
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        gpt2_small().save_pretrained(folder)
        for quantize in ("none", *a.quantize.split(",")):
            cfg = peftsum_config("lora", a.batch, 1, **{"model.dropout": 0.0, "method.lora.dropout": 0.0,
                                                        "model.quantize": quantize})
            model = load_model(folder, quantize=quantize)
            method = build_method(cfg, tok)
            method.prepare_model(model)
            blocks = [p for block in model.transformer.h for p in block.parameters() if not p.requires_grad]
            seconds, saved, loss = training_passes(model, method, inputs, a.passes)
            rows[quantize] = (tensor_bytes(model.parameters()), tensor_bytes(blocks), seconds, saved, loss)
    w0, b0, t0, s0, l0 = rows["none"]
    print(f"{'base':<6}{'weights MiB':>12}{'blocks MiB':>12}{'blocks x':>10}{'pass s':>9}{'pass x':>8}"
          f"{'saved MiB':>11}{'loss':>11}")
    for q, (w, b, t, s, loss) in rows.items():
        print(f"{q:<6}{w / 2**20:>12.1f}{b / 2**20:>12.1f}{b / b0:>10.3f}{t:>9.2f}{t / t0:>8.2f}{s / 2**20:>11.0f}"
              f"{loss:>11.6f}")


if __name__ == "__main__":
    main()
