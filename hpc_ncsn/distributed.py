"""Which process this is, and the few collectives the non-training stages need.

`rank()` / `is_main_process()` are the one rank test of the package: the rank of the
initialized torch.distributed group, else the RANK variable a launcher (torchrun,
Accelerate, submitit, slurm/rank-env.sh) exported, else 0. They do not import torch.

Training goes through Accelerate; generation and evaluation, launched by torchrun or
a sweep job, use `process_group()` (gloo on CPU, NCCL on GPU) with a barrier and a
gather.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["barrier", "gather_to_main", "is_main_process", "process_group", "rank", "release"]


def _initialized():
    """torch.distributed when a process group is up, else None (without importing torch)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    dist = _initialized()
    return dist.get_rank() if dist is not None else int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """Whether this is rank 0: the process that writes shared files and prints."""
    return rank() == 0


def process_group() -> tuple[int, int, "torch.device"]:  # noqa: F821
    """(rank, world size, device); initializes the default process group once when WORLD_SIZE > 1."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank(), world, device


def release() -> None:
    """Destroy the default process group, if any: a process that exits with gloo's threads alive aborts."""
    dist = _initialized()
    if dist is not None:
        dist.destroy_process_group()


def barrier() -> None:
    dist = _initialized()
    if dist is not None:
        dist.barrier()


def gather_to_main(value: Any) -> list[Any] | None:
    """Every rank's `value` (picklable), in rank order, on rank 0; None elsewhere."""
    dist = _initialized()
    if dist is None:
        return [value]
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered
