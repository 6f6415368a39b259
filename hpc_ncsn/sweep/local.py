"""Run a sweep on this machine: submitit's LocalExecutor (each task its own process) or DebugExecutor (this
process), each task as soon as the tasks it depends on have ended (`ready`), and the check of the Python that
starts the tasks (--python).

While a local sweep runs, its launcher holds the sweep folder's lock with `cluster: local` in
it; `--cancel` (hpc_ncsn.sweep.slurm.cancel) reads that field and sends the launcher SIGTERM,
which stops the running tasks (they save and record `cancelled`) and starts no further one.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from ..config import ConfigError
from ..distributed import visible_cpus
from .plan import Plan
from .status import TaskStatus, describe, final_report, mark_cancelled, observe, read_status, todo, write_status
from .tasks import AggregateTask, SampleTask, Task, TrainTask
from .work import JobOptions, job

__all__ = ["check_python", "local_parallel", "ready", "run_here"]


class _LocalCancel:
    """While a local sweep runs, SIGTERM/SIGINT to the launcher stop its running jobs (they save and record
    `cancelled`) and no further task starts."""

    def __init__(self):
        self.requested, self.running = False, []

    def __call__(self, signum, frame) -> None:
        self.requested = True
        for pid in self.running:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def __enter__(self):
        self.saved = {sig: signal.signal(sig, self) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def ready(queued: list[Task], running: list[Task]) -> list[Task]:
    """The queued tasks that may start now, in the order to start them, given the tasks not ended yet (`queued`
    and `running`; any other task of the sweep has ended, or was done before this run).

    A cell waits for its own training only (it then reads that training's state: a failed, cancelled or lost
    training makes it record NotRun's state, hpc_ncsn.sweep.work), an anchor for nothing (it makes what it
    needs itself), the table for every other task. Trainings come first (the cells wait for them), the
    others keep their order in `queued` (the plan's)."""
    unended = [*queued, *running]
    training = {task.folder for task in unended if isinstance(task, TrainTask)}
    free = [task for task in queued
            if not (isinstance(task, AggregateTask) and any(not isinstance(t, AggregateTask) for t in unended))
            and not (isinstance(task, SampleTask) and task.train.folder in training)]
    return sorted(free, key=lambda task: not isinstance(task, TrainTask))  # stable: the plan's order otherwise


def _run_jobs(executor, root: Path, tasks: list[Task], parallel: int, options: JobOptions,
              cancel: _LocalCancel | None) -> dict[str, list[float]]:
    """Run `tasks` with a submitit executor, up to `parallel` at a time, each as soon as a slot is free and the
    tasks it depends on have ended (`ready`). Each task records its own state; one whose job ended in an error
    before the task wrote a word of it (submitit could not start it) is recorded `failed` here, with submitit's
    error. Returns [first start, last end] of each stage's tasks that ran."""
    from submitit.local.debug import DebugJob

    queue, running, spans = list(tasks), [], {}
    while queue or running:
        if not (cancel is not None and cancel.requested):
            for task in ready(queue, [task for task, _ in running])[:parallel - len(running)]:
                queue = [other for other in queue if other is not task]
                submitted = executor.submit(job, str(root), task, options)
                running.append((task, submitted))
                spans.setdefault(task.stage, [time.time(), time.time()])
                print(f"[{task.stage}] {task.name}: job {submitted.job_id}, log {submitted.paths.stderr}", flush=True)
            assert running or not queue, f"no task can start, none runs: {[task.name for task in queue]}"
        if cancel is not None:
            cancel.running = [int(j.job_id) for _, j in running if j.job_id.isdigit()]
            if cancel.requested and queue:
                mark_cancelled(root, queue, "the sweep was cancelled before it started")
                queue = []
        # A debug job runs inside result() (below); its done() would run it outside the error handling.
        ended = [(task, submitted) for task, submitted in running
                 if isinstance(submitted, DebugJob) or submitted.done()]
        if not ended:
            time.sleep(0.2)
        for task, submitted in ended:
            running.remove((task, submitted))
            try:
                submitted.result()
                print(f"[{task.stage}] {task.name}: done", flush=True)
            except Exception as error:  # noqa: BLE001 - a failed task is reported, its siblings go on
                status = read_status(root, task)  # the task's own words (submitit's are its traceback's tail)
                text = str(error).strip()
                said = text.splitlines()[-1] if text else repr(error)
                if status is None or status.job_id != submitted.job_id:  # it never ran: say so in its record
                    status = TaskStatus(task.stage, task.name, "failed", started=time.time(), finished=time.time(),
                                        job_id=submitted.job_id, log=str(submitted.paths.stderr), error=said,
                                        attempts=status.attempts if status else 0)
                    write_status(root, status)
                print(f"[{task.stage}] {task.name}: {observe(status, None)[0].upper()} ({status.error or said}); log "
                      f"{submitted.paths.stderr}", flush=True)
            spans[task.stage][1] = time.time()
    return spans


def local_parallel(requested: int | None) -> int:
    """Tasks at once for --cluster local: as asked, else one per CPU (at most 8) on a machine without a GPU
    and 1 with one (the tasks would share it).

    On a CPU, one thread per task beats all threads on one task: a small network's operators do not
    split well over threads, and a single-threaded task loses only its share of the cores to another
    program, where a task with an OpenMP team slows down several times (each team waits for its
    slowest thread). Measured on a 2-core machine: docs/performance.md, Threads on a shared node.
    """
    if requested is not None:
        return max(1, requested)
    import torch

    return 1 if torch.cuda.is_available() else min(visible_cpus(), 8)


def run_here(root: Path, sweep: Plan, cluster: str, *, parallel: int | None = None, timeout_min: int = 24 * 60,
             max_requeues: int = 5, python: str | None = None) -> int:
    """--cluster local or debug: every task not done yet, each once those it depends on have ended (`ready`),
    on this machine; prints the table.

    Local tasks run `local_parallel(parallel)` at a time, each with that share of this machine's CPUs
    for its threads, each started by `python` (a command line; default: this interpreter).
    """
    import submitit

    if cluster == "local":
        executor = submitit.LocalExecutor(folder=root / "logs" / "%j", python=python)
        executor.update_parameters(timeout_min=timeout_min)
        parallel = local_parallel(parallel)
        # The share does not depend on how many tasks are left: a rerun of one cell computes with the
        # threads its siblings had, so it reproduces their numbers (float rounding follows the thread count).
        options = JobOptions(cpus=max(1, visible_cpus() // parallel), max_requeues=max_requeues)
    else:
        executor = submitit.DebugExecutor(folder=root / "logs" / "%j")
        parallel, options = 1, JobOptions(max_requeues=max_requeues)
    started = time.time()
    pending = todo(root, [task for _, tasks in sweep.stages() for task in tasks])
    with _LocalCancel() if cluster == "local" else _NoCancel() as cancel:
        spans = _run_jobs(executor, root, pending, parallel, options, cancel if cluster == "local" else None)
    # A stage's seconds: from its first task's start to its last task's end (stages overlap; 0 if none ran).
    timings = {stage: round(spans[stage][1] - spans[stage][0], 1) if stage in spans else 0.0
               for stage, _ in sweep.stages()}
    _remove_if_empty(root / "logs" / "%j")
    print()
    return final_report(root, describe(sweep), {"seconds": timings, "total_seconds": round(time.time() - started, 1)})


def _remove_if_empty(folder: Path) -> None:
    """submitit's local job controller creates its folder pattern literally (logs/%j) and leaves it empty;
    the jobs' own folders are logs/<job id>."""
    try:
        folder.rmdir()
    except OSError:  # absent, or not empty: leave it
        pass


class _NoCancel:
    requested = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


_PROBE = ("import sys, hpc_ncsn, submitit, torch; "
          "print('PROBE', hpc_ncsn.__version__, hpc_ncsn.__file__, torch.__version__, sys.executable)")


def check_python(command: str, timeout_s: float = 300) -> str:
    """`--python COMMAND` (e.g. 'apptainer exec --nv img.sif python') starts a Python that imports this
    version of hpc_ncsn, submitit and torch: run it once here, before anything is submitted. Returns a
    description of what it found; ConfigError naming the problem and the fix otherwise."""
    from .. import __version__

    words = shlex.split(command)
    if not words:
        raise ConfigError("--python '': give the command that starts Python in each task, e.g. "
                          "--python 'apptainer exec --nv hpc_ncsn.sif python'")
    if shutil.which(words[0]) is None:
        raise ConfigError(f"--python {command!r}: {words[0]!r} is not a command on this machine; check its "
                          "spelling, or load its module first (e.g. module load apptainer)")
    try:
        probe = subprocess.run([*words, "-c", _PROBE], capture_output=True, text=True, timeout=timeout_s,
                               stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"--python {command!r} did not start Python within {timeout_s:.0f} s") from None
    found = [line.split(" ", 4)[1:] for line in probe.stdout.splitlines() if line.startswith("PROBE ")]
    if probe.returncode != 0 or not found:
        said = (probe.stderr.strip() or probe.stdout.strip() or f"exit status {probe.returncode}").splitlines()[-1]
        raise ConfigError(f"--python {command!r} cannot run the tasks ({said}); it must start a Python that imports "
                          "hpc_ncsn, submitit and torch: install the project in the image (docs/sweeps.md, Containers) "
                          "or point PYTHONPATH at this checkout")
    version, where, torch_version, executable = found[-1]
    if version != __version__:
        raise ConfigError(f"--python {command!r} imports hpc_ncsn {version} from {where}, but this launcher is "
                          f"hpc_ncsn {__version__}: tasks and launcher must run the same version; rebuild the image "
                          "or point PYTHONPATH at this checkout")
    return f"{command} → {executable}: hpc_ncsn {version} ({where}), torch {torch_version}"
