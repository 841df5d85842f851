"""Fully sharded data parallel (FSDP2) for the models whose training state does not fit one device.

Accelerate's FSDP plugin (``fsdp_version=2``) applies torch's ``fully_shard`` when the loop prepares its model:
every decoder block (the model's ``_no_split_modules``) is one unit and the rest (embeddings, final norm, a
method's parameters outside the blocks) the root's.  Each process holds 1/N of every parameter, of its gradient
and of its optimizer state, as ``DTensor`` shards; a unit's forward and backward gather its weights and free
them again, and the gradients are reduce-scattered (averaged over the processes, as data parallel averages them).

What reads or writes whole weights does so collectively, on every process in the same order:

* the method's trained tensors (best weights, checkpoints): :func:`gather` (``DTensor.full_tensor``);
* restoring them: :func:`distribute_like` shards each full tensor as its parameter is sharded;
* the optimizer state in checkpoints: torch's ``get/set_optimizer_state_dict`` with full state dicts, keyed by
  parameter names, so a checkpoint is the same whatever the number of processes.

Accelerate enables the plugin on accelerators only; on CPU processes (gloo) :func:`enable_fsdp` sets the same
state, which is how the tests compare FSDP with data parallel on this machine's CPU.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator, FullyShardedDataParallelPlugin, PartialState
from accelerate.utils import DistributedType
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, distribute_tensor

from ..errors import UserError


def fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """FSDP2, each decoder block a unit, weights freed after each unit's forward (gathered again for its
    backward), whole-model state dicts where Accelerate saves one."""
    return FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                          reshard_after_forward=True, state_dict_type="FULL_STATE_DICT")


def enable_fsdp(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    """Several CPU processes: Accelerate leaves them data parallel whatever the plugin; shard them too."""
    state = accelerator.state
    if state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = plugin
        # as Accelerate does where it enables FSDP itself: every later AcceleratorState() copies the process state
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def is_fsdp(accelerator: Accelerator) -> bool:
    """The loop's model is sharded: ``train.fsdp`` under several processes, or ``accelerate launch`` with FSDP."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return False
    if not accelerator.is_fsdp2:
        raise UserError("peftsum shards with FSDP version 2: set fsdp_version: 2 in the Accelerate config")
    return True


def reshard(model: torch.nn.Module) -> None:
    """Every unit back to its shards: the root keeps its weights gathered after a forward without backward
    (validation), and what is measured or saved next must see the sharded state."""
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def gather(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors from sharded ones (a collective: every process calls it with the same names in the same
    order); unsharded tensors pass through."""
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}


def distribute_like(state: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors sharded as the parameters of the same names are (each process keeps its part)."""
    out = {}
    for k, v in state.items():
        p = params.get(k)
        if isinstance(p, DTensor):
            v = distribute_tensor(v.to(device=p.device, dtype=p.dtype), p.device_mesh, p.placements)
        out[k] = v
    return out


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The whole optimizer state, keyed by parameter names, on CPU (a collective; process 0 receives it)."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Restore a state of :func:`optimizer_state` (every process reads the same checkpoint)."""
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))
