"""Task status files: what each task of a sweep did, written by the task itself, read by everyone else.

`status/<stage>/<task>.json` holds the state (running, done, failed, preempted), the
attempts, where and as which job it ran, its log, and the error with its traceback.
`run_tracked` wraps a task body so that the file is right whatever happens; only
rank 0 of a multi-process task writes it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..distributed import is_main_process
from ..files import atomic_write
from ..preemption import Preempted
from .tasks import Task

__all__ = ["TaskStatus", "describe", "format_status", "read_status", "run_tracked", "status_path", "write_status"]


@dataclass
class TaskStatus:
    stage: str
    task: str
    state: str  # running | done | failed | preempted (stopped at a signal after saving; resumes when rerun)
    started: float = 0.0
    finished: float | None = None
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    job_id: str | None = None
    log: str | None = None
    error: str | None = None
    traceback: str | None = None
    attempts: int = 1


def status_path(root: Path, task: Task) -> Path:
    return Path(root) / "status" / task.stage / f"{task.name}.json"


def write_status(root: Path, status: TaskStatus) -> None:
    path = Path(root) / "status" / status.stage / f"{status.task}.json"
    atomic_write(path, json.dumps(asdict(status), indent=2, sort_keys=True) + "\n")


def read_status(root: Path, task: Task) -> TaskStatus | None:
    path = status_path(root, task)
    if not path.is_file():
        return None
    return TaskStatus(**json.loads(path.read_text()))


def run_tracked(root: Path, task: Task, body: Callable[[], object], *, job_id: str | None = None,
                log: str | None = None):
    """Run `body()` with the task's status recorded: running, then done or failed with the traceback (re-raised)."""
    if not is_main_process():
        return body()
    previous = read_status(root, task)
    status = TaskStatus(task.stage, task.name, "running", started=time.time(), job_id=job_id, log=log,
                        attempts=(previous.attempts + 1) if previous else 1)
    write_status(root, status)
    try:
        result = body()
    except Preempted as error:
        status.state, status.finished, status.error = "preempted", time.time(), str(error)
        write_status(root, status)
        raise
    except BaseException as error:
        status.state, status.finished = "failed", time.time()
        status.error = f"{type(error).__name__}: {error}".strip()
        status.traceback = traceback.format_exc()
        write_status(root, status)
        raise
    status.state, status.finished = "done", time.time()
    write_status(root, status)
    return result


def describe(sweep) -> list[dict]:
    """Every task of a plan (hpc_ncsn.sweep.plan.Plan) with its recorded state, for the status view."""
    rows = []
    for stage, tasks in sweep.stages():
        for task in tasks:
            status = read_status(sweep.root, task)
            rows.append({"stage": stage, "task": task.name, "state": status.state if status else "pending",
                         "attempts": status.attempts if status else 0,
                         "job_id": status.job_id if status else None,
                         "log": status.log if status else None,
                         "error": status.error if status else None})
    return rows


def format_status(rows: list[dict]) -> str:
    width = max(len(row["task"]) for row in rows)
    lines = [f"{'stage':9} {'task':{width}} {'state':8} {'tries':5} job / error"]
    for row in rows:
        tail = row["error"] or row["job_id"] or ""
        if row["error"] and row["log"]:
            tail += f" (log: {row['log']})"
        lines.append(f"{row['stage']:9} {row['task']:{width}} {row['state']:8} {row['attempts']:<5} {tail}")
    return "\n".join(lines)
