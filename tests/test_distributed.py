"""Process setup (hpc_ncsn.distributed): threads that follow the allocation, freed memory kept by glibc."""

import json
import os
import platform
import subprocess
import sys

import pytest

from hpc_ncsn.distributed import cpus_for_this_process, match_threads


@pytest.mark.parametrize("env, share, expected", [
    ({}, 3, (3, "the launcher's share")),
    ({"OMP_NUM_THREADS": "5"}, None, (5, "OMP_NUM_THREADS")),
    ({"OMP_NUM_THREADS": "5"}, 3, (5, "OMP_NUM_THREADS")),  # the user's setting wins over a launcher's share
    ({"SLURM_CPUS_PER_TASK": "4", "SLURM_CPUS_ON_NODE": "16"}, None, (4, "SLURM_CPUS_PER_TASK")),
    ({"SLURM_CPUS_ON_NODE": "8", "SLURM_NTASKS_PER_NODE": "4"}, None, (2, "SLURM_CPUS_ON_NODE / 4 task(s)")),
    ({"SLURM_CPUS_ON_NODE": "1", "SLURM_NTASKS_PER_NODE": "2"}, None, (1, "SLURM_CPUS_ON_NODE / 2 task(s)")),
])
def test_threads_follow_the_allocation(monkeypatch, env, share, expected):
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "SLURM_NTASKS_PER_NODE",
                 "SLURM_TASKS_PER_NODE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cpus_for_this_process(share) == expected


def test_threads_default_to_the_visible_cpus_shared_by_the_local_processes(monkeypatch):
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE", "SLURM_NTASKS_PER_NODE",
                 "SLURM_TASKS_PER_NODE"):
        monkeypatch.delenv(name, raising=False)
    visible = len(os.sched_getaffinity(0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpus_for_this_process()[0] == max(1, visible // 2)


def test_match_threads_sets_torch_and_the_children_environment(monkeypatch):
    import torch

    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, "")  # recorded, so that what match_threads sets is undone after the test
        monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    try:
        assert match_threads() == 1
        assert torch.get_num_threads() == 1 and os.environ["OMP_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)


# Freed memory kept: measured in a fresh process each, since the setting is for the whole process.
FAULTS = """
import json, resource, sys
import numpy as np
from hpc_ncsn.distributed import keep_freed_memory
said = keep_freed_memory() if sys.argv[1] == "product" else "not called"
for _ in range(3):  # warm-up: the first block is faulted in either way
    np.ones(8 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    np.ones(8 << 20)  # 64 MiB, allocated and freed: a network's activations at every step
print(json.dumps({"said": said, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


HUGE_PAGES_FAULTED = 20 * (64 << 20) // (2 << 20)


def _faults(mode: str, **env: str) -> dict:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True,
                          env={**environment, **env})
    return json.loads(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again_at_every_allocation():
    plain, product = _faults("plain"), _faults("product")
    # glibc unmaps each 64 MiB block on free and faults the next one in: at least one fault per 2 MiB (a
    # transparent huge page, where numpy asks for them) per allocation.
    assert plain["faults"] >= HUGE_PAGES_FAULTED
    assert product["faults"] < 20 and product["said"].startswith("freed memory kept")  # not one per allocation


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's")
def test_a_users_own_malloc_setting_is_left_alone():
    chosen = _faults("product", MALLOC_MMAP_THRESHOLD_="131072")
    assert chosen["said"] == "left alone: the user's glibc malloc variables"
    assert chosen["faults"] >= HUGE_PAGES_FAULTED
