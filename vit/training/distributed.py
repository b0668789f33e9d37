"""torchrun helpers: who am I, is this the main process, and a clean start and shutdown.

Under ``torchrun --nproc_per_node=N train.py ...`` every process runs the same script; torchrun sets
RANK, LOCAL_RANK and WORLD_SIZE. Without them everything here is a no-op for one process.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU)."""
    if not launched_by_torchrun():
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    world_size = int(os.environ["WORLD_SIZE"])
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    logger.debug("joined process group: rank %d of %d", rank, world_size)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group together.

    Every rank reaches a barrier before ``destroy_process_group``: without it a fast rank can tear
    down its gloo connections while a slow one still uses them, which aborts the slow one now and
    then (seen with recent torch releases). When another process died, the barrier fails;
    this one leaves alone, quietly: the failure that ended the run is what the user must see.
    """
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except Exception as e:  # a peer is gone (what ended the run was reported already)
            logger.debug("leaving the process group without the others: %s", e)
        finally:
            dist.destroy_process_group()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum plain numbers over all processes (identity for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_process(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set in any process (all-reduced only when there are several)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    return all_reduce_sum([float(flag)], device)[0] > 0


def broadcast_object(obj, src: int = 0):
    """Send a picklable object (e.g. the run folder name) from ``src`` to every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
