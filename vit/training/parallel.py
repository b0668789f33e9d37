"""How the model is spread over the processes, and its state gathered into one file.

    train.strategy=ddp   every process holds the whole model; gradients are all-reduced (DDP)
    train.strategy=fsdp  FSDP2: ``fully_shard`` on each transformer block and at the root, so
                         each of N processes holds 1/N of the weights, gradients and AdamW state
    train.activation_checkpointing=true
                         each block's activations are recomputed in the backward pass instead
                         of kept (``torch.distributed._composable.checkpoint``; any strategy)

Checkpoints stay single files that ``vit predict`` reads without a process group: the state is
gathered on save with ``torch.distributed.checkpoint.state_dict``'s full, CPU-offloaded state
dicts (rank 0 receives it) and scattered back on resume with ``set_model_state_dict`` /
``set_optimizer_state_dict``. The optimizer state is keyed by parameter name, so a last.pt of
either strategy (or of one process) resumes under the other.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vit.errors import CheckpointError, ConfigError

__all__ = ["STRATEGIES", "check_strategy", "prepare_model", "is_sharded", "local_numel",
           "full_model_state", "full_optimizer_state", "load_model_state",
           "load_optimizer_state"]

logger = logging.getLogger(__name__)

STRATEGIES = ("ddp", "fsdp")


def check_strategy(strategy: str, *, precision: str, ema: bool) -> None:
    """Settings FSDP cannot honour, refused before anything is built."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"train.strategy must be one of {', '.join(STRATEGIES)}, "
                          f"got {strategy!r}")
    if strategy != "fsdp":
        return
    if precision == "fp16":
        raise ConfigError("train.strategy=fsdp trains in fp32 or bf16, not fp16 (fp16 needs a "
                          "GradScaler that knows the shards); use --precision bf16")
    if ema:
        raise ConfigError("train.ema=true keeps a full copy of the weights on every process, "
                          "which train.strategy=fsdp exists to avoid; turn one of them off")


def mixed_precision_policy(precision: str):
    """FSDP2's policy for ``--precision``: bf16 weights in the forward/backward and bf16
    gradient reduction for bf16; None (everything fp32) otherwise."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16)
    return None


def prepare_model(model: nn.Module, *, strategy: str, precision: str,
                  activation_checkpointing: bool, world_size: int) -> None:
    """Activation checkpointing and FSDP2 sharding, in place (before an optimizer sees the
    parameters: ``fully_shard`` replaces them by sharded DTensors)."""
    blocks = list(getattr(model, "blocks", []))
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for block in blocks:
            checkpoint(block)
        logger.debug("activation checkpointing on %d blocks", len(blocks))
    if strategy != "fsdp":
        return
    if world_size < 2:
        logger.info("train.strategy=fsdp with one process: nothing to shard, training as usual")
        return
    from torch.distributed.fsdp import fully_shard

    policy = mixed_precision_policy(precision)
    options = {"mp_policy": policy} if policy is not None else {}
    for block in blocks:
        fully_shard(block, **options)
    fully_shard(model, **options)  # the rest: embeddings, final norm, head


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def local_numel(model: nn.Module) -> int:
    """Parameter elements this process holds (its shard under FSDP, everything otherwise)."""
    return sum(getattr(p, "to_local", lambda p=p: p)().numel() for p in model.parameters())


def most_held(model: nn.Module) -> int:
    """The largest ``local_numel`` over all processes (collective under a process group)."""
    held = torch.tensor(float(local_numel(model)), dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            held = held.cuda()
        dist.all_reduce(held, op=dist.ReduceOp.MAX)
    return int(held.item())


def _options(**extra: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **extra)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state_dict on the CPU, on rank 0 (an empty dict on other ranks under a
    process group). Collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state, keyed by parameter name: gathered onto rank 0's CPU from
    FSDP shards; the tensors themselves (no copy) for a model that is not sharded, as
    ``optimizer.state_dict()`` gives them. Collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=_options(cpu_offload=is_sharded(model)))


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Put a full state_dict (every process has read the file) back: each FSDP shard takes
    its part; a plain model loads it strictly."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, dict(state), options=_options())


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                         state: Mapping[str, Any]) -> None:
    """The optimizer state of last.pt: keyed by parameter name (this version, any strategy),
    or by position (older files, written by ``optimizer.state_dict()``)."""
    groups = state.get("param_groups") or [{}]
    by_position = any(isinstance(p, int) for p in groups[0].get("params", []))
    if by_position:
        if is_sharded(model):
            raise CheckpointError("this last.pt was written by an older vit (optimizer state "
                                  "by position); resume it with train.strategy=ddp")
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, dict(state), options=_options())
