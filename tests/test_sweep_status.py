"""A sweep task's observed state (hpc_ncsn.sweep.status.observe): its status file joined with the queue."""

import subprocess
import sys
import time

from hpc_ncsn.sweep.status import TaskStatus, observe


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


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
