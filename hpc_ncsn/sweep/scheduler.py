"""What the sweep asks Slurm directly (submitit submits): the queue, cancellation, and a dry submission.

The queue (`squeue --states=all`, one call for the whole sweep) holds the live jobs and, for
as long as the controller remembers them (MinJobAge, 300 s by default), the final state of
those that ended; the tasks' own status files are what the sweep reconciles with it
(hpc_ncsn.sweep.status.observe). A job that ended longer ago is asked of `sacct` once,
where the cluster keeps accounting (slurmdbd). A query that fails (a busy, restarting or
stopped controller: "Socket timed out on send/recv operation") raises `Unanswered`: it
never reads as "nothing is queued".
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
import time
from typing import Callable

from ..errors import UserError

__all__ = ["ENDED", "UNANSWERED_EXIT", "Queue", "Refused", "Unanswered", "cancel", "config", "final_states", "patient_queue",
           "queue", "rename", "test_submission"]

# squeue's states of a job that has left the queue for good (a requeued job passes through REQUEUED and PENDING).
ENDED = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "PREEMPTED", "REVOKED", "TIMEOUT"})
UNANSWERED_EXIT = 3  # the sweep command's exit status when Slurm did not answer within --scheduler-patience-s


class Refused(UserError, RuntimeError):
    """Slurm would not take the jobs (a wrong partition, account, QOS, or too many resources); nothing was sent."""


class Unanswered(UserError, RuntimeError):
    """Slurm did not answer a query; what is queued is unknown (not: nothing is queued)."""


class Queue(dict):
    """{job id: (state, reason)} of this user's queued and running jobs, array tasks one by one ('123_4');
    `ended`: {job id: final state} of the jobs that left the queue and that the controller still remembers."""

    def __init__(self, live=(), ended: dict[str, str] | None = None):
        super().__init__(live)
        self.ended = dict(ended or {})


def _complaint(done: subprocess.CompletedProcess, command: str) -> str:
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    return f"{command}: {lines[-1] if lines else f'exited with {done.returncode}'}"


def queue() -> Queue | None:
    """This user's jobs (one squeue); None where there is no Slurm; Unanswered when squeue fails."""
    if shutil.which("squeue") is None:
        return None
    listed = subprocess.run(["squeue", "-h", "-r", "--states=all", "-u", getpass.getuser(), "-o", "%i|%T|%r"],
                            capture_output=True, text=True)
    if listed.returncode:
        raise Unanswered(_complaint(listed, "squeue"))
    found = Queue()
    for line in listed.stdout.splitlines():
        job, state, reason = (part.strip() for part in (line.split("|") + ["", ""])[:3])
        if state in ENDED:
            found.ended[job] = state
        else:
            found[job] = (state, reason)
    return found


def patient_queue(patience_s: float, say: Callable[[str], None] = print) -> Queue | None:
    """queue(), asked again after 1, 2, 4 … (at most 60) s while Slurm does not answer; Unanswered once it has
    not answered for `patience_s` seconds since the first failure (after one retry at least)."""
    delay, first = 1.0, None
    while True:
        try:
            return queue()
        except Unanswered as error:
            first = first if first is not None else time.monotonic()
            waited = time.monotonic() - first
            if waited >= patience_s and delay > 1:
                raise Unanswered(f"Slurm did not answer for {waited:.0f} s ({error}); what is queued is unknown, "
                                 "the jobs may still run: check with squeue --me, then rerun with --wait or --status "
                                 "(or raise --scheduler-patience-s)") from None
            say(f"Slurm did not answer ({error}); asking again in {delay:.0f} s")
            time.sleep(delay)
            delay = min(2 * delay, 60.0)


def final_states(job_ids: list[str]) -> dict[str, str]:
    """{job id: final state} from accounting (one sacct) for jobs the controller no longer remembers; {} where
    the cluster keeps no accounting (sacct: "accounting storage is disabled") or sacct fails."""
    if not job_ids or shutil.which("sacct") is None:
        return {}
    listed = subprocess.run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(job_ids)],
                            capture_output=True, text=True)
    if listed.returncode or "disabled" in listed.stderr:
        return {}
    states = {}
    for line in listed.stdout.splitlines():
        job, _, state = line.partition("|")
        if state.split():  # "CANCELLED by 1000": the state is the first word
            states[job.strip()] = state.split()[0]
    return {job: state for job, state in states.items() if job in job_ids and state in ENDED}


def config() -> dict[str, str] | None:
    """`scontrol show config` as {key: value} (MaxArraySize, MaxJobCount, ...); None without Slurm."""
    try:
        shown = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if shown.returncode:
        return None
    return {match[1]: match[2].strip() for match in re.finditer(r"^(\w+)\s*=\s*(.*)$", shown.stdout, re.MULTILINE)}


def cancel(job_ids: list[str]) -> str | None:
    """scancel the given jobs or arrays; None on success, else scancel's complaint."""
    if not job_ids:
        return None
    done = subprocess.run(["scancel", *job_ids], capture_output=True, text=True)
    return (done.stderr.strip() or f"scancel exited with {done.returncode}") if done.returncode else None


def test_submission(script: str) -> str | None:
    """Ask sbatch whether it would accept `script` (--test-only: nothing is queued); None if yes, else why not."""
    checked = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True)
    if checked.returncode == 0:
        return None
    lines = [line.removeprefix("sbatch: error: ").strip() for line in checked.stderr.splitlines() if line.strip()]
    return "; ".join(dict.fromkeys(lines)) or f"sbatch --test-only exited with {checked.returncode}"


def rename(job_id: str, name: str) -> None:
    """Give a running job (an array task too) its own name in squeue; best effort (an old Slurm may refuse)."""
    subprocess.run(["scontrol", "update", f"JobId={job_id}", f"JobName={name[:200]}"], capture_output=True)
