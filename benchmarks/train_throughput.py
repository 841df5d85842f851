"""Training throughput, per method: peftsum's loop against a plain HF Trainer + PEFT script.

Both train GPT-2 small's shape (12 x 768, random weights) on the same synthetic examples (CNN/DailyMail
lengths), for the same number of optimizer steps at the same batch size, on this machine, in one run.

The baseline is the script users typically write: the tokenizer pads every example to a fixed length
(512 + 5 + 128 + 1 = 646), a DataCollatorForLanguageModeling-style batch has labels = input_ids (pad -100),
so the loss and the 50,257-way LM head cover every position; PEFT's get_peft_model for LoRA and prompt
tuning; for last-layer the assignment's recipe (unfreeze model.lm_head, which is tied to wte).

    python benchmarks/train_throughput.py [--steps 4] [--batch 4] [--methods lora,prompt-tuning,last-layer]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from _common import (
    SEP,
    SOURCE,
    TARGET,
    args,
    as_dataset,
    fresh,
    gpt2_small,
    machine,
    peftsum_config,
    synthetic_examples,
)

MAXLEN = SOURCE + SEP + TARGET + 1


def baseline_model(method: str, base):
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    model = fresh(base)
    if method == "lora":
        return get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["c_attn"],
                                                fan_in_fan_out=True, task_type="CAUSAL_LM"))
    if method == "prompt-tuning":
        return get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20))
    for p in model.parameters():  # the assignment's recipe
        p.requires_grad = False
    for p in model.lm_head.parameters():
        p.requires_grad = True
    return model


def run_baseline(method: str, base, examples, steps: int, batch: int, epochs: int = 1) -> tuple[float, int]:
    """HF Trainer; returns (train seconds, examples seen)."""
    from transformers import Trainer, TrainingArguments

    model = baseline_model(method, base)

    def pad(ex):  # tokenizer(padding="max_length") + DataCollatorForLanguageModeling(mlm=False)
        ids = ex["input_ids"][:MAXLEN]
        n = len(ids)
        ids = ids + [50256] * (MAXLEN - n)
        return {"input_ids": ids, "attention_mask": [1] * n + [0] * (MAXLEN - n),
                "labels": ids[:n] + [-100] * (MAXLEN - n)}

    ds = as_dataset([pad(e) for e in examples])
    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(output_dir=out, per_device_train_batch_size=batch, max_steps=steps if epochs == 1 else -1,
                                  num_train_epochs=epochs, learning_rate=1e-4, max_grad_norm=1.0, logging_strategy="no",
                                  save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                                  disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=targs, train_dataset=ds)
        t0 = time.perf_counter()
        out_metrics = trainer.train()
        seconds = time.perf_counter() - t0
    return seconds, out_metrics.global_step * batch


def run_peftsum(method: str, base, examples, steps: int, batch: int, epochs: int = 1, **overrides) -> tuple[float, int]:
    from peftsum.experiment import accelerator_for
    from peftsum.methods import build_method
    from peftsum.model.loading import offline_gpt2_tokenizer
    from peftsum.train.loop import MetricsFile, train
    from peftsum.train.loss import SummaryLM

    cfg = peftsum_config(method, batch, steps if epochs == 1 else 10**9, **{"train.epochs": epochs, **overrides})
    model = fresh(base)
    method_obj = build_method(cfg, offline_gpt2_tokenizer())
    method_obj.prepare_model(model)
    lm = SummaryLM(model, method_obj)
    ds = as_dataset(examples)
    val = as_dataset(examples[:batch])
    with tempfile.TemporaryDirectory() as out:
        state = train(cfg, Path(out), summary_lm=lm, method=method_obj, train_ds=ds, val_ds=val,
                      accelerator=accelerator_for(cfg), tokenizer=method_obj.tokenizer,
                      metrics_file=MetricsFile(Path(out) / "m.jsonl")).state
    return state.train_seconds, state.examples


def main():
    a = args(__doc__.splitlines()[0], steps=4, batch=4, methods="prompt-tuning,lora,last-layer", threads=0)
    if a.threads:
        torch.set_num_threads(a.threads)
    base = gpt2_small()
    examples = synthetic_examples(a.steps * a.batch)
    print(f"machine: {machine()}")
    print(f"GPT-2 small shape, random weights; {len(examples)} examples, {a.steps} steps x batch {a.batch}; "
          f"real tokens {sum(len(e['input_ids']) for e in examples):,}, padded baseline tokens {len(examples) * MAXLEN:,}")
    run_baseline("lora", base, examples[: a.batch], 1, a.batch)  # warm-up: one-time costs paid by neither side
    run_peftsum("lora", base, examples[: a.batch], 1, a.batch)
    # peftsum as configured (on CPU: one sequence per forward pass for these lengths, CPU_ATTENTION_BYTES) and,
    # beside it, the whole batch in one pass (train.micro_batch_size = batch), as the baseline runs it
    print(f"{'method':<15}{'baseline ex/s':>15}{'peftsum ex/s':>15}{'ratio':>8}{'whole-batch ex/s':>18}{'ratio':>8}")
    for m in a.methods.split(","):
        bs, bn = run_baseline(m, base, examples, a.steps, a.batch)
        ps, pn = run_peftsum(m, base, examples, a.steps, a.batch)
        ws, wn = run_peftsum(m, base, examples, a.steps, a.batch, **{"train.micro_batch_size": a.batch})
        assert bn == pn == wn == a.steps * a.batch, (bn, pn, wn)
        base_rate = bn / bs
        print(f"{m:<15}{base_rate:>15.3f}{pn / ps:>15.3f}{(pn / ps) / base_rate:>7.2f}x"
              f"{wn / ws:>18.3f}{(wn / ws) / base_rate:>7.2f}x", flush=True)


if __name__ == "__main__":
    main()
