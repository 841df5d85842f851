"""The frozen trunk's feature cache (train/features.py) gives the uncached loss."""

import contextlib

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
