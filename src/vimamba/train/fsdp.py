"""FSDP2 (``fully_shard``) for ``vimamba train --fsdp``: sharding a Vim, and its checkpoints in the plain layout.

A sharded run writes the files an unsharded one writes: full state dicts gathered on rank 0 through
``torch.distributed.checkpoint.state_dict`` (the weights under ``model``, the optimiser's state keyed by parameter
position as ``torch.optim.Optimizer.state_dict`` keys it), so either kind of run resumes or evaluates the other's
checkpoints.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

try:  # torch >= 2.6
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
except ImportError:  # torch 2.4 / 2.5 ship FSDP2 under its prototype path (and builds without distributed, none)
    try:
        from torch.distributed._composable.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    except ImportError:
        FSDPModule = MixedPrecisionPolicy = fully_shard = None

__all__ = ["is_fsdp", "shard_model", "full_model_state", "full_optimizer_state", "load_model_state",
           "load_optimizer_state"]


def is_fsdp(module: nn.Module) -> bool:
    return FSDPModule is not None and isinstance(module, FSDPModule)


def _require_fsdp() -> None:
    if fully_shard is None:
        raise ValueError(f"--fsdp needs FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.4 built with "
                         f"distributed support); this torch {torch.__version__} has none: train without --fsdp")


def shard_model(model: nn.Module, mesh, param_dtype: torch.dtype | None) -> None:
    """Shard each Vim block, then the root (embeddings, final norm, head), in place over ``mesh``.

    ``param_dtype`` (GPU runs with --amp bf16/fp16) is the dtype the gathered parameters compute in; the sharded
    fp32 parameters stay the optimiser's, and gradients are reduced in fp32, as DDP reduces them.
    """
    _require_fsdp()
    block_policy = root_policy = None
    if param_dtype is not None:
        # Blocks take (hidden, residual): FSDP's default cast of floating inputs to param_dtype would round the
        # fp32 residual stream (residual_in_fp32) to half precision at every block. The root's input is images.
        block_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32,
                                            cast_forward_inputs=False)
        root_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    # The first block hands its input on as the residual stream (there is nothing to add to it yet), and FSDP2's
    # pre-forward hook gives a block its inputs as views, so that block returns a view and FSDP2 warns that an
    # in-place op on it would skip the pre-backward hook. The stream is never changed in place (the next block's
    # add makes a new tensor), and the tests match sharded training with unsharded training exactly.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPVimBlock\) returned a view tensor",
                            category=UserWarning)
    for block in model.layers:
        fully_shard(block, mesh=mesh, **({"mp_policy": block_policy} if block_policy else {}))
    fully_shard(model, mesh=mesh, **({"mp_policy": root_policy} if root_policy else {}))


def _options(**kwargs):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on CPU on rank 0 ({} elsewhere). A collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimiser state on rank 0 ({} elsewhere), keyed by parameter position. A collective."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    if not optimizer.state:
        # No step taken yet (every step so far skipped as non-finite): nothing to gather, and DCP would first
        # initialise the state with a zero-lr step, which leaves Adam's step count at 1 instead of 0.
        return optimizer.state_dict()
    by_name = get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))
    if not by_name:
        return {}
    # DCP keys state and groups by parameter name; Optimizer.state_dict numbers parameters by position over
    # the groups in order, the layout an unsharded run writes and loads.
    position: dict[str, int] = {}
    groups = []
    for group in by_name["param_groups"]:
        ids = []
        for name in group["params"]:
            position[name] = len(position)
            ids.append(position[name])
        groups.append({**group, "params": ids})
    return {"state": {position[name]: value for name, value in by_name["state"].items()}, "param_groups": groups}


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (every process passes the same) into the sharded ``model``."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, dict(state), options=_options())  # a copy: DCP puts its shards into the dict


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a position-keyed optimiser state (an unsharded run's or ``full_optimizer_state``'s) into the shards."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    if not state.get("state"):  # no tensors to shard, only the groups' settings
        optimizer.load_state_dict(state)
        return
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    saved_count = sum(len(group["params"]) for group in state["param_groups"])
    if saved_count != len(order):
        raise ValueError(f"the checkpoint's optimiser state has {saved_count} parameters, this model {len(order)}")
    by_name = {
        "state": {order[i]: dict(value) for i, value in state["state"].items()},  # copies: DCP fills in shards
        "param_groups": [{**group, "params": [order[i] for i in group["params"]]} for group in state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=_options())
    # DCP's load hands the groups' settings back with tuples turned into lists (Adam's betas); restore them as
    # saved, so that the next checkpoint is written exactly as an unsharded run would write it.
    for group, saved in zip(optimizer.param_groups, state["param_groups"]):
        group.update({key: value for key, value in saved.items() if key != "params"})
