"""The sweep's control plane in this process: folder locks, thread matching, observed task states, stop signals."""

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc_ncsn import preemption
from hpc_ncsn.distributed import cpus_for_this_process, match_threads
from hpc_ncsn.locks import FolderLock, Locked
from hpc_ncsn.sweep.status import TaskStatus, observe

ROOT = Path(__file__).resolve().parent.parent


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


# Locks ---------------------------------------------------------------------------------------

HOLD = """
import sys, time
from hpc_ncsn.locks import FolderLock
lock = FolderLock(sys.argv[1], "sweep", what="holder").acquire()
print("held", flush=True)
time.sleep(60)
"""


def test_a_live_holder_keeps_the_folder_and_is_named(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Locked, match=rf"in use by holder \(host {socket.gethostname()}, pid {holder.pid}, "
                                         r"since .*\); wait for it"):
            FolderLock(tmp_path, "sweep", what="second").acquire()
    finally:
        holder.kill()
        holder.wait()
    # Its holder is gone: the lock is stale and the next writer takes it.
    with FolderLock(tmp_path, "sweep", what="second") as lock:
        assert lock.holder()["what"] == "second" and lock.holder()["pid"] == os.getpid()
    assert not (tmp_path / ".lock-sweep").exists()


def test_a_lock_from_another_host_expires_only_when_nobody_refreshes_it(tmp_path, monkeypatch):
    path = tmp_path / ".lock-train"
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "what": "a training", "time": time.time()}))
    with pytest.raises(Locked, match="in use by a training \\(host other-node"):
        FolderLock(tmp_path, "train", what="me").acquire()
    old = time.time() - 3600
    os.utime(path, (old, old))  # its holder stopped refreshing an hour ago: a dead node
    FolderLock(tmp_path, "train", what="me").acquire().release()


def test_a_requeued_slurm_job_takes_back_its_own_lock(tmp_path, monkeypatch):
    (tmp_path / ".lock-train").write_text(json.dumps({"host": "n1", "pid": 7, "job_id": "4242", "what": "a training",
                                                      "time": time.time()}))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    FolderLock(tmp_path, "train", what="me").acquire().release()


def test_two_trainings_in_one_run_folder_are_refused(tmp_path):
    from hpc_ncsn.config import load_config
    from hpc_ncsn.train.run_folder import RunFolder

    config = load_config(ROOT / "configs" / "debug.yaml", [f"train.out_dir={tmp_path}"])
    holder = subprocess.Popen([sys.executable, "-c", HOLD.replace('"sweep"', '"train"'), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Locked, match="would overwrite each other's checkpoints"):
            RunFolder(tmp_path).start(config)
    finally:
        holder.kill()
        holder.wait()
    folder = RunFolder(tmp_path)
    folder.start(config)
    assert (tmp_path / "config.yaml").is_file()
    folder.lock.release()


# Threads -------------------------------------------------------------------------------------

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


# Observed states -----------------------------------------------------------------------------

def running(**fields) -> TaskStatus:
    return TaskStatus("train", "t", "running", started=time.time() - 10, heartbeat=time.time(), **fields)


def test_a_running_task_whose_process_is_gone_is_lost():
    assert observe(running(), None) == ("running", "")
    state, detail = observe(running(pid=dead_pid()), None)
    assert state == "lost" and "gone without a final state" in detail


def test_a_slurm_task_is_lost_when_its_job_leaves_the_queue_and_pending_when_slurm_requeued_it():
    status = running(job_id="12_3", scheduler="slurm", host="n1")
    assert observe(status, {"12_3": ("RUNNING", "None")}) == ("running", "")
    assert observe(status, {"12_3": ("PENDING", "BeginTime")})[0] == "pending"
    assert observe(status, {})[0] == "lost"


def test_a_task_on_another_host_is_lost_when_its_heartbeat_stops():
    assert observe(running(host="elsewhere"), None)[0] == "running"
    silent = running(host="elsewhere")
    silent.heartbeat = time.time() - 3600
    assert observe(silent, None)[0] == "lost"


def test_final_and_queued_states():
    assert observe(None, None) == ("pending", "not run yet")
    assert observe(None, {"9_0": ("PENDING", "Dependency")}, "9_0") == ("pending", "pending (Dependency)")
    failed = TaskStatus("train", "t", "failed", error="ValueError: x")
    assert observe(failed, None) == ("failed", "ValueError: x")
    assert observe(failed, {"9_1": ("PENDING", "Priority")}, "9_1")[0] == "pending"  # submitted again
    assert observe(TaskStatus("train", "t", "cancelled"), None)[0] == "cancelled"
    requeued = TaskStatus("train", "t", "preempted", job_id="5_0", scheduler="slurm")
    assert observe(requeued, {"5_0": ("PENDING", "BeginTime")})[0] == "preempted"
    assert observe(requeued, {})[0] == "lost"


# Stop signals --------------------------------------------------------------------------------

STOPPER = """
import os, signal, sys, time
from hpc_ncsn import preemption
preemption.install()
os.kill(os.getpid(), getattr(signal, sys.argv[1]))
if len(sys.argv) > 2:
    os.kill(os.getpid(), getattr(signal, sys.argv[2]))
stop = preemption.Preempted("stopped")
print(stop.signal_name, stop.requeue, stop.exit_code)
"""


@pytest.mark.parametrize("signals, expected", [
    (["SIGUSR2"], "SIGUSR2 True 75"),
    (["SIGTERM"], "SIGTERM False 143"),
    (["SIGUSR2", "SIGTERM"], "SIGTERM False 143"),  # a cancel outranks a time-limit warning
    (["SIGTERM", "SIGUSR2"], "SIGTERM False 143"),
])
def test_usr2_asks_for_a_requeue_and_sigterm_for_a_stop(signals, expected):
    done = subprocess.run([sys.executable, "-c", STOPPER, *signals], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == expected, done.stderr
    assert preemption.EXIT_STOPPED == 128 + signal.SIGTERM


def test_ctrl_c_asks_to_stop_a_second_one_stops_at_once_and_the_handlers_come_back():
    import os
    import signal

    from hpc_ncsn import preemption

    before = signal.getsignal(signal.SIGINT)
    restore = preemption.install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # the first: a stop request, like scancel's SIGTERM
        assert preemption.requested() == "SIGINT" and not preemption.requeue_wanted()
        assert preemption.Preempted("x").exit_code == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the second: at once
    finally:
        restore()
    assert signal.getsignal(signal.SIGINT) is before  # a notebook keeps its own Ctrl-C
    assert preemption.requested() is None  # and its next training does not stop at the first step


def test_a_nested_install_keeps_the_outer_stop_request():
    import os
    import signal

    from hpc_ncsn import preemption

    outer = preemption.install()  # a job's, before anything slow
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        inner = preemption.install()  # train()'s
        inner()
        assert preemption.requested() == "SIGTERM"
    finally:
        outer()
    assert preemption.requested() is None
