"""Stop requests from the scheduler: a signal sets a flag, the loops stop at a safe point.

Slurm warns a job before its time limit or a preemption with a signal (submitit
asks for USR2, `--signal=USR2@90`). `install()` makes USR2 and SIGTERM set a flag
instead of killing the process. The training loop looks at the flag between
steps (all ranks agree through an all-reduce), saves a checkpoint and raises
`Preempted`; generation looks between shards. Whoever runs the task (the sweep's
submitit wrapper) then requeues the job, and the rerun resumes from the checkpoint
or the valid shards. A job killed without warning resumes from its last periodic
checkpoint the same way.

`requeue(job_id)` is the one place that asks Slurm to requeue a job.
"""

from __future__ import annotations

import signal
import subprocess
import threading

__all__ = ["EXIT_CODE", "Preempted", "agreed", "install", "requeue", "requested"]

SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
EXIT_CODE = 75  # EX_TEMPFAIL: a command stopped by Preempted exits with it; rerun or requeue to resume
_state = {"signal": None}


class Preempted(Exception):
    """The task stopped at a stop request after saving its work; rerun (or requeue) it to resume."""


def _handler(signum, frame) -> None:
    _state["signal"] = signal.Signals(signum).name


def install() -> None:
    """Turn USR2 and SIGTERM into a stop request (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _handler)


def requested() -> str | None:
    """The name of the signal that asked this process to stop, or None."""
    return _state["signal"]


def agreed(device) -> bool:
    """Whether any rank was asked to stop (a collective: every rank must call it at the same point)."""
    import torch

    flag = requested() is not None
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def requeue(job_id: str) -> str | None:
    """Ask Slurm to put `job_id` (JOB or ARRAY_TASK form) back in the queue; None on success, else why not."""
    done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if done.returncode:  # e.g. already requeued from outside (scontrol requeue sends SIGTERM first)
        return done.stderr.strip() or f"scontrol exited with {done.returncode}"
    return None
