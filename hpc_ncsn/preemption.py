"""Stop requests from the scheduler: a signal sets a flag, the loops stop at a safe point.

Two signals, two meanings (Slurm's own):

- **USR2** is the warning `--signal=USR2@<s>` sends before a time limit (or a
  preemption, as submitit asks for it): save, then come back. The training loop
  saves a checkpoint at the next step boundary (all ranks agree through an
  all-reduce), generation stops between shards, and the task is requeued; the rerun
  resumes from the checkpoint or the valid shards.
- **SIGTERM** is what `scancel` (and the end of a job, and a preemption that
  requeues by itself) sends: save if there is time, then stop. Nothing requeues.
- **SIGINT** (Ctrl-C) is a person at the terminal: the same as SIGTERM, with a line
  saying so; a second Ctrl-C stops at once (KeyboardInterrupt), the newest complete
  checkpoint staying as it was.

`install()` returns a function that puts the previous handlers back: `train()` and
`generate()` call it on the way out, so a notebook keeps its own Ctrl-C.

`Preempted` carries which one it was; `requeue_wanted()` says whether the task
should come back. A command stopped by USR2 exits with `EXIT_REQUEUE` (75,
EX_TEMPFAIL), one stopped by SIGTERM with `EXIT_STOPPED` (143, 128 + SIGTERM), by
SIGINT with 130 (128 + SIGINT), so
an sbatch script requeues on 75 only (slurm/common.sh). `requeue(job_id)` is the one
place that asks Slurm to requeue a job.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from typing import Callable

__all__ = ["EXIT_REQUEUE", "EXIT_STOPPED", "Preempted", "agreed", "install", "requeue", "requested",
           "requeue_wanted"]

REQUEUE_SIGNAL, STOP_SIGNAL, INTERRUPT_SIGNAL = signal.SIGUSR2, signal.SIGTERM, signal.SIGINT
EXIT_REQUEUE = 75  # EX_TEMPFAIL: stopped at USR2 after saving; requeue (or rerun) to resume
EXIT_STOPPED = 128 + signal.SIGTERM  # stopped at SIGTERM after saving; a rerun resumes, nothing requeues
_state = {"signal": None}
_RANKED = (None, REQUEUE_SIGNAL.name, INTERRUPT_SIGNAL.name, STOP_SIGNAL.name)  # a later one outranks an earlier


class Preempted(Exception):
    """The task stopped at a stop request after saving its work; `requeue` says whether it should come back."""

    def __init__(self, message: str, signal_name: str | None = None):
        super().__init__(message)
        self.signal_name = signal_name or requested()

    @property
    def requeue(self) -> bool:
        return self.signal_name == REQUEUE_SIGNAL.name

    @property
    def exit_code(self) -> int:
        if self.requeue:
            return EXIT_REQUEUE
        return 128 + INTERRUPT_SIGNAL if self.signal_name == INTERRUPT_SIGNAL.name else EXIT_STOPPED


def _handler(signum, frame) -> None:
    name = signal.Signals(signum).name
    if name == INTERRUPT_SIGNAL.name:
        if _state["signal"] == name:  # the second Ctrl-C: at once
            raise KeyboardInterrupt
        print("interrupted: saving at the next safe point, then stopping (Ctrl-C again to quit at once)",
              file=sys.stderr, flush=True)
    if _RANKED.index(name) > _RANKED.index(_state["signal"]):  # a cancel outranks a time-limit warning
        _state["signal"] = name


def install() -> Callable[[], None]:
    """Turn USR2, SIGTERM and SIGINT into a stop request (main thread only; elsewhere a no-op); returns the
    function that puts the previous handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, _handler) for sig in (REQUEUE_SIGNAL, STOP_SIGNAL, INTERRUPT_SIGNAL)}

    def restore() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if previous[INTERRUPT_SIGNAL] is not _handler:  # the outermost install: its stop request is spent
            _state["signal"] = None

    return restore


def requested() -> str | None:
    """The name of the signal that asked this process to stop, or None."""
    return _state["signal"]


def requeue_wanted() -> bool:
    return requested() == REQUEUE_SIGNAL.name


def agreed(device) -> str | None:
    """The stop request of any rank (SIGTERM outranks USR2), or None: a collective, every rank calls it at once."""
    import torch

    mine = _RANKED.index(requested())
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return _RANKED[mine]
    value = torch.tensor([float(mine)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return _RANKED[int(value.item())]


def requeue(job_id: str) -> str | None:
    """Ask Slurm to put `job_id` (JOB or ARRAY_TASK form) back in the queue; None on success, else why not."""
    done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if done.returncode:  # e.g. already requeued from outside (scontrol requeue sends SIGTERM first)
        return done.stderr.strip() or f"scontrol exited with {done.returncode}"
    return None
