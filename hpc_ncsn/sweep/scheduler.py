"""What the sweep asks Slurm directly (submitit submits): the queue, cancellation, and a dry submission.

Without accounting (slurmdbd) `sacct` is unavailable, so the queue (`squeue`) and the
tasks' own status files are what the sweep reconciles (hpc_ncsn.sweep.status.observe).
"""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess

from ..errors import UserError

__all__ = ["Refused", "cancel", "config", "queue", "rename", "test_submission"]


class Refused(UserError, RuntimeError):
    """Slurm would not take the jobs (a wrong partition, account, QOS, or too many resources); nothing was sent."""


def queue() -> dict[str, tuple[str, str]] | None:
    """{job id: (state, reason)} of this user's jobs, array tasks one by one ('123_4'); None without Slurm."""
    if shutil.which("squeue") is None:
        return None
    listed = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T|%r"],
                            capture_output=True, text=True)
    if listed.returncode:
        return None
    jobs = {}
    for line in listed.stdout.splitlines():
        job, state, reason = (line.split("|") + ["", ""])[:3]
        jobs[job.strip()] = (state.strip(), reason.strip())
    return jobs


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
