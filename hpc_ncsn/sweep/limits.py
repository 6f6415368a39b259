"""How big a submission Slurm takes: a stage larger than `MaxArraySize` is split into several arrays, a sweep that
would hold more jobs than `MaxSubmitJobs` allows is refused in one line before anything is submitted.

    MaxArraySize   the largest array index + 1 (slurm.conf; 1,001 by default, often lower): an array of
                   submitit's indices 0 … n−1 holds at most MaxArraySize tasks
    MaxJobCount    the most jobs slurmctld holds at once (slurm.conf), every array task counted
    MaxSubmitJobs  the most jobs one user may have queued or running (a QOS or association limit, which
                   `scontrol show config` does not show: give it with --max-submit-jobs)

The limits are read once per launch from `scontrol show config` (`read_limits`); the sweep's
--max-array-size and --max-submit-jobs flags override what it says. A sweep submits every
stage at once (each waits for the one before), so all its tasks count against the job limits
together. --array-parallelism (`%N` in `--array`) caps the tasks of a stage that run at once;
a stage split into k arrays gives each ⌈N/k⌉, so the stage still runs at most about N at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import scheduler
from .scheduler import Refused

__all__ = ["DEFAULT_MAX_ARRAY_SIZE", "Limits", "array_plan", "read_limits", "split"]

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default, assumed where scontrol cannot say


@dataclass(frozen=True)
class Limits:
    """Slurm's limits on one submission, and where each came from (for the messages)."""

    max_array_size: int = DEFAULT_MAX_ARRAY_SIZE
    max_jobs: int | None = None  # min(MaxJobCount, MaxSubmitJobs) where known
    source: str = "Slurm's defaults"

    def __post_init__(self):
        if self.max_array_size < 1 or (self.max_jobs is not None and self.max_jobs < 1):
            raise ValueError(f"limits must be at least 1, got {self}")


def read_limits(max_array_size: int | None = None, max_submit_jobs: int | None = None) -> Limits:
    """The limits of this cluster: MaxArraySize and MaxJobCount from one `scontrol show config` (not run when
    `max_array_size` is given), the flags' values where given (they win)."""
    for flag, value in (("--max-array-size", max_array_size), ("--max-submit-jobs", max_submit_jobs)):
        if value is not None and value < 1:
            raise Refused(f"{flag} {value}: give a positive number (Slurm's limit), or leave it out to read it "
                          "from scontrol show config")
    found, source = {}, []
    if max_array_size is None:
        found = scheduler.config() or {}
        source += ["scontrol show config"] if found else []
    array = max_array_size or _number(found.get("MaxArraySize")) or DEFAULT_MAX_ARRAY_SIZE
    if max_array_size is not None:
        source.append("--max-array-size")
    jobs = [value for value in (_number(found.get("MaxJobCount")), max_submit_jobs) if value]
    if max_submit_jobs is not None:
        source.append("--max-submit-jobs")
    return Limits(array, min(jobs) if jobs else None, " and ".join(source) or "Slurm's defaults")


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and int(text) > 0 else None


def split(tasks: list, size: int) -> list[list]:
    """`tasks` in consecutive arrays of at most `size`, in order."""
    return [tasks[start:start + size] for start in range(0, len(tasks), size)]


def array_plan(stages: list[tuple[str, list]], limits: Limits, parallelism: int, queued: int = 0,
               ) -> list[tuple[str, list[list], int]]:
    """[(stage, its arrays, each array's %N)] for the stages' tasks still to submit (stages without any left
    out). Refused (one line, nothing submitted) where the sweep's jobs and the `queued` ones already in the
    queue would exceed the job limit."""
    total = sum(len(tasks) for _, tasks in stages)
    if limits.max_jobs is not None and total + queued > limits.max_jobs:
        held = f" with the {queued} job(s) already queued" if queued else ""
        raise Refused(f"the sweep needs {total} jobs queued at once{held}, more than the {limits.max_jobs} Slurm "
                      f"allows ({limits.source}); launch fewer cells (--seeds, --arms, --axis), or wait for queued "
                      "jobs to finish (nothing was submitted)")
    plan = []
    for stage, tasks in stages:
        if tasks:
            arrays = split(tasks, limits.max_array_size)
            plan.append((stage, arrays, max(1, math.ceil(parallelism / len(arrays)))))
    return plan
