"""Task states: what each task of a sweep did, written by the task itself and reconciled with reality.

(Longer than ~300 lines for one concept: a task's state as written and as observed, and its views.)

`status/<stage>/<task>.json` holds the recorded state, the attempts, where and as which
job it ran, its log, its progress, a heartbeat, and the error with its traceback.
`run_tracked` wraps a task body so that the file is right whatever happens to the
body, and refreshes the heartbeat and the progress every `HEARTBEAT_S` seconds; only
rank 0 of a multi-process task writes it.

A file cannot say that its writer died: `observe` turns the recorded state into the
state a user should see, using the scheduler's queue (squeue) where there is one,
the writer's identity where the task ran on this host (host, boot id, pid and the
process's start time, as hpc_ncsn.locks judges a lock's holder: a reused pid is not the
writer), and the heartbeat's age otherwise (another host of a shared file system):

    pending    not started yet (queued, or never submitted)
    running    running now
    done       finished
    failed     raised an error (see error, traceback, log)
    cancelled  stopped by SIGTERM (scancel, --cancel); a rerun resumes it
    preempted  stopped by USR2 and requeued; runs again when the scheduler starts it
    lost       its job is gone without a final state (killed, OOM, node failure); a rerun resumes it

A Slurm job that left the queue before its task wrote a word (a plain `scancel` of a
queued job, a job that failed at start) is `cancelled` or `lost` by the final state the
scheduler gives (`vanished`), and the launcher records that once (`record_vanished`).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..distributed import is_main_process
from ..files import atomic_write
from ..locks import identity, running
from ..preemption import Preempted
from .tasks import AggregateTask, NotRun, Task

__all__ = ["FINAL", "HEARTBEAT_S", "NOT_DONE", "STATES", "TaskStatus", "by_state", "describe", "final_report",
           "format_status", "mark_cancelled", "observe", "read_status", "record_vanished", "run_tracked", "status_path",
           "todo", "vanished", "write_status"]

HEARTBEAT_S = float(os.environ.get("HPC_NCSN_HEARTBEAT_S", 30))
LOST_AFTER_S = max(5 * HEARTBEAT_S, 60.0)  # a running task that has not written for this long is lost
FINAL = ("done", "failed", "cancelled")
NOT_DONE = ("failed", "cancelled", "lost")  # what makes a sweep end unfinished
STATES = ("pending", "running", "done", "failed", "cancelled", "preempted", "lost")


@dataclass
class TaskStatus:
    stage: str
    task: str
    state: str  # running | done | failed | cancelled | preempted | lost (see the module doc)
    started: float = 0.0
    finished: float | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    boot: str | None = None  # the writer's boot id and start time (hpc_ncsn.locks.identity): a reused pid is not it;
    start: int | None = None  # None in a record by the launcher for a task (and in files older than these fields)
    job_id: str | None = None
    scheduler: str | None = None  # "slurm" when the job id is a Slurm job's (squeue knows it), else None
    log: str | None = None
    error: str | None = None
    traceback: str | None = None
    attempts: int = 1
    heartbeat: float | None = None
    progress: dict | None = None  # {"done", "total", "unit"}; "first": what was done when this attempt started
    threads: int | None = None  # torch's intra-op threads this attempt chose (hpc_ncsn.distributed.match_threads)
    note: str | None = None  # what the task says of itself, e.g. a cell that shares another's samples

    @property
    def seconds(self) -> float:
        return (self.finished or time.time()) - self.started


def status_path(root: Path, task: Task) -> Path:
    return Path(root) / "status" / task.stage / f"{task.name}.json"


def write_status(root: Path, status: TaskStatus) -> None:
    path = Path(root) / "status" / status.stage / f"{status.task}.json"
    atomic_write(path, json.dumps(asdict(status), indent=2, sort_keys=True) + "\n")


def read_status(root: Path, task: Task) -> TaskStatus | None:
    path = status_path(root, task)
    if not path.is_file():
        return None
    fields = json.loads(path.read_text())
    return TaskStatus(**{key: value for key, value in fields.items() if key in TaskStatus.__dataclass_fields__})


def todo(root: Path, tasks: list[Task]) -> list[Task]:
    """The tasks that are not done yet (the table is always rewritten)."""
    return [task for task in tasks
            if isinstance(task, AggregateTask) or (status := read_status(root, task)) is None
            or status.state != "done"]


def mark_cancelled(root: Path, tasks: list[Task], why: str) -> None:
    """Record `cancelled` for tasks that never started (a running task records its own state)."""
    for task in tasks:
        previous = read_status(root, task)
        if previous is None or previous.state not in ("done", "running"):
            write_status(root, TaskStatus(task.stage, task.name, "cancelled", started=time.time(),
                                          finished=time.time(), error=why,
                                          attempts=previous.attempts if previous else 0))


def _progress(root: Path, task: Task) -> dict | None:
    try:
        return task.progress(Path(root))
    except (OSError, ValueError):  # a file being rewritten this instant: the next beat reads it
        return None


class _Heartbeat:
    """Rewrites the status file every HEARTBEAT_S seconds with the time and the task's progress."""

    def __init__(self, root: Path, task: Task, status: TaskStatus):
        self.root, self.task, self.status = root, task, status
        self.lock, self.stopped = threading.Lock(), threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat {task.name}", daemon=True)

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            progress = _progress(self.root, self.task)
            with self.lock:
                if self.stopped.is_set():
                    return
                self.status.heartbeat = time.time()
                if progress is not None:
                    self.status.progress = {**progress, "first": (self.status.progress or progress).get(
                        "first", progress["done"])}
                write_status(self.root, self.status)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self.lock:
            self.stopped.set()
        self.thread.join(timeout=10)


def run_tracked(root: Path, task: Task, body: Callable[[], object], *, job_id: str | None = None,
                scheduler: str | None = None, log: str | None = None, threads: int | None = None,
                attempt_check: Callable[[TaskStatus | None], str | None] | None = None, note: str | None = None):
    """Run `body()` with the task's status recorded: running (with heartbeats), then done, failed (with the
    traceback), cancelled or preempted; exceptions are re-raised. `attempt_check(previous)` may return a
    reason to fail the task without running it (the requeue cap). `threads`: what the job chose, and `note`:
    what the task says of itself, recorded."""
    if not is_main_process():
        return body()
    root = Path(root)
    previous = read_status(root, task)
    progress = _progress(root, task)
    status = TaskStatus(task.stage, task.name, "running", **identity(), started=time.time(), job_id=job_id,
                        scheduler=scheduler, log=log, threads=threads,
                        attempts=(previous.attempts + 1) if previous else 1, heartbeat=time.time(), note=note,
                        progress={**progress, "first": progress["done"]} if progress else None)
    refusal = attempt_check(previous) if attempt_check else None
    if refusal:
        status.state, status.finished, status.error = "failed", time.time(), refusal
        write_status(root, status)
        raise RuntimeError(refusal)
    write_status(root, status)

    def final(state: str, error: str | None = None, trace: str | None = None) -> None:
        progress = _progress(root, task)
        if progress is not None:
            status.progress = {**progress, "first": (status.progress or progress).get("first", progress["done"])}
        status.state, status.finished, status.error, status.traceback = state, time.time(), error, trace
        write_status(root, status)

    try:
        with _Heartbeat(root, task, status):
            result = body()
    except Preempted as error:
        final("preempted" if error.requeue else "cancelled", str(error))
        raise
    except NotRun as error:
        final(error.state, str(error))
        raise
    except BaseException as error:
        final("failed", f"{type(error).__name__}: {error}".strip(), traceback.format_exc())
        raise
    final("done")
    return result


def observe(status: TaskStatus | None, queue: dict[str, tuple[str, str]] | None,
            queued: str | None = None) -> tuple[str, str]:
    """(state, detail) a user should see, from the recorded status and what the scheduler says.

    `queue`: {job id: (squeue state, reason)} of this user's jobs, None where there is no
    scheduler to ask; `queued`: the job id the task was last submitted as, if any.
    """
    if queue is not None and queued is not None and queued in queue and (status is None or status.job_id != queued):
        state, reason = queue[queued]  # submitted again, not started yet
        return ("running", "starting") if state == "RUNNING" else ("pending", f"{state.lower()} ({reason})")
    gone = vanished(status, queue, queued)
    if gone is not None:
        return gone
    if status is None:
        return "pending", "not run yet"
    detail = status.error or ""
    job = status.job_id
    if status.state == "cancelled" and status.scheduler == "slurm" and queue is not None and job in queue \
            and queue[job][0] in ("PENDING", "REQUEUED"):
        return "pending", "stopped by SIGTERM, and Slurm requeued it (scontrol requeue or a preemption)"
    if status.state in FINAL or status.state == "lost":  # lost: recorded by record_vanished
        return status.state, detail
    if status.state == "preempted":
        if status.scheduler == "slurm" and queue is not None and job not in queue:
            return "lost", "requeued but no longer in the queue; rerun the sweep to resume it"
        return "preempted", detail or "requeued"
    # Recorded as running: is its writer still there?
    if status.scheduler == "slurm" and queue is not None:
        if job in queue:
            state, reason = queue[job]
            if state in ("RUNNING", "COMPLETING"):
                return "running", ""
            return "pending", f"its run was interrupted and Slurm requeued it ({state.lower()}: {reason})"
        return "lost", ("its job left the queue without a final state (killed, out of memory or a node failure); "
                        "rerun the sweep to resume it")
    alive = running({"host": status.host, "boot": status.boot, "pid": status.pid, "start": status.start})
    if alive:  # this host, this boot, and that very process (pid and start time; the pid alone in older files)
        return "running", ""
    if alive is False:
        return "lost", f"its process {status.pid} is gone without a final state; rerun the sweep to resume it"
    silent = time.time() - (status.heartbeat or status.started)
    if silent > LOST_AFTER_S:
        return "lost", f"no heartbeat from {status.host} for {silent:.0f} s; rerun the sweep to resume it"
    return "running", ""


def vanished(status: TaskStatus | None, queue: dict | None, queued: str | None) -> tuple[str, str] | None:
    """(state, detail) of a task whose latest Slurm job `queued` left the queue before the task recorded anything
    of it (a plain scancel of a queued job, a job that failed at start), else None.

    The final state comes from the queue's `ended` (hpc_ncsn.sweep.scheduler.Queue): CANCELLED is `cancelled`,
    any other end, or none known, is `lost`.
    """
    if queue is None or queued is None or queued in queue:
        return None
    if status is not None and (status.job_id == queued or (status.scheduler is None and status.job_id is not None)):
        return None  # the task wrote about this job, or ran since without Slurm (a local job)
    ended = getattr(queue, "ended", {}).get(queued)
    rerun = "; rerun the sweep to run it"
    if ended == "CANCELLED":
        return "cancelled", f"its job {queued} was cancelled before the task started (scancel){rerun}"
    if ended is None:
        return "lost", (f"its job {queued} left the queue before the task started, and Slurm no longer says why "
                        f"(cancelled, or failed at start){rerun}")
    return "lost", f"its job {queued} ended {ended} before the task started (see its log){rerun}"


def record_vanished(root: Path, tasks: list[Task], queue: dict | None, submitted: dict) -> list[str]:
    """Write the final state of every task whose latest job vanished (`vanished`), so that it is said once and
    stays said when the scheduler forgets the job; 'stage/task' of those written."""
    written = []
    for task in tasks:
        queued = submitted.get(task.stage, {}).get(task.name)
        previous = read_status(root, task)
        gone = vanished(previous, queue, queued)
        if gone is not None:
            write_status(root, TaskStatus(task.stage, task.name, gone[0], started=time.time(), finished=time.time(),
                                          job_id=queued, scheduler="slurm", error=gone[1],
                                          attempts=previous.attempts if previous else 0))
            written.append(f"{task.stage}/{task.name}")
    return written


def describe(sweep, queue: dict | None = None, submitted: dict | None = None) -> list[dict]:
    """Every task of a plan (hpc_ncsn.sweep.plan.Plan) with its observed state, for the status view."""
    rows = []
    for stage, tasks in sweep.stages():
        for task in tasks:
            status = read_status(sweep.root, task)
            queued = (submitted or {}).get(stage, {}).get(task.name)
            state, detail = observe(status, queue, queued)
            progress = status.progress if status else None
            seconds = status.seconds if status else None
            if state == "lost" and status is not None:  # it stopped at its last heartbeat
                seconds = (status.heartbeat or status.started) - status.started
            newer = (queue is not None and queued in queue and (status is None or status.job_id != queued)
                     or vanished(status, queue, queued) is not None)
            rows.append({"stage": stage, "task": task.name, "state": state,
                         "detail": detail or (status.note if status and state == "done" else None) or "",
                         "attempts": status.attempts if status else 0,
                         "job_id": queued if newer else (status.job_id if status else None) or queued,
                         "log": status.log if status else None, "seconds": seconds,
                         "progress": progress, "eta": _eta(status) if state == "running" else None})
    return rows


def _eta(status: TaskStatus | None) -> float | None:
    progress = status.progress if status else None
    if not progress or not progress.get("total"):
        return None
    done_now = progress["done"] - progress.get("first", 0)
    elapsed = (status.heartbeat or time.time()) - status.started
    if done_now <= 0 or elapsed <= 0:
        return None
    return (progress["total"] - progress["done"]) * elapsed / done_now


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def format_status(rows: list[dict]) -> str:
    """A table: stage, task, state, tries, progress, elapsed, ETA, job, detail, log."""
    lines = [["stage", "task", "state", "tries", "progress", "elapsed", "eta", "job", "detail / log"]]
    for row in rows:
        progress = row["progress"]
        done = f"{progress['done']}/{progress['total']} {progress['unit']}" if progress else ""
        tail = row["detail"] or ""
        if row["log"] and row["state"] not in ("done", "pending"):
            tail = f"{tail} (log: {row['log']})" if tail else f"log: {row['log']}"
        lines.append([row["stage"], row["task"], row["state"], str(row["attempts"]), done,
                      _duration(row["seconds"]), _duration(row["eta"]), row["job_id"] or "", tail])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) + "  " + line[-1]
                     for line in lines).rstrip()


def summary(rows: list[dict]) -> str:
    """One line: how many tasks are in each state, per stage."""
    parts = []
    for stage in dict.fromkeys(row["stage"] for row in rows):
        counts: dict[str, int] = {}
        for row in rows:
            if row["stage"] == stage:
                counts[row["state"]] = counts.get(row["state"], 0) + 1
        parts.append(f"{stage}: " + ", ".join(f"{count} {state}" for state, count in counts.items()))
    return "; ".join(parts)


def by_state(rows: list[dict]) -> dict[str, list[str]]:
    """{state: sorted 'stage/task' of the rows in it} for every state (the final summary's keys)."""
    return {state: sorted(f"{row['stage']}/{row['task']}" for row in rows if row["state"] == state)
            for state in STATES}


def final_report(root: Path, rows: list[dict], facts: dict) -> int:
    """The end of a sweep that ran to its end (Slurm's --wait, --cluster local and debug): the table, then one JSON
    line (the sweep, `facts`, the paths of the table and of report.html or null, and every task under its state's
    key); the exit status: 0 only when every task is done and the table is written, else 1."""
    from .plan import REPORT_FILE  # the sweep's file names live with the plan

    table = Path(root) / "table.md"
    print(table.read_text() if table.is_file() else "(no table)")
    states, page = by_state(rows), Path(root) / REPORT_FILE
    print(json.dumps({"sweep": str(root), **facts, "table": str(table) if table.is_file() else None,
                      "report": str(page) if page.is_file() else None, **states}), flush=True)
    return 0 if table.is_file() and len(states["done"]) == len(rows) else 1
