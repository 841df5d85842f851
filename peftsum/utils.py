"""Small shared helpers: atomic writes, safetensors files, JSON lines, RNG states, cache directory, the main
process, peak memory."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import gc
import json
import os
import random
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


def cache_dir() -> Path:
    """Where peftsum keeps tokenized data and the demo base model (``PEFTSUM_CACHE`` overrides)."""
    root = os.environ.get("PEFTSUM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "peftsum"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(folder: str | os.PathLike, marker: str):
    """Yield a fresh temporary folder beside ``folder``; when the block succeeds, move it into place in one
    rename.  Several processes may build the same folder at once (each in its own temporary folder): the
    first complete one to arrive stays, the others are dropped.  ``marker`` is a file every complete
    folder holds."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
        try:
            os.rename(tmp, folder)
        except OSError:  # the folder exists: another process finished first, or an incomplete leftover
            if (folder / marker).exists():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str | os.PathLike, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, default=_json_default) + "\n" for r in rows))


def safe_load_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupted file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"weights file {path} is truncated or corrupted ({str(e).splitlines()[0]})") from None


def save_file_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


_PROCESS_GROUP = {"timeout_minutes": None}


def distributed_state(timeout_minutes: float | None = None, device: torch.device | None = None) -> PartialState:
    """The one notion of the processes of this job (Accelerate's): rank, world size, main process, device.

    ``cpu=True`` without CUDA: several CPU processes (torchrun) then talk over gloo; the Accelerator that
    training builds shares this state.  The process group is made by the first call in the process, with the
    timeout given to this or an earlier call (``train.process_group_timeout_minutes``); later calls share it.

    ``device`` (``plan --device cpu`` or ``cuda:1``, one process): the state runs there; one that an earlier call made
    on another device is made again (Accelerate keeps the first state's device for the whole process)."""
    if timeout_minutes is not None:
        _PROCESS_GROUP["timeout_minutes"] = timeout_minutes
    minutes = _PROCESS_GROUP["timeout_minutes"]
    kwargs = {"timeout": datetime.timedelta(minutes=minutes)} if minutes else {}
    if device is None:
        return PartialState(cpu=not torch.cuda.is_available(), **kwargs)
    device = torch.device(device)
    made = PartialState._shared_state.get("device")
    if made is not None and not _same_device(made, device):
        if PartialState().num_processes > 1:
            raise UserError(f"--device {device} runs one process; this job has {PartialState().num_processes}")
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    saved = os.environ.get("ACCELERATE_TORCH_DEVICE")
    os.environ["ACCELERATE_TORCH_DEVICE"] = str(device)  # what Accelerate's state reads for its device
    try:
        return PartialState(cpu=device.type == "cpu", **kwargs)
    finally:
        if saved is None:
            os.environ.pop("ACCELERATE_TORCH_DEVICE")
        else:
            os.environ["ACCELERATE_TORCH_DEVICE"] = saved


def _same_device(made: torch.device, wanted: torch.device) -> bool:
    """``wanted`` without an index (``cuda``) takes whichever index the state chose."""
    return made.type == wanted.type and (wanted.index is None or made.index == wanted.index)


def is_main_process() -> bool:
    """Rank 0 of the job, or the only process: the one that writes files and prints."""
    return distributed_state().is_main_process


def rng_state() -> dict:
    """RNG states of python, numpy and torch as plain lists/tensors (loadable with weights_only)."""
    np_state = np.random.get_state()
    state = {
        "python": _to_lists(random.getstate()),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS counter (VmHWM) so the next measurement covers one run only."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_memory(collect: bool = True) -> None:
    """Give back what a finished run held: Python garbage, CUDA's cached blocks, and the C allocator's
    free pages (glibc keeps them otherwise), so the next run's peak memory starts from the same floor.
    ``collect=False`` where garbage was just collected (``Accelerator.free_memory`` does): a full collection
    walks every live object again, a quarter of a second with transformers and datasets loaded."""
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = ctypes.util.find_library("c")
    if libc:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(libc).malloc_trim(0)
