import pytest

from peftsum.cli import _split_dotted
from peftsum.config import load_config, parse_override
from peftsum.errors import UserError


def test_presets_hold_the_protocols():
    a = load_config("assignment")
    assert (a.model.name, a.data.source, a.data.hub_config) == ("gpt2", "abisee/cnn_dailymail", "3.0.0")
    assert (a.data.train_size, a.data.val_size, a.data.test_size) == (21000, 6000, 3000)
    assert a.train.epochs == 10 and a.train.max_grad_norm == 1.0 and a.train.patience >= 1
    d = load_config("demo")
    assert d.model.name == "demo" and d.data.source == "demo"


def test_method_learning_rates_differ_and_train_lr_overrides():
    cfg = load_config("assignment", overrides=[("method.name", "prompt-tuning")])
    pt = cfg.learning_rate()
    cfg.method.name = "lora"
    assert pt > 10 * cfg.learning_rate()
    cfg = load_config("assignment", overrides=[("train.lr", 1e-3)])
    assert cfg.learning_rate() == 1e-3


def test_overrides_from_the_command_line(tmp_path):
    argv, ov = _split_dotted(["compare", "--train.lr", "3e-4", "--method.lora.targets=attn.c_attn,mlp.c_fc"])
    assert argv == ["compare"]
    cfg = load_config("demo", overrides=ov + [parse_override("train.epochs=3")])
    assert cfg.train.lr == 3e-4 and cfg.train.epochs == 3
    assert cfg.method.lora.targets == ["attn.c_attn", "mlp.c_fc"]
    f = tmp_path / "c.yaml"
    f.write_text("preset: demo\ntrain:\n  batch_size: 4\n")
    cfg = load_config(file=f)
    assert cfg.train.batch_size == 4 and cfg.model.name == "demo"


@pytest.mark.parametrize("override, message", [
    (("train.lrr", 1.0), "unknown config key 'train.lrr'; valid keys in 'train': epochs, max_steps"),
    (("train.lr", -1.0), "'train.lr' must be > 0"),
    (("train.epochs", 0), "'train.epochs' must be > 0"),
    (("train.epochs", "ten"), "'train.epochs': expected an integer"),
    (("method.name", "adapters"), "not one of: zero-shot, lead-3, prompt-tuning, lora, qlora, last-layer, full"),
    (("bogus.key", 1), "unknown config key 'bogus'; valid keys in '<root>': preset, model, data"),
    (("data.template", "{summary} {article}"), "{article} must come before {summary}"),
    (("model.dropout", 1.0), "'model.dropout' must be in [0, 1)"),
])
def test_bad_config_gives_one_clear_message(override, message):
    with pytest.raises(UserError) as e:
        load_config("demo", overrides=[override])
    assert message in str(e.value)


def test_a_key_that_became_the_behaviour_is_dropped_and_another_value_is_said_once(tmp_path, caplog):
    """method.lora.backend and method.last_layer.cache_features are gone: an older run's config.yaml loads as the same
    config whatever it held there (every run folder of a comparison holds every method's section); a value other than
    the behaviour's is said once, with what replaces it."""
    f = tmp_path / "config.yaml"
    for backend, cache in (("peftsum", "true"), ("peft", "false")):
        f.write_text(f"preset: demo\nmethod:\n  lora:\n    backend: {backend}\n  last_layer:\n"
                     f"    cache_features: {cache}\n")
        assert load_config(file=f).to_yaml() == load_config("demo").to_yaml()
    said = [r.getMessage() for r in caplog.records if "is gone" in r.getMessage()]
    assert len(said) == 2 and "PEFT's own LoRA layers run as method peft" in said[0]
    load_config("demo", overrides=[("method.lora.backend", "peft")])
    assert len([r for r in caplog.records if "is gone" in r.getMessage()]) == 2  # said once per value


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(file=f)
    with pytest.raises(UserError, match="config file not found"):
        load_config(file=tmp_path / "missing.yaml")
