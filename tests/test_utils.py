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


def test_the_process_group_is_made_with_the_configured_timeout(monkeypatch, tiny_cfg, tmp_path):
    """The first PartialState of the process makes the process group: it gets train.process_group_timeout_minutes
    (torch's NCCL default, 10 minutes, is shorter than rank 0 preparing CNN/DailyMail while the others wait), from
    compare and from a single run alike; later calls without a value keep it."""
    from datetime import timedelta

    import peftsum.utils as utils
    from peftsum.experiment import compare_methods
    from peftsum.experiment.run import accelerator_for

    made = []

    class Recorder:
        def __init__(self, cpu=False, **kwargs):
            made.append(kwargs)

    monkeypatch.setitem(utils._PROCESS_GROUP, "timeout_minutes", None)
    real = utils.PartialState
    monkeypatch.setattr(utils, "PartialState", Recorder)
    utils.distributed_state(90)
    utils.distributed_state()
    assert made == [{"timeout": timedelta(minutes=90)}] * 2
    monkeypatch.setattr(utils, "PartialState", real)
    accelerator_for(tiny_cfg("lora", **{"train.process_group_timeout_minutes": 45}))
    assert utils._PROCESS_GROUP["timeout_minutes"] == 45
    compare_methods(tiny_cfg("lead-3", **{"train.process_group_timeout_minutes": 33}), ["lead-3"], tmp_path / "c")
    assert utils._PROCESS_GROUP["timeout_minutes"] == 33
