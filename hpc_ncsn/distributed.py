"""Which process this is, and the few collectives the non-training stages need.

`rank()` / `is_main_process()` are the one rank test of the package: the rank of the
initialized torch.distributed group, else the RANK variable a launcher (torchrun,
Accelerate, submitit, slurm/rank-env.sh) exported, else 0. They do not import torch.

`match_threads()` gives each process as many intra-op threads as CPUs its allocation
holds for it (see its docstring): a process that starts one thread per core of a
shared node makes every process on it several times slower. `keep_freed_memory()` stops
glibc from handing large freed blocks back to the kernel after every use (on a CPU a
training step otherwise spends a third of its time in page faults). `setup_process()`,
which every entry point calls, does both.

Training goes through Accelerate; generation and evaluation, launched by torchrun or
a sweep job, use `process_group()` (gloo on CPU, NCCL on GPU) with a barrier and a
gather.
"""

from __future__ import annotations

import os
import sys
from typing import Any

__all__ = ["barrier", "cpus_for_this_process", "gather_to_main", "is_main_process", "keep_freed_memory",
           "match_threads", "process_group", "rank", "release", "setup_process", "visible_cpus"]

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# A user's own allocator choice wins over keep_freed_memory(): glibc's variables, or another allocator preloaded.
ALLOCATOR_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


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


def _int(name: str) -> int | None:
    value = os.environ.get(name, "").split("(")[0]  # SLURM_TASKS_PER_NODE may read "2(x3)"
    return int(value) if value.isdigit() and int(value) > 0 else None


def visible_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; the CPU count where there is none)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpus_for_this_process(cpus: int | None = None) -> tuple[int, str]:
    """(CPUs this process may use, where that number came from).

    In order: OMP_NUM_THREADS when the user set it; `cpus` (a launcher's share, e.g.
    --local-parallel); Slurm's --cpus-per-task (SLURM_CPUS_PER_TASK); the job's CPUs on
    this node (SLURM_CPUS_ON_NODE) split among its tasks here; else the CPUs this
    process may run on (os.sched_getaffinity) split among the processes a launcher
    started on this machine (LOCAL_WORLD_SIZE).
    """
    if _int("OMP_NUM_THREADS"):
        return _int("OMP_NUM_THREADS"), "OMP_NUM_THREADS"
    if cpus is not None:
        return max(1, cpus), "the launcher's share"
    if _int("SLURM_CPUS_PER_TASK"):
        return _int("SLURM_CPUS_PER_TASK"), "SLURM_CPUS_PER_TASK"
    local = _int("SLURM_NTASKS_PER_NODE") or _int("SLURM_TASKS_PER_NODE") or _int("LOCAL_WORLD_SIZE") or 1
    if _int("SLURM_CPUS_ON_NODE"):
        return max(1, _int("SLURM_CPUS_ON_NODE") // local), f"SLURM_CPUS_ON_NODE / {local} task(s)"
    visible = visible_cpus()
    local = _int("LOCAL_WORLD_SIZE") or 1
    return max(1, visible // local), f"{visible} visible CPU(s) / {local} process(es)"


def match_threads(cpus: int | None = None) -> int:
    """Set torch's intra-op threads (and OMP/MKL/OpenBLAS for child processes) to this process's CPUs."""
    count, _ = cpus_for_this_process(cpus)
    for name in THREAD_VARIABLES:
        os.environ[name] = str(count)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(count)
    return count


def keep_freed_memory() -> str:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel; says what it did.

    By default glibc serves a block above its mmap threshold (128 KiB, raised adaptively up
    to 32 MiB) with a fresh mmap and unmaps it on free, and trims the heap top above 128 KiB.
    A network's activations are such blocks, allocated and freed at every step, so each step
    faults its pages in again: on this project's 2-core CPU 20,000 page faults and 40 ms of
    kernel time per 125 ms training step of configs/debug.yaml. With both thresholds at
    2 GiB the blocks are reused (a step took 100 ms, 1 page fault). The process keeps its
    peak heap instead of shrinking after it; a GPU run's host memory is small either way.
    Left alone when the user set glibc's MALLOC_*_ / GLIBC_TUNABLES variables or preloaded
    jemalloc, tcmalloc or mimalloc, and where the C library is not glibc.
    """
    import ctypes
    import platform

    if any(os.environ.get(name) for name in ALLOCATOR_VARIABLES):
        return "left alone: the user's glibc malloc variables"
    if any(name in os.environ.get("LD_PRELOAD", "") for name in OTHER_ALLOCATORS):
        return "left alone: another allocator is preloaded"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "left alone: not glibc"
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold, limit = -1, -3, 2**31 - 1
    if libc.mallopt(m_mmap_threshold, limit) and libc.mallopt(m_trim_threshold, limit):
        return "freed memory kept (glibc mmap and trim thresholds 2 GiB)"
    return "left alone: glibc refused the thresholds"


def setup_process(cpus: int | None = None) -> int:
    """What every entry point does first: threads matched to the allocation, freed memory kept; the thread count."""
    keep_freed_memory()
    return match_threads(cpus)
