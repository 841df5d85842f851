"""Safe loading (utils.py): a truncated safetensors file is one clear error."""



from peftsum.cli import main
from peftsum.experiment import run_experiment


def test_truncated_safetensors_is_a_clear_error(tiny_cfg, tmp_path, capsys):
    run = tmp_path / "r"
    run_experiment(tiny_cfg("lora", **{"train.max_steps": 1}), run)
    f = run / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    (tmp_path / "a.txt").write_text("An article about a flood in a town.")
    assert main(["summarize", str(run), str(tmp_path / "a.txt")]) == 2
    assert "truncated or corrupted" in capsys.readouterr().err
