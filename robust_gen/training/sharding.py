"""Fully sharded data parallel training (PyTorch FSDP2, ``torch.distributed.fsdp.fully_shard``).

With ``trainer.fsdp=true`` every process holds only its shard of the weights, gradients and optimizer state
(1/N each), and gathers a block's full weights just for its forward and backward. Data parallelism is unchanged:
each process sees ``batch_size / N`` samples and the gradients are averaged, so N sharded processes train the same
model as N data-parallel ones (``tests/test_sharding.py`` checks this on CPU with gloo).

Sharding is applied here rather than through accelerate's FSDP plugin because accelerate only enables FSDP on
GPU back ends; ``fully_shard`` itself runs on CPU (gloo) too, so the same code path is tested in CI and used on
GPUs. Checkpoints stay in the single-file format of :mod:`robust_gen.training.checkpoint`: the full (gathered)
weights are written by the main process, so a sharded run's checkpoint loads into an unsharded model and back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.tensor import DTensor

__all__ = [
    "full_model_state",
    "full_optimizer_state",
    "is_sharded",
    "load_full_model_state",
    "load_full_optimizer_state",
    "shard_module",
]

# Gathered to full tensors, moved to the CPU: what the single-file checkpoint stores.
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def is_sharded(module: nn.Module) -> bool:
    """Whether any parameter of ``module`` is a sharded ``DTensor`` (i.e. ``fully_shard`` was applied).

    Examples
    --------
    >>> is_sharded(torch.nn.Linear(2, 2))
    False
    """
    return any(isinstance(p, DTensor) for p in module.parameters())


def shard_module(module: nn.Module, wrap: Sequence[str] = (), *, reshard_after_forward: bool = True) -> nn.Module:
    """Shard ``module`` in place over all processes of the default process group.

    Every submodule whose class name is in ``wrap`` becomes its own FSDP unit (its weights are gathered just
    before it runs and freed after, which is what bounds memory: pick the repeated blocks, e.g.
    ``BasicTransformerBlock`` and ``ResnetBlock2D`` for diffusers models); the root takes whatever is left.

    Raises ``RuntimeError`` without an initialised process group (launch with ``accelerate launch`` or
    ``torchrun``) and ``ValueError`` when no name in ``wrap`` matches a submodule (a typo would otherwise
    silently shard everything as one unit).

    Examples
    --------
    >>> shard_module(torch.nn.Linear(2, 2), ["Linear"])  # one process, no process group
    Traceback (most recent call last):
    ...
    RuntimeError: trainer.fsdp=true needs a distributed launch (accelerate launch / torchrun); ...
    """
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        raise RuntimeError(
            "trainer.fsdp=true needs a distributed launch (accelerate launch / torchrun); with one process there "
            "is nothing to shard: set trainer.fsdp=false"
        )
    from torch.distributed.fsdp import fully_shard

    wrap = list(wrap)
    units = [m for m in module.modules() if m is not module and type(m).__name__ in wrap]
    if wrap and not units:
        # one list serves several architectures (a UNet has ResnetBlock2D, a DiT not), so only a list that
        # matches nothing at all is refused: that is a typo, and would silently make the whole model one unit
        present = sorted({type(m).__name__ for m in module.modules()})
        raise ValueError(f"trainer.fsdp_wrap={wrap} names no submodule of the model; classes present: {present}")
    # Innermost first: fully_shard on a parent skips parameters already owned by a sharded child.
    for unit in reversed(units):
        fully_shard(unit, reshard_after_forward=reshard_after_forward)
    fully_shard(module, reshard_after_forward=reshard_after_forward)
    return module


def full_model_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict on the CPU; a collective call for sharded modules (every process must call
    it), a plain ``state_dict()`` copy otherwise.

    Examples
    --------
    >>> sorted(full_model_state(torch.nn.Linear(2, 2)))
    ['bias', 'weight']
    """
    if not is_sharded(module):
        return module.state_dict()
    return get_model_state_dict(module, options=_FULL)


def load_full_model_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict (as written by :func:`full_model_state`) into ``module``, sharded or not; every
    process passes the same full state and keeps its own shard.

    Examples
    --------
    >>> a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    >>> load_full_model_state(b, full_model_state(a))
    >>> bool(torch.equal(a.weight, b.weight))
    True
    """
    if not is_sharded(module):
        module.load_state_dict(state)
        return
    # set_model_state_dict replaces the dict's values with the distributed tensors: hand it a copy of the mapping
    set_model_state_dict(module, dict(state), options=StateDictOptions(full_state_dict=True, strict=True))


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state for a checkpoint: ``optimizer.state_dict()`` for an unsharded model; for a sharded
    one the gathered full state keyed by parameter name (a collective call).

    Examples
    --------
    >>> net = torch.nn.Linear(2, 2)
    >>> sorted(full_optimizer_state(net, torch.optim.AdamW(net.parameters())))
    ['param_groups', 'state']
    """
    if not is_sharded(module):
        return optimizer.state_dict()
    return get_optimizer_state_dict(module, optimizer, options=_FULL)


def load_full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Inverse of :func:`full_optimizer_state` (each process keeps its shard of the moments).

    Examples
    --------
    >>> net = torch.nn.Linear(2, 2)
    >>> optimizer = torch.optim.AdamW(net.parameters(), lr=0.5)
    >>> load_full_optimizer_state(net, optimizer, full_optimizer_state(net, torch.optim.AdamW(net.parameters())))
    >>> optimizer.param_groups[0]["lr"]  # the saved state's settings
    0.001
    """
    if not is_sharded(module):
        optimizer.load_state_dict(state)
        return
    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
