"""BERTScore through the registry (evaluate/bertscore.py), offline: a small BERT built in code and saved with
save_pretrained, the run's values against calling ``bert_score.score`` directly."""

from __future__ import annotations

import pytest
import torch

from peftsum.config import load_config
from peftsum.experiment import run_experiment
from peftsum.utils import read_jsonl
from tests.conftest import tiny_overrides

bert_score = pytest.importorskip("bert_score")  # the [bertscore] extra; CI installs it with the test extras


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("bert")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters),
             *"0123456789", ".", ",", "-", "'"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(str(folder / "vocab.txt"), model_max_length=512).save_pretrained(folder)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(folder)
    return folder


def test_bertscore_is_a_registered_metric_equal_to_the_package(tiny_bert, tiny_model_dir, demo_dir, tmp_path):
    cfg = load_config("demo", None, tiny_overrides(tiny_model_dir, demo_dir, **{
        "method.name": "lead-3", "eval.metrics": "rougeLsum,bertscore", "eval.bertscore.model": str(tiny_bert),
        "eval.bertscore.num_layers": 2, "eval.bertscore.batch_size": 4, "eval.bertscore.device": "cpu"}))
    result = run_experiment(cfg, tmp_path / "lead-3")
    rows = read_jsonl(tmp_path / "lead-3" / "predictions.jsonl")
    _, _, f1 = bert_score.score([p["prediction"] for p in rows], [p["reference"] for p in rows],
                                model_type=str(tiny_bert), num_layers=2, batch_size=4, device="cpu")
    assert [p["bertscore"] for p in rows] == pytest.approx([100 * float(x) for x in f1], rel=1e-5)
    assert result.eval.metrics["bertscore"] == pytest.approx(100 * float(f1.mean()), rel=1e-5)
    # only what eval.metrics named (and the headline): no statistic was asked for
    assert set(result.eval.metrics) == {"rougeLsum", "bertscore"}
