"""The results record (experiment/results.py): what run_experiment returns is what results.json holds, read back
field by field; the schema version is written, an older file without one is read, a newer or damaged one is one
clear error."""

import json
import shutil

import pytest

from peftsum.cli import main
from peftsum.errors import UserError
from peftsum.experiment import SCHEMA_VERSION, RunResult, read_results, run_experiment


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir, demo_dir):
    from peftsum.config import load_config
    from tests.conftest import tiny_overrides

    out = tmp_path_factory.mktemp("results") / "lora"
    cfg = load_config("demo", None, tiny_overrides(tiny_model_dir, demo_dir, **{"method.name": "lora",
                                                                                "train.max_steps": 2}))
    return out, run_experiment(cfg, out)


def test_the_file_holds_the_returned_record(lora_run):
    out, result = lora_run
    assert isinstance(result, RunResult)
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["schema_version"] == SCHEMA_VERSION == 3
    assert read_results(out) == result  # every section, the config included, survives the round trip
    assert result.training.steps == 2 and result.eval.examples == 16 and result.config.method.name == "lora"
    assert result.article_budget() == on_disk["data"]["budget"]["source"]
    # what ran: fp32 on the CPU (train.mixed_precision auto), no datasheet peak for a CPU, so no MFU
    assert on_disk["cost"]["mixed_precision"] == "no" and result.cost.peak_flops is None and result.cost.mfu is None


def test_a_file_without_a_version_is_read_as_version_1(lora_run, tmp_path):
    out, result = lora_run
    run = tmp_path / "old"
    shutil.copytree(out, run)
    data = json.loads((run / "results.json").read_text())
    del data["schema_version"]
    (run / "results.json").write_text(json.dumps(data))
    assert read_results(run) == result


def test_a_version_2_file_is_read_with_its_rouge_fields_as_metrics(lora_run, tmp_path):
    """Versions 1 and 2 held the four ROUGE scores as fields of ``eval`` and ``rouge_n`` for the article count."""
    out, result = lora_run
    run = tmp_path / "v2"
    shutil.copytree(out, run)
    data = json.loads((run / "results.json").read_text())
    ev = data["eval"]
    rouge = {k: ev["metrics"][k] for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    data["eval"] = {**{k: v for k, v in ev.items() if k not in ("metrics", "examples")}, **rouge, "rouge_n": 16}
    data["schema_version"] = 2
    (run / "results.json").write_text(json.dumps(data))
    old = read_results(run)
    assert old.eval.metrics == rouge and old.eval.examples == 16 and old.eval.value("rougeLsum") == rouge["rougeLsum"]
    assert old.eval.val_loss == result.eval.val_loss and old.schema_version == SCHEMA_VERSION


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema_version=99), "results schema 99; this peftsum reads 3"),
    (lambda d: d.pop("config"), "does not hold a peftsum results record"),
    (lambda d: d["eval"].update(bleu=1.0), "does not hold a peftsum results record"),
])
def test_a_newer_or_damaged_record_is_one_clear_error(lora_run, tmp_path, capsys, change, message):
    out, _ = lora_run
    run = tmp_path / "c" / "lora"
    shutil.copytree(out, run)
    data = json.loads((run / "results.json").read_text())
    change(data)
    (run / "results.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=message):
        read_results(run)
    assert main(["report", str(tmp_path / "c")]) == 2  # the report says it in one line, no traceback
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
