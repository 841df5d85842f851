"""A full disk at every write peftsum makes (utils.atomic_path / atomic_dir / writes_to, train/metrics_file.py):
one line naming the path and what it needed, exit status 5, nothing half-written and no temporary file left.

The disk fills for real where it can: the temporary file of the write is a link to ``/dev/full``, which the kernel
answers with ENOSPC (torch.save, matplotlib, fpdf2 and plain writes meet it as on a full disk).  Where a library
replaces the file it writes (safetensors renames its own temporary file over ours) or writes a folder (datasets'
save_to_disk, save_pretrained), its call writes part of its output and raises the error that library raises on a
full disk."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
from safetensors import SafetensorError

import peftsum.utils as utils
from peftsum.cli import main
from tests.conftest import train_args


def full_disk_for(monkeypatch, *names: str) -> list[Path]:
    """Writes of files named ``names`` go to /dev/full; returns the paths that were tried."""
    real, tried = utils._temporary_file, []

    def temporary(path: Path) -> Path:
        tmp = real(path)
        if path.name in names:
            tried.append(path)
            tmp.unlink()
            tmp.symlink_to("/dev/full")
        return tmp

    monkeypatch.setattr(utils, "_temporary_file", temporary)
    monkeypatch.setattr(utils, "_free_bytes", lambda path: 4096)  # what the filesystem of a full disk says is free
    return tried


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")]


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("peftsum: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    return lines[0]


@pytest.mark.parametrize("name, needs", [("checkpoint.pt", "it needs"), ("predictions.jsonl", "it needs"),
                                         ("results.json", "it needs"), ("config.yaml", "it needs")])
def test_a_full_disk_in_a_run_is_one_line_and_nothing_half_written(tiny_model_dir, demo_dir, tmp_path, monkeypatch,
                                                                   capsys, name, needs):
    out = tmp_path / "r"
    tried = full_disk_for(monkeypatch, name)
    args = train_args(tiny_model_dir, demo_dir, "lora", out, **{"train.max_steps": 2, "train.checkpoint_every_steps": 1})
    assert main(args) == 5
    line = one_line(capsys)
    assert tried and f"no space left on the device (or the quota is used up) writing {out / name}: {needs}" in line
    assert "free there; nothing of it was left behind" in line and "--resume" in line
    assert not (out / name).exists() and not leftovers(out)
    if name != "checkpoint.pt":  # the run can finish once there is space: from its checkpoint, or from the start
        monkeypatch.undo()
        assert main([*args, "--resume"] if (out / "checkpoint.pt").is_file() else args) == 0
        assert (out / name).is_file() and (out / "results.json").is_file()


def test_the_best_weights_and_the_metrics_lines(tiny_model_dir, demo_dir, tmp_path, monkeypatch, capsys):
    """safetensors' own error for the best weights; an append to metrics.jsonl that stops half-way through a line
    leaves the file at its last whole line."""
    out = tmp_path / "r"
    args = train_args(tiny_model_dir, demo_dir, "lora", out, **{"train.max_steps": 2})

    def full(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 100)  # what it wrote before the disk filled
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(utils, "save_file", full)
    assert main(args) == 5
    line = one_line(capsys)
    assert f"writing {out / 'best.safetensors'}: it needs " in line and not (out / "best.safetensors").exists()
    assert not leftovers(out)
    monkeypatch.undo()

    import peftsum.train.metrics_file as metrics_file

    class HalfWritten:
        """The kernel's way: a write that fits part of the line returns its length; the next one fails."""

        def __init__(self, path, mode, buffering=-1):
            self.f = open(path, mode, buffering=buffering)  # noqa: SIM115
            self.full = False

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def tell(self):
            return self.f.tell()

        def truncate(self, n):
            return self.f.truncate(n)

        def write(self, data):
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            if b'"type": "train"' in bytes(data) and b'"step": 2' in bytes(data):
                self.full = True
                return self.f.write(data[: len(data) // 2])
            return self.f.write(data)

    monkeypatch.setattr(metrics_file, "open", HalfWritten, raising=False)
    shutil.rmtree(out)
    assert main(args) == 5
    line = one_line(capsys)
    assert f"writing {out / 'metrics.jsonl'}: it needs " in line
    text = (out / "metrics.jsonl").read_text()
    assert text.endswith("}\n") and '"step": 2' not in text and text.count('"type": "train"') == 1


@pytest.mark.parametrize("name", ["report.md", "results.csv", "rouge.png", "report.pdf", "coverage_density.png"])
def test_a_full_disk_in_the_report(compared, tmp_path, monkeypatch, capsys, name):
    out = shutil.copytree(compared, tmp_path / "c")
    before = (out / name).read_bytes()
    full_disk_for(monkeypatch, name)
    assert main(["report", str(out)]) == 5
    assert f"writing {out / name}: " in one_line(capsys)
    assert (out / name).read_bytes() == before and not leftovers(out)  # the old file, whole


def test_a_full_disk_in_an_export_and_in_the_data_cache(compared, tiny_model_dir, demo_dir, tmp_path, monkeypatch,
                                                        capsys):
    from transformers import PreTrainedTokenizerBase

    real = PreTrainedTokenizerBase.save_pretrained

    def full(self, folder, *a, **k):
        real(self, folder, *a, **k)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", full)
    assert main(["export", str(compared / "lora"), str(tmp_path / "x")]) == 5
    assert f"writing {tmp_path / 'x'}: it failed after " in one_line(capsys)
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))
    monkeypatch.undo()

    import datasets

    def full_cache(self, folder, *a, **k):
        Path(folder).mkdir(parents=True)
        (Path(folder) / "data-00000-of-00001.arrow").write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", full_cache)
    monkeypatch.setenv("PEFTSUM_CACHE", str(tmp_path / "cache"))  # this test's own: other workers write theirs
    out = tmp_path / "r"
    assert main(train_args(tiny_model_dir, demo_dir, "lora", out, **{"train.max_steps": 1})) == 5
    line = one_line(capsys)
    cache = tmp_path / "cache" / "data"
    assert f"writing {cache}" in line and "it failed after 1.0 kB" in line
    assert list(cache.iterdir()) == []  # neither the entry nor its temporary folder
    assert not out.exists() or not (out / "results.json").exists()


def test_the_metrics_file_on_a_full_device_is_one_error(tmp_path):
    """Unbuffered appends: the kernel's ENOSPC reaches the write (a buffered file would raise it again at close,
    over the one-line error)."""
    from peftsum.errors import DiskFull
    from peftsum.train.metrics_file import MetricsFile

    path = tmp_path / "metrics.jsonl"
    path.symlink_to("/dev/full")
    with pytest.raises(DiskFull, match=f"writing {path}: it needs "):
        MetricsFile(path).write({"type": "train", "step": 1})


def test_only_a_full_disk_is_called_one(tmp_path):
    """torch.save's writer says only that a write failed: with space to spare it is not called a full disk (an I/O
    error, a file-size limit); an errno other than ENOSPC / EDQUOT neither."""
    import torch

    link = tmp_path / "x.pt"
    link.symlink_to("/dev/full")
    with pytest.raises(RuntimeError) as failed:
        torch.save({"a": torch.zeros(1000)}, link)
    assert utils.is_disk_full(failed.value) is False  # no path: no guess
    assert utils.is_disk_full(failed.value, tmp_path) is (utils._free_bytes(tmp_path) < utils.LOW_SPACE)
    assert utils.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert utils.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not utils.is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert utils.is_disk_full(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not utils.is_disk_full(RuntimeError("NCCL error: No space left on device (28)"))
