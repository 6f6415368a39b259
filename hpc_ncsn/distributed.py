"""torch.distributed for the non-training commands (generation, evaluation), launched by torchrun.

Training goes through Accelerate; these commands only need rank, world size, a
device, a barrier and a gather, so they use torch.distributed directly (gloo on
CPU, NCCL on GPU), initialized from torchrun's environment variables.
"""

from __future__ import annotations

import os
from typing import Any

import torch

__all__ = ["barrier", "gather_to_main", "process_group", "release"]


def process_group() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initializes the default process group once when WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world, device


def release() -> None:
    """Destroy the default process group, if any: a process that exits with gloo's threads alive aborts."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def gather_to_main(value: Any) -> list[Any] | None:
    """Every rank's `value` (picklable), in rank order, on rank 0; None elsewhere."""
    if not torch.distributed.is_initialized():
        return [value]
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    gathered = [None] * world if rank == 0 else None
    torch.distributed.gather_object(value, gathered, dst=0)
    return gathered
