"""The frozen trunk's feature cache (train/features.py) gives the uncached loss."""

import contextlib

import pytest
import torch

from peftsum.experiment import load_components
from peftsum.methods import CachedTrunk


def test_cached_trunk_features_give_the_uncached_loss(tiny_cfg):
    from peftsum.train.features import FeatureCache

    cfg = tiny_cfg("last-layer")
    parts = load_components(cfg)
    model, tok, method, lm = parts.model, parts.tokenizer, parts.method, parts.summary_lm
    data, _ = parts.load_data()
    assert isinstance(method, CachedTrunk) and method.frozen_trunk
    from peftsum.data.collate import collate

    ds = data["train"].select(range(6))
    cache = FeatureCache(lm, ds, 4, torch.device("cpu"), tok.pad_token_id, torch.float32, contextlib.nullcontext)
    idx = [0, 3, 5]
    b = collate([ds[i] for i in idx], tok.pad_token_id)
    method.train_mode(model)
    direct, n1 = lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
    cached, n2 = lm(**cache.batch(idx, torch.device("cpu")))
    assert n1 == n2 and torch.allclose(direct, cached, rtol=1e-5)


def test_each_process_caches_only_its_shard(tiny_cfg):
    """Two processes' shards partition the split; a shard's features are the whole cache's rows for its examples (up to rounding);
    the validation loss over the shards' sums is the whole split's; a batch with none of a shard's examples is an
    empty batch of loss 0 whose backward still reaches the head (DDP's all-reduce needs every rank's)."""
    from peftsum.evaluate.metrics import evaluate_loss
    from peftsum.train.features import FeatureCache, shard

    parts = load_components(tiny_cfg("last-layer"))
    lm, tok = parts.summary_lm, parts.tokenizer
    ds = parts.load_data()[0]["train"].select(range(7))
    cpu, args = torch.device("cpu"), (4, torch.device("cpu"), tok.pad_token_id, torch.float32, contextlib.nullcontext)
    whole = FeatureCache(lm, ds, *args)
    shards = [FeatureCache(lm, ds, *args, shard(len(ds), r, 2)) for r in (0, 1)]
    assert [s.indices for s in shards] == [[0, 2, 4, 6], [1, 3, 5]]
    assert sum(s.nbytes() for s in shards) == whole.nbytes() and shards[1].nbytes() < 0.7 * whole.nbytes()
    for s in shards:
        mine = s.batch(s.indices, cpu)
        # the same rows up to rounding (a shard pads its batches differently)
        assert torch.allclose(mine["features"], whole.batch(s.indices, cpu)["features"], atol=1e-5)
        assert torch.equal(mine["targets"], whole.batch(s.indices, cpu)["targets"])
    parts_ = [evaluate_loss(lm, ds, 2, cpu, tok.pad_token_id, features=s) for s in shards]
    full = evaluate_loss(lm, ds, 2, cpu, tok.pad_token_id, features=whole)
    assert sum(p["tokens"] for p in parts_) == full["tokens"]
    pooled = sum(p["loss"] * p["tokens"] for p in parts_) / full["tokens"]
    assert pooled == pytest.approx(full["loss"], rel=1e-6)
    empty = shards[1].batch([], cpu)
    assert empty["features"].shape == (0, whole.features.shape[1])
    nll, n = lm(**empty)
    nll.backward()
    head = parts.model.get_output_embeddings().weight
    assert n == 0 and nll.item() == 0.0 and head.grad is not None and not head.grad.any()
    # the loop's inputs for rank 1 of 2: a batch of rank 0's examples alone is, on rank 1, a pass of the head on
    # nothing (its stand-in), not one on an example whose features rank 1 does not hold
    from peftsum.train.strategies import CachedFeatures

    inputs = CachedFeatures(lm, ds, ds, 4, cpu, tok.pad_token_id, "no", contextlib.nullcontext, 1, 2)
    assert inputs.share([0, 2], 1, 2) == [] and inputs.stand_in([0, 2]) == []
    assert inputs.batch(inputs.stand_in([0, 2]))["features"].shape[0] == 0
