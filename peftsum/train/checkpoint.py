"""Checkpoints: trainable weights, optimizer, scheduler, RNG states and the data position.

Written atomically (temporary file + rename), loaded with ``torch.load(weights_only=True)``: no
unrestricted pickle.  A truncated or corrupted checkpoint is a UserError, not a traceback.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import UserError
from ..utils import atomic_path, tensor_bytes

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(run_dir: Path, state: dict) -> None:
    with atomic_path(Path(run_dir) / CHECKPOINT, needs=tensor_bytes(state)) as tmp:
        torch.save(state, tmp)


def load_checkpoint(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refused, truncated zip, bad magic: all mean "unusable"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise UserError(f"checkpoint {path} holds arbitrary pickled objects; refusing to load it "
                            "(only tensors and plain values are accepted)") from None
        raise UserError(f"checkpoint {path} is truncated or corrupted ({msg}); delete it to start over") from None
