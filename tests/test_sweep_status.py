"""A sweep task's observed state (hpc_ncsn.sweep.status.observe): its status file joined with the queue."""

import json
import subprocess
import sys
import time
from pathlib import Path

from hpc_ncsn.locks import identity
from hpc_ncsn.sweep.scheduler import Queue
from hpc_ncsn.sweep.plan import SweepSpec, plan
from hpc_ncsn.sweep.status import (TaskStatus, describe, observe, read_status, record_vanished, run_tracked,
                                   status_path)
from hpc_ncsn.sweep.tasks import TrainTask
from hpc_ncsn.sweep.work import run

DEBUG = Path(__file__).resolve().parent.parent / "configs" / "debug.yaml"


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def running(**fields) -> TaskStatus:
    return TaskStatus("train", "t", "running", started=time.time() - 10, heartbeat=time.time(), **fields)


def test_a_running_task_whose_process_is_gone_is_lost():
    assert observe(running(), None) == ("running", "")
    state, detail = observe(running(pid=dead_pid()), None)
    assert state == "lost" and "gone without a final state" in detail


def test_a_local_task_is_alive_only_as_the_very_process_that_wrote_it(tmp_path):
    """Judged like a lock's holder (hpc_ncsn.locks.running): same host, boot, pid and start time. A live pid of
    another process (a reused pid) or a record from before a reboot is lost; another host is judged by its heartbeat."""
    task = TrainTask("t", tmp_path / "t", {"train": {"steps": 4}})
    run_tracked(tmp_path, task, lambda: None)
    written = read_status(tmp_path, task)
    assert {key: getattr(written, key) for key in ("host", "boot", "pid", "start")} == identity()
    other = subprocess.Popen(["sleep", "300"])  # an unrelated live process
    try:
        true = identity(other.pid)
        assert true["start"] is not None and observe(running(**true), None) == ("running", "")
        for reused in ({**true, "start": true["start"] + 1}, {**true, "boot": "another-boot"}):
            state, detail = observe(running(**reused), None)
            assert state == "lost" and f"process {other.pid} is gone" in detail, (reused, detail)
        elsewhere = running(**{**true, "host": "elsewhere"})
        assert observe(elsewhere, None) == ("running", "")  # its heartbeat is fresh
        elsewhere.heartbeat = time.time() - 3600
        state, detail = observe(elsewhere, None)
        assert state == "lost" and "no heartbeat from elsewhere" in detail
        # A status file written before boot and start were recorded: judged by its pid, as it was then.
        older = {key: value for key, value in vars(running(pid=other.pid)).items() if key not in ("boot", "start")}
        status_path(tmp_path, task).write_text(json.dumps(older))
        assert read_status(tmp_path, task).start is None
        assert observe(read_status(tmp_path, task), None) == ("running", "")
    finally:
        other.kill()
        other.wait()
    assert observe(read_status(tmp_path, task), None)[0] == "lost"


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


def test_a_slurm_job_that_left_the_queue_before_its_task_started_is_cancelled_or_lost_not_pending():
    queue = Queue({}, ended={"7_0": "CANCELLED", "7_1": "NODE_FAIL"})
    state, detail = observe(None, queue, "7_0")
    assert state == "cancelled" and "7_0" in detail and "scancel" in detail
    state, detail = observe(None, queue, "7_1")
    assert state == "lost" and "NODE_FAIL" in detail
    state, detail = observe(None, Queue(), "7_2")  # the controller has forgotten it
    assert state == "lost" and "no longer says why" in detail
    # An earlier attempt's record does not hide that the newer job vanished; the task's own record of it does.
    earlier = TaskStatus("train", "t", "failed", job_id="3_0", scheduler="slurm", error="ValueError: x")
    assert observe(earlier, queue, "7_0")[0] == "cancelled"
    assert observe(TaskStatus("train", "t", "done", job_id="7_0", scheduler="slurm"), queue, "7_0")[0] == "done"
    # A record by --cancel of an earlier queued job (no job id) is older than the job that vanished since; a local
    # run's record (a job id, no scheduler) is newer than any Slurm submission.
    assert observe(TaskStatus("train", "t", "cancelled"), queue, "7_1")[0] == "lost"
    assert observe(TaskStatus("train", "t", "done", job_id="4242"), queue, "7_1")[0] == "done"
    # Without a queue (no Slurm, or it did not answer) nothing is concluded.
    assert observe(None, None, "7_0") == ("pending", "not run yet")


def test_a_vanished_job_is_recorded_once_and_keeps_its_state_when_slurm_forgets_it(tmp_path):
    tasks = [TrainTask("a", tmp_path / "a", {}), TrainTask("b", tmp_path / "b", {})]
    submitted = {"train": {"a": "7_0", "b": "7_1"}}
    queue = Queue({"7_1": ("RUNNING", "None")}, ended={"7_0": "CANCELLED"})
    assert record_vanished(tmp_path, tasks, queue, submitted) == ["train/a"]
    assert record_vanished(tmp_path, tasks, queue, submitted) == []  # said once
    recorded = read_status(tmp_path, tasks[0])
    assert recorded.state == "cancelled" and recorded.job_id == "7_0" and read_status(tmp_path, tasks[1]) is None
    assert observe(recorded, Queue(), "7_0")[0] == "cancelled"  # forgotten by the controller: still cancelled


def test_a_cell_that_shares_another_cells_samples_draws_nothing_waits_for_nothing_and_says_so(tmp_path, capsys):
    sweep = plan(SweepSpec.from_config(DEBUG, {"arm": ["edm"], "seed": [0], "sampler.steps_per_level": [2, 5]}),
                 tmp_path)
    source, shared = sweep.sample
    said = ("shares the samples of cell arm-edm_seed-0_sampler.steps_per_level-2 (edm's sampler ignores "
            "sampler.steps_per_level)")
    assert shared.shares() == said and not source.shares()
    assert run_tracked(tmp_path, shared, lambda: run(tmp_path, shared), note=said) == {"same_as": str(source.folder)}
    assert f"{said}: it draws and scores nothing" in capsys.readouterr().out
    assert not shared.folder.exists() and not source.folder.exists()  # its training never ran: nothing waited for it
    rows = {row["task"]: row for row in describe(sweep)}
    assert (rows[shared.name]["state"], rows[shared.name]["detail"]) == ("done", said)
    assert rows[source.name]["state"] == "pending" and read_status(tmp_path, shared).note == said
