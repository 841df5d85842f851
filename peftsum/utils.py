"""Small shared helpers: atomic writes (a full disk is one clear error, nothing half-written), safetensors files,
JSON lines, RNG states, cache directory, the main process, peak memory, out-of-memory errors."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import errno
import gc
import json
import os
import random
import resource
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import DiskFull, OutOfMemory, UserError

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


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


LOW_SPACE = 64 * 2**20  # free bytes under which a write that failed for no stated reason is taken for a full disk


def is_disk_full(e: BaseException, path: Path | None = None) -> bool:
    """A write that found no space or the quota used up, however the writing library words it: an OSError's errno
    (or, from Arrow, its text without one), safetensors' "os error 28 / 122".  torch.save's stream writer says only
    that a write failed ("unexpected pos", "file write failed": EIO and a file-size limit read the same), so that
    counts only for a write to ``path`` whose filesystem has under LOW_SPACE free."""
    text = str(e)
    if isinstance(e, OSError):
        return e.errno in DISK_FULL_ERRNOS or (e.errno is None and any(os.strerror(n) in text for n in DISK_FULL_ERRNOS))
    if any(f"os error {n})" in text for n in DISK_FULL_ERRNOS):
        return True
    if path is not None and isinstance(e, RuntimeError) and ("unexpected pos" in text or "file write failed" in text):
        return _free_bytes(path) < LOW_SPACE
    return False


def _free_bytes(path: Path) -> int:
    where = next((p for p in [Path(path), *Path(path).parents] if p.exists()), Path("/"))
    return shutil.disk_usage(where).free


def _size(path: Path) -> int:
    """Bytes under ``path`` (a file or a folder); 0 where it is gone or not a regular file."""
    if path.is_dir():
        return sum(_size(p) for p in path.iterdir())
    with contextlib.suppress(OSError):
        if path.is_file() and not path.is_symlink():
            return path.stat().st_size
    return 0


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def disk_full(path: Path, needs: int | None = None, written: int = 0, cleaned: bool = True) -> DiskFull:
    """The one-line error of a write that did not fit: the path, what it needed (or had written), what is free, and
    (``cleaned``: an atomic write's temporary file is gone) that nothing of it was left."""
    need = f"it needs {_megabytes(needs)}" if needs else f"it failed after {_megabytes(written)}"
    left = "nothing of it was left behind. " if cleaned else ""
    return DiskFull(f"no space left on the device (or the quota is used up) writing {path}: {need}, "
                    f"{_megabytes(_free_bytes(path))} free there; {left}Free some space and run the same command again "
                    "(a run continues from its last checkpoint: compare by itself, train with --resume)")


def _temporary_file(path: Path) -> Path:
    """A new, empty file beside ``path`` for :func:`atomic_path` (tests put a full disk behind it)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode a plain open() would
    return Path(tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needs: int | None = None):
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.  A full disk
    (:func:`is_disk_full`) is a :class:`~peftsum.errors.DiskFull` naming ``path`` and what it ``needs`` (bytes,
    where the caller knows them); the temporary file is gone and ``path`` untouched either way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_file(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        written = _size(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, Exception) and not isinstance(e, DiskFull) and is_disk_full(e, path):
            raise disk_full(path, needs, written) from None
        raise


@contextlib.contextmanager
def writes_to(path: str | os.PathLike, needs: int | None = None):
    """Around a write peftsum does not make itself (a library's ``save_pretrained``, a copy): a full disk is one
    :class:`~peftsum.errors.DiskFull` naming ``path``."""
    try:
        yield
    except Exception as e:
        if isinstance(e, DiskFull) or not is_disk_full(e, Path(path)):
            raise
        raise disk_full(Path(path), needs, cleaned=False) from None


@contextlib.contextmanager
def atomic_dir(folder: str | os.PathLike, marker: str):
    """Yield a fresh temporary folder beside ``folder``; when the block succeeds, move it into place in one
    rename.  Several processes may build the same folder at once (each in its own temporary folder): the
    first complete one to arrive stays, the others are dropped.  ``marker`` is a file every complete
    folder holds.  A full disk is a :class:`~peftsum.errors.DiskFull`; the temporary folder is removed."""
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
    except BaseException as e:
        written = _size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and not isinstance(e, DiskFull) and is_disk_full(e, folder):
            raise disk_full(folder, None, written) from None
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    data = text.encode("utf-8")
    with atomic_path(path, needs=len(data)) as tmp:
        tmp.write_bytes(data)


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


def tensor_bytes(obj) -> int:
    """Bytes of the tensors in a (nested) dict / list: what saving them needs, near enough."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_file_atomic(tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None) -> None:
    with atomic_path(path, needs=tensor_bytes(tensors)) as tmp:
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


def is_out_of_memory(e: BaseException) -> bool:
    """The device ran out of memory: ``torch.OutOfMemoryError`` (CUDA), or a backend's RuntimeError saying so
    (MPS, a CUDA error raised outside the allocator)."""
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def free_device_memory() -> None:
    """After an out-of-memory error: collect what the failed attempt left and give the device's cache back."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


_SAID: set = set()


def in_halves(fn, items: list, what: str, advice: str) -> list:
    """``fn(items)``, a list of results (one per item, or any list the caller adds up); out of device memory, the
    same for each half of ``items``, and so on down to one item, which failing ends the run with one line
    (:class:`~peftsum.errors.OutOfMemory`: ``what`` did not fit, ``advice``).  For the evaluation's batches: a
    batch's summaries and summed losses do not depend on how it is split.  The first split of each size is said
    once."""
    try:
        return fn(items)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
    free_device_memory()
    if len(items) <= 1:
        raise OutOfMemory(f"out of device memory for {what} even one at a time; {advice}")
    half = (len(items) + 1) // 2
    if (what, len(items)) not in _SAID and is_main_process():
        _SAID.add((what, len(items)))
        print(f"peftsum: out of device memory for {what}, {len(items)} at once; going on with {half} (the same "
              "results)", file=sys.stderr, flush=True)
    return in_halves(fn, items[:half], what, advice) + in_halves(fn, items[half:], what, advice)


def max_over_processes(value: int, device) -> int:
    """The largest of every process's ``value`` (one all-reduce); ``value`` itself without a process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    flag = torch.tensor(value, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return int(flag.item())
