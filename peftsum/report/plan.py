"""``peftsum plan``: time the real pieces here, project the whole protocol before anything long runs.

For each method: build the model and method exactly as training does, run the training loop's own step
(:meth:`peftsum.train.loop.Trainer.train_step`) on sampled examples — one forward/backward pass per probe
step, scaled by the passes a configured step makes (micro-batches x accumulation) — the validation the
loop runs, the final evaluation's loss and a generation probe (prefill + per-token decode); project per
epoch and for the whole protocol.  Assumptions are printed with the numbers.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset

from ..config import FSDP_METHODS, Config
from ..data.collate import seq_lengths
from ..data.tokenize import load_tokenized, make_budget
from ..errors import UserError
from ..evaluate import cost as costs
from ..evaluate.generate import decode_ids, generate_summaries
from ..experiment import accelerator_for
from ..experiment.compare import method_config, run_name
from ..experiment.run import adapt, base_for
from ..methods import CachedTrunk, OwnTrunk, Untrained, build_method, method_class
from ..model.arch import decoder_blocks
from ..model.loading import (
    load_model,
    load_tokenizer,
    n_positions,
    random_shape,
    resolve_model_name,
    set_dropout,
)
from ..model.tokenizer import GPT2_FAMILY, hub_alias
from ..train.loop import Trainer, steps_per_epoch, uncompile
from ..train.loss import SummaryLM
from ..train.metrics_file import MetricsFile
from ..train.precision import compute_dtype
from ..train.strategies import micro_batch_size
from ..utils import release_memory

CPU_PROBE_EXAMPLES = 4  # on a CPU: the validation examples and the prompts that are timed
CPU_PROBE_PROMPT = 32  # on a CPU: the prompt tokens kept by the short decode probes


def _synthetic_examples(n: int, cfg: Config, rng, source_tokens: int) -> list[dict]:
    """CNN/DailyMail-like lengths: articles ~ N(780, 400) tokens cut to the budget, summaries 40-100."""
    out = []
    for _ in range(n):
        a = int(np.clip(rng.normal(780, 400), 150, source_tokens))
        s = int(rng.integers(40, min(100, cfg.data.max_target_tokens) + 1))
        ids = rng.integers(0, 50000, a + 5 + s + 1).tolist()
        out.append({"input_ids": ids, "prompt_len": a + 5})
    return out


def _examples(cfg: Config, tokenizer, positions: int, num_virtual: int, n: int, rng):
    """``n`` training examples drawn from the configured data (drawn again when it has fewer), or synthetic
    CNN/DailyMail-like ones when the data cannot be loaded here; their source; the mean length of the
    whole training split; the sizes of the splits a run would use."""
    sizes = {"train": cfg.data.train_size, "validation": cfg.data.val_size, "test": cfg.data.test_size}
    budget = make_budget(tokenizer, cfg.data, positions, num_virtual, cfg.virtual_token_reserve(),
                         cfg.generation_tokens())
    try:
        dd, _, _ = load_tokenized(cfg.data, tokenizer, positions, num_virtual, budget.reserve, budget.summary)
    except UserError:
        ex = _synthetic_examples(n, cfg, rng, budget.source)
        return ex, float(np.mean([len(e["input_ids"]) for e in ex])), "synthetic CNN/DailyMail-like lengths", sizes
    ds = dd["train"]
    reuse = n > len(ds)
    idx = rng.choice(len(ds), size=n, replace=reuse)
    source = "the configured data (sampled" + (f"; its {len(ds)} training examples reused to fill the timed batches)"
                                               if reuse else ")")
    return [ds[int(i)] for i in idx], float(np.mean(seq_lengths(ds))), source, {k: len(v) for k, v in dd.items()}


class _Bases:
    """The base model ``plan`` probes: loaded once (``--shape random``: the configured model's shape with random weights,
    nothing downloaded; ``--shape gpt2-small``: GPT-2 small's, whatever the model), each method preparing a copy; a
    quantized base (QLoRA) is loaded anew for each method that asks for one, quantized by bitsandbytes as it loads (a
    random shape from a copy saved once)."""

    def __init__(self, cfg: Config, shape: str, device: torch.device, dtype: torch.dtype):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.base: torch.nn.Module | None = None
        self.saved: tempfile.TemporaryDirectory | None = None
        self.random = {"real": None, "gpt2-small": "gpt2"}.get(shape, cfg.model.name)  # whose shape, if random
        self.name = resolve_model_name(cfg.model.name) if self.random is None else None
        self.desc = cfg.model.name
        self.tokenizer = None  # loaded after the model: a missing model is the first error

    def get(self, quantize: str = "none") -> torch.nn.Module:
        if quantize != "none":
            return self._load(quantize)
        if self.base is None:
            self.base = self._load("none")
        return self.base

    def _load(self, quantize: str) -> torch.nn.Module:
        name = self.name
        if name is None and quantize == "none":
            model, self.desc = random_shape(self.random, attn_implementation=self.cfg.model.attn_implementation)
            if self.tokenizer is None:  # the GPT-2 family's is built offline; another model's from its name
                tok = self.cfg.model.tokenizer or self.random
                self.tokenizer = load_tokenizer("gpt2-bpe" if hub_alias(tok) in GPT2_FAMILY else tok)
        else:
            if name is None:
                if self.saved is None:
                    self.saved = tempfile.TemporaryDirectory(prefix="peftsum-plan-")
                    self.get().save_pretrained(self.saved.name)
                name = self.saved.name
            try:
                model = load_model(name, attn_implementation=self.cfg.model.attn_implementation, quantize=quantize,
                                   compute_dtype=self.dtype, device=self.device)
            except UserError as e:
                raise UserError(f"{e}; to plan without the weights use --shape random") from None
            if self.tokenizer is None:
                self.tokenizer = load_tokenizer(self.cfg.model.tokenizer or name)
        set_dropout(model, self.cfg.model.dropout)
        return model


def plan(cfg: Config, methods: list[str], device: str | None, steps: int | None, shape: str, levers: bool = False,
         device_memory: int | None = None, processes: int = 1) -> str:
    if cfg.grid.models or cfg.grid.train_sizes:
        return render_grid(measure_grid(cfg, methods, device, steps, shape), device_memory)
    result = measure(cfg, methods, device, steps, shape, progress=True, levers=levers)
    if levers and processes > 1:
        result["rows"] += sharded_rows(result["rows"], processes)
    return render(result, device_memory)


def sharded_rows(rows: list[dict], processes: int) -> list[dict]:
    """``train.fsdp`` over ``processes``: each shardable method's memory per process, from its measured row: the
    training state in ``processes`` shards, plus the weights of the units gathered whole at once (the root's own,
    which stay gathered through a forward, and the largest block's), plus the activations as measured.  Memory
    only: the time of a sharded step (its all-gathers and reduce-scatters) is not projected."""
    out = []
    for r in rows:
        if r["method"].split(" ")[0] not in FSDP_METHODS:
            continue
        out.append({**r, "method": f"{r['method']} fsdp/{processes}", "memory_only": True,
                    "state_bytes": math.ceil(r["state_bytes"] / processes) + r["unit_bytes"]})
    return out


def measure_grid(cfg: Config, methods: list[str], device: str | None, steps: int | None = None,
                 shape: str = "real") -> list[dict]:
    """``compare --models --train-sizes`` before it runs: each model probed once (at the largest training set),
    its rows projected for every training-set size; one result per model, its rows tagged with the model."""
    models, sizes = cfg.grid.models or [cfg.model.name], cfg.grid.train_sizes or [cfg.data.train_size]
    results = []
    for model in models:
        mcfg = copy.deepcopy(cfg)
        mcfg.model.name, mcfg.data.train_size = model, max(sizes)
        mcfg.grid.models, mcfg.grid.train_sizes = [], []
        r = measure(mcfg, methods, device, steps, shape, progress=True, train_sizes=sizes)
        results.append({**r, "grid_model": model})
    return results


def render_grid(results: list[dict], device_memory: int | None = None) -> str:
    """Each model's table (a row per method and training-set size), then the whole grid's device time."""
    parts, total = [], 0.0
    for r in results:
        parts += [f"== {r['grid_model']}", render(r, device_memory), ""]
        total += sum(x["total_seconds"] for x in r["rows"])
    cells = sum(len({x["train_size"] for x in r["rows"]}) for r in results)
    parts.append(f"whole grid: {len(results)} model(s) x {cells // max(len(results), 1)} training-set size(s) = "
                 f"{cells} cells, {_hms(total)} ({total / 3600:.2f} device-hours) of the trained methods; with W workers "
                 "on as many devices about that divided by W")
    return "\n".join(parts)


def _variants(cfg: Config, methods: list[str], levers: bool) -> list[tuple[str, Config]]:
    """(label, config) of each probe: every method as configured and, with ``levers``, also with activation
    checkpointing switched (where it changes anything: not for a cached or own trunk, nor untrained methods).
    QLoRA is a lever too: ask for it as a method (``--methods lora,qlora``)."""
    out = []
    for entry in methods:
        m, mcfg = run_name(entry), method_config(cfg, entry)  # a built-in method or peft:FILE
        out.append((m, mcfg))
        if levers and not issubclass(method_class(mcfg), (Untrained, CachedTrunk, OwnTrunk)):
            flipped = copy.deepcopy(mcfg)
            flipped.train.gradient_checkpointing = not mcfg.train.gradient_checkpointing
            out.append((f"{m} {'+' if flipped.train.gradient_checkpointing else '-'}ckpt", flipped))
    return out


def _timed(dev, fn, *args) -> float:
    costs.synchronize(dev)
    t0 = time.perf_counter()
    fn(*args)
    costs.synchronize(dev)
    return time.perf_counter() - t0


@dataclasses.dataclass
class Probe:
    """What one method's probes measured on this device: the pieces a projection multiplies."""

    step_seconds: float  # one optimizer step: its passes x the median timed pass
    passes_per_step: int
    pass_size: int  # sequences per forward/backward pass (micro-batch)
    activation_bytes: int  # what one pass keeps for its backward
    validation_per_example: float  # seconds: the loop's validation (cached features for a frozen trunk)
    forward_per_example: float  # seconds: the trunk's forward (the final evaluation's loss)
    cached: bool  # a frozen trunk whose features are cached (CachedTrunk)
    cache_per_example: float  # seconds: building the frozen trunk's feature cache (0 without one)
    state: dict  # exact bytes: weights, gradients, optimizer
    unit_bytes: int  # what one FSDP unit gathers whole
    generation_per_batch: float  # seconds: one batch's prefill and max_new_tokens decode steps
    peak_memory_bytes: int | None
    trainable: int
    shape_flops: object
    seq_len: float  # mean tokens of a training sequence, soft prompt included
    mean_len: float
    mean_target: float


@dataclasses.dataclass
class PlanRow:
    """One projected row: a method (and lever) at one training-set size."""

    method: str
    train_size: int
    step_seconds: float
    steps: int
    epochs: float
    train_seconds: float
    selection_seconds: float
    validation_seconds: float
    final_eval_seconds: float
    total_seconds: float
    peak_memory_bytes: int | None
    state_bytes: int
    weights_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    unit_bytes: int
    activation_bytes: int
    pass_size: int
    train_flops: float
    trainable: int
    tokens_per_second: float
    mfu: float | None


def measure(cfg: Config, methods: list[str], device: str | None, steps: int | None = None, shape: str = "real",
            progress: bool = False, levers: bool = False, train_sizes: list[int] | None = None) -> dict:
    """Time the loop's own optimizer step (one forward/backward pass per probe step, scaled by the passes
    a real step makes), the validation the loop runs (cached features for a frozen trunk), and generation
    (prefill + per-token decode); project the whole protocol (for each of ``train_sizes``: a grid's row per size)."""
    accelerator = accelerator_for(cfg, device)
    dev = accelerator.device
    dtype = compute_dtype(accelerator.mixed_precision)
    bases = _Bases(cfg, shape, dev, dtype)
    base = bases.get()
    peak_flops = costs.peak_flops(costs.device_name(dev), costs.matmul_precision(accelerator.mixed_precision))
    peak_source = "datasheet" if peak_flops else f"measured {str(dtype).replace('torch.', '')} matmul"
    if peak_flops is None:
        peak_flops = costs.matmul_peak(dev, dtype)
    rng = np.random.default_rng(cfg.train.seed)
    rows, source, sizes = [], "", {}
    t_plan = time.perf_counter()
    for m, mcfg in _variants(cfg, methods, levers):
        method = build_method(mcfg, bases.tokenizer, dtype)
        if isinstance(method, Untrained):
            continue
        t_method = time.perf_counter()
        quantized = mcfg.quantization() != "none"  # QLoRA: the base loaded quantized, where it runs
        model = adapt(base_for(mcfg, dev, bases.get(mcfg.quantization()) if quantized else base), method, dev)
        ex, mean_len, source, sizes = _examples(mcfg, bases.tokenizer, n_positions(base), method.num_virtual_tokens,
                                                max(cfg.train.batch_size, cfg.eval.batch_size), rng)
        probe = _probe(mcfg, model, method, bases.tokenizer, ex, mean_len, accelerator, steps)
        for n_train in [min(n, sizes["train"]) for n in train_sizes] if train_sizes else [sizes["train"]]:
            rows.append(dataclasses.asdict(_project(m, mcfg, probe, n_train, sizes, peak_flops)))
        if progress:
            print(f"[plan] {m}: {probe.step_seconds:.3f} s/step ({probe.passes_per_step} passes of "
                  f"{probe.pass_size}), measured in {time.perf_counter() - t_method:.0f}s", file=sys.stderr, flush=True)
        del model
        release_memory()
    return {"device": costs.device_name(dev), "model": bases.desc, "rows": rows, "data": source,
            "peak_flops": peak_flops, "peak_source": peak_source, "seconds": time.perf_counter() - t_plan,
            "assumptions": _assumptions(cfg, steps, source, sizes, dev.type == "cpu", peak_source, peak_flops)}


def _probe(mcfg: Config, model, method, tokenizer, ex: list[dict], mean_len: float, accelerator,
           steps: int | None) -> Probe:
    """The training loop's step, validation and feature cache timed on the sampled examples ``ex``, the training
    state and activations measured, then one batch's generation timed."""
    dev, train_cfg, eval_cfg = accelerator.device, mcfg.train, mcfg.eval
    bs, cpu = train_cfg.batch_size, accelerator.device.type == "cpu"
    # a forward/backward pass as the loop makes it: micro-batches of the batch (the cached head: whole batches)
    longest = max(len(e["input_ids"]) for e in ex) + method.num_virtual_tokens
    cached = isinstance(method, CachedTrunk)
    pass_size = bs if cached else min(bs, micro_batch_size(train_cfg, dev, model.config, longest) or bs)
    n_val = min(eval_cfg.batch_size, CPU_PROBE_EXAMPLES) if cpu else eval_cfg.batch_size
    # the loop itself, on the sampled examples: a probe step is one pass (batch = pass size, no accumulation)
    probe_cfg = copy.deepcopy(mcfg)
    probe_cfg.train.batch_size, probe_cfg.train.grad_accum, probe_cfg.train.max_steps = pass_size, 1, None
    probe_cfg.train.val_limit = None
    ds = Dataset.from_list([{"input_ids": e["input_ids"], "prompt_len": e["prompt_len"]} for e in ex])
    costs.reset_peak_memory(dev)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(probe_cfg, Path(tmp), summary_lm=SummaryLM(model, method), method=method, train_ds=ds,
                          val_ds=ds.select(range(n_val)), accelerator=accelerator,
                          tokenizer=tokenizer, metrics_file=MetricsFile(Path(tmp) / "m.jsonl", enabled=False))
        step_s = _step_seconds(trainer, dev, pass_size, len(ds), steps, mcfg.train.compile)
        # the activations a pass keeps for its backward, on one more untimed pass: measuring them inside a timed or
        # warm-up pass slows that pass (the hooks) and so the projection
        one_more = functools.partial(trainer.train_step, [[i % len(ds) for i in range(pass_size)]])
        _, activations = costs.activation_bytes(one_more, model)
        # validation as the loop runs it: on cached features for a frozen trunk, else the trunk's forward
        val_per_ex = _timed(dev, trainer.validation_loss) / n_val
        # the final evaluation's loss runs the trunk; with a frozen trunk that is what building its feature
        # cache timed (the head on the summary positions adds a few per cent)
        fwd_per_ex = trainer.inputs.setup_seconds / len(ds) if cached else val_per_ex
        state = costs.training_state_bytes(model, trainer.params, trainer.optimizer)
        # what one FSDP unit gathers whole: the root's own weights (embeddings, final norm) and the largest block
        units = [costs.tensor_bytes(b.parameters()) for b in decoder_blocks(model)]
        gathered = state["weights"] - sum(units) + max(units, default=0)
        accelerator.free_memory()
        uncompile(trainer.compiled)  # the evaluation generates eager, as a run's does after training
    # a batch's generation = its prefill + one decode step per further token (both timed in one call)
    prompts = [e["input_ids"][: e["prompt_len"]] for e in ex[: eval_cfg.batch_size]]
    decoding = method.decoding()
    model.eval()  # as the evaluation generates: no dropout, and a cache even where activations are checkpointed
    prefill_s, per_token = _generation_seconds(model, method, tokenizer, prompts, decoding, eval_cfg.batch_size,
                                               accelerator, min(8, decoding.max_new_tokens), few=cpu)
    return Probe(step_seconds=step_s * math.ceil(bs / pass_size) * train_cfg.grad_accum,
                 passes_per_step=math.ceil(bs / pass_size) * train_cfg.grad_accum, pass_size=pass_size,
                 activation_bytes=activations, validation_per_example=val_per_ex, forward_per_example=fwd_per_ex,
                 cached=cached, cache_per_example=fwd_per_ex if cached else 0.0, state=state, unit_bytes=gathered,
                 generation_per_batch=prefill_s + per_token * (decoding.max_new_tokens - 1),
                 peak_memory_bytes=costs.peak_memory(dev), trainable=method.param_counts(model)["trainable"],
                 shape_flops=costs.flop_shape(model, method), seq_len=mean_len + method.num_virtual_tokens,
                 mean_len=mean_len,
                 mean_target=float(np.mean([len(e["input_ids"]) - e["prompt_len"] for e in ex])))


def _step_seconds(trainer: Trainer, dev, pass_size: int, n: int, steps: int | None, compiled: bool) -> float:
    """The median of the timed passes of the loop's ``train_step`` after a warm-up: ``steps`` of them, or by default
    up to 3 and until 10 s of timing.  The median: one pass slowed by a busy machine moves it little."""
    # warm-up: a full pass (a shorter one left the first timed pass 1.6x slower on the 2-core CPU); compiled
    # blocks: three, so the first shape's graph and the dynamic one for the others are built before the clock
    for w in range(3 if compiled else 1):
        trainer.train_step([[(w * pass_size + i) % n for i in range(pass_size)]])
    timings: list[float] = []
    while len(timings) < (steps or 3) and (steps or sum(timings) < 10.0 or not timings):
        k = len(timings) + 1
        timings.append(_timed(dev, trainer.train_step, [[(k * pass_size + i) % n for i in range(pass_size)]]))
    return float(np.median(timings))


def _project(m: str, mcfg: Config, probe: Probe, n_train: int, sizes: dict, peak_flops: float) -> PlanRow:
    """The whole protocol of one method at ``n_train`` training examples, from its probes."""
    train_cfg, eval_cfg, bs = mcfg.train, mcfg.eval, mcfg.train.batch_size
    n_val, n_test = sizes["validation"], sizes["test"]  # what a run would use
    if eval_cfg.limit:
        n_test = min(n_test, eval_cfg.limit)
    n_early = min(n_val, train_cfg.val_limit or n_val)  # validation examples early stopping reads
    per_epoch = steps_per_epoch(n_train, bs, 1, train_cfg.grad_accum)
    total_steps = per_epoch * train_cfg.epochs
    if train_cfg.max_steps:
        total_steps = min(total_steps, train_cfg.max_steps)
    epochs = total_steps / per_epoch
    train_s = total_steps * probe.step_seconds
    cached = probe.cached
    if cached:  # the trunk runs once over the training and validation examples
        train_s += (n_train + n_early) * probe.cache_per_example
    evaluations = math.ceil(epochs) + 1 + (total_steps // train_cfg.eval_every_steps if train_cfg.eval_every_steps else 0)
    val_s = evaluations * n_early * probe.validation_per_example
    select_s = 0.0  # ROUGE-based selection generates for its subset at every validation after the start
    if train_cfg.select_by != "loss":
        select_s = ((evaluations - 1) * math.ceil(min(n_val, train_cfg.rouge_examples) / eval_cfg.batch_size)
                    * probe.generation_per_batch)
    final_s = (n_val + n_test) * probe.forward_per_example + math.ceil(n_test / eval_cfg.batch_size) * probe.generation_per_batch
    seqs = total_steps * bs * train_cfg.grad_accum
    flops = costs.train_flops(probe.shape_flops, int(seqs * probe.seq_len), int(seqs * probe.mean_target),
                              probe.seq_len, int(n_train * probe.mean_len) if cached else 0,
                              recompute=mcfg.train.gradient_checkpointing)
    state = probe.state
    return PlanRow(method=m, train_size=n_train, step_seconds=probe.step_seconds, steps=total_steps, epochs=epochs,
                   train_seconds=train_s + select_s, selection_seconds=select_s, validation_seconds=val_s,
                   final_eval_seconds=final_s, total_seconds=train_s + select_s + val_s + final_s,
                   peak_memory_bytes=probe.peak_memory_bytes, state_bytes=sum(state.values()),
                   weights_bytes=state["weights"], gradient_bytes=state["gradients"],
                   optimizer_bytes=state["optimizer"], unit_bytes=probe.unit_bytes,
                   activation_bytes=probe.activation_bytes, pass_size=probe.pass_size, train_flops=flops,
                   trainable=probe.trainable, tokens_per_second=bs * train_cfg.grad_accum * probe.seq_len / probe.step_seconds,
                   mfu=flops / train_s / peak_flops if train_s else None)


def _assumptions(cfg: Config, steps: int | None, source: str, sizes: dict, cpu: bool, peak_source: str,
                 peak_flops: float) -> list[str]:
    """What a projection takes for granted, printed under its table."""
    train_cfg, eval_cfg = cfg.train, cfg.eval
    return [
        f"every method runs all {train_cfg.epochs} epochs (early stopping can only shorten this)"
        + (f", capped at {train_cfg.max_steps} steps" if train_cfg.max_steps else ""),
        f"batch {train_cfg.batch_size} x accumulation {train_cfg.grad_accum}; lengths from {source or 'n/a'}",
        "examples: " + (" / ".join(f"{sizes[k]} {k}" for k in ("train", "validation", "test")) if sizes else
                        "n/a") + " (the configured sizes, or all the data has where it has fewer)",
        f"validation on {min(sizes.get('validation', 0), train_cfg.val_limit or sizes.get('validation', 0))} "
        "examples before training and after every epoch (last-layer: on its cached features)",
        f"ROUGE generation: {eval_cfg.decoding.max_new_tokens} new tokens for every test article (no early "
        f"eos), {eval_cfg.decoding.num_beams} beam(s), batch {eval_cfg.batch_size}"
        + (f"; on the CPU, the prefill timed on {CPU_PROBE_EXAMPLES} articles and scaled by prompt tokens, a "
           "decode step from three probes (few or all rows, whole or short prompts), and validation on "
           f"{CPU_PROBE_EXAMPLES} examples" if cpu else ""),
        "a step = its forward/backward passes x the median time of one pass of the training loop ("
        + (f"{steps} timed" if steps else "up to 3 timed, fewer where one pass takes over 10 s")
        + " after one warm-up; --steps N for more); state: the weights (quantized ones as stored), gradients "
        "and optimizer state, exactly; activ.: what one pass of the run's size keeps for its backward "
        "(measured on one more untimed pass, every storage once, on any device); peak memory is the process's (CPU: "
        "RSS)",
        f"MFU against the {peak_source} peak of {peak_flops / 1e12:.3g} TFLOP/s",
    ]


def _generation_seconds(model, method, tokenizer, prompts, decoding, batch_size: int, accelerator,
                        n_new: int, few: bool = False) -> tuple[float, float]:
    """Seconds of a batch's prefill and of one decode step, generating ``n_new`` tokens for each prompt on the
    evaluation's path with its decoding (beams included), eos forbidden so that every step runs.

    ``few`` (the CPU, where both grow linearly with the work): the prefill is timed on the first
    CPU_PROBE_EXAMPLES prompts and scaled by the batch's prompt tokens.  A decode step costs a fixed part, a part
    per row and a part per row and context position (each row reads its own cache, which dominates on a CPU);
    three cheap probes separate them: the few prompts whole (A), the same few cut to CPU_PROBE_PROMPT tokens (C)
    and every prompt cut so (B).  The whole batch's step is then B + (its rows / A's rows) x (A - C)."""
    if few and len(prompts) > CPU_PROBE_EXAMPLES:
        some = prompts[:CPU_PROBE_EXAMPLES]
        def probe(ps):
            return _probe_generation(model, method, tokenizer, ps, decoding, batch_size, accelerator, n_new)

        prefill, step_a = probe(some)
        _, step_c = probe([p[-CPU_PROBE_PROMPT:] for p in some])
        _, step_b = probe([p[-CPU_PROBE_PROMPT:] for p in prompts])
        per_token = step_b + len(prompts) / len(some) * max(step_a - step_c, 0.0)
        return prefill * sum(map(len, prompts)) / sum(map(len, some)), per_token
    return _probe_generation(model, method, tokenizer, prompts, decoding, batch_size, accelerator, n_new)


def _probe_generation(model, method, tokenizer, prompts, decoding, batch_size: int, accelerator,
                      n_new: int) -> tuple[float, float]:
    """peftsum's loop: the prefill and the decode steps timed inside one call; prefix tuning's own loop: two
    calls."""
    dev = accelerator.device
    forced = dataclasses.replace(decoding, max_new_tokens=n_new, min_new_tokens=n_new)
    if not isinstance(method, OwnTrunk):
        timings: dict = {}
        seeds = [0] * len(prompts) if decoding.do_sample else None
        with accelerator.autocast():
            decode_ids(model, method, [torch.tensor(p, device=dev) for p in prompts], forced, tokenizer.eos_token_id,
                       tokenizer.pad_token_id, seeds, timings=timings)
        return timings["prefill"], timings["decode"] / max(timings["decode_steps"], 1)

    def seconds(n: int) -> float:
        c = dataclasses.replace(forced, max_new_tokens=n, min_new_tokens=n)
        return _timed(dev, generate_summaries, model, method, tokenizer, prompts, c, batch_size, dev,
                      accelerator.autocast)

    prefill = seconds(1)
    return prefill, max(seconds(n_new) - prefill, 0.0) / max(n_new - 1, 1)


def _hms(s: float) -> str:
    h, rem = divmod(int(s), 3600)
    m, sec = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def training_memory(row: dict) -> int:
    """What training needs on the device, as ``plan`` estimates it: the training state (exact) plus the activations
    one pass keeps for its backward (measured on a pass of the run's size)."""
    return row["state_bytes"] + row["activation_bytes"]


def render(r: dict, device_memory: int | None = None) -> str:
    fits = f"fits {device_memory / 2**30:.0f}G" if device_memory else ""
    lines = [f"plan on {r['device']} for {r['model']}", "",
             f"{'method':<17}{'train n':>8}{'s/step':>9}{'steps':>8}{'train':>10}{'val':>9}{'final eval':>12}{'total':>10}"
             f"{'state':>9}{'activ.':>9}{'peak mem':>11}{'train FLOPs':>13}{'tokens/s':>10}{'MFU':>7}"
             + (f"{fits:>10}" if fits else "")]
    total = 0.0
    for x in r["rows"]:
        if x.get("memory_only"):  # a sharded variant: its memory per process, no time of its own
            line = (f"{x['method']:<17}{x['train_size']:>8}{'–':>9}{'–':>8}{'–':>10}{'–':>9}{'–':>12}{'–':>10}"
                    f"{x['state_bytes'] / 2**30:>8.2f}G{x['activation_bytes'] / 2**30:>8.2f}G{'–':>11}{'–':>13}"
                    f"{'–':>10}{'–':>7}")
        else:
            total += x["total_seconds"]
            line = (f"{x['method']:<17}{x['train_size']:>8}{x['step_seconds']:>9.3f}{x['steps']:>8}"
                    f"{_hms(x['train_seconds']):>10}{_hms(x['validation_seconds']):>9}{_hms(x['final_eval_seconds']):>12}"
                    f"{_hms(x['total_seconds']):>10}{x['state_bytes'] / 2**30:>8.2f}G{x['activation_bytes'] / 2**30:>8.2f}G"
                    f"{x['peak_memory_bytes'] / 2**30:>10.2f}G"
                    f"{x['train_flops']:>13.3g}{x['tokens_per_second']:>10.0f}"
                    + (f"{x['mfu'] * 100:>6.1f}%" if x.get("mfu") is not None else f"{'–':>7}"))
        if device_memory:
            line += f"{'yes' if training_memory(x) <= device_memory else 'no':>10}"
        lines.append(line)
    lines += ["", f"whole protocol: {_hms(total)} ({total / 3600:.2f} device-hours); measured in {r['seconds']:.0f}s",
              "", "assumptions:"]
    lines += [f"  - {a}" for a in r["assumptions"]]
    if device_memory:
        lines.append(f"  - fits {device_memory / 2**30:.0f}G: the training state plus one pass's activations "
                     "within the device's memory; the allocator's slack, the generation cache and the batch itself "
                     "are not counted, so leave some room")
    return "\n".join(lines)
