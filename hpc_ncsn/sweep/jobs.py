"""Where the sweep's tasks run: submitit jobs on Slurm, on this machine, or in this process.

`job(root, task, options)` is what every submitted job runs: it matches torch's threads
to the allocation, records the task's status (hpc_ncsn.sweep.status), and on USR2
requeues itself through hpc_ncsn.preemption.requeue, at most `--max-requeues` times.
On SIGTERM (scancel, --cancel) it stops without requeueing.

`run_here` runs the stages one after the other with submitit's LocalExecutor (each
task its own process) or DebugExecutor (this process); `submit` sends them to Slurm
as dependent job arrays, `wait` follows them, `cancel` stops them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .. import preemption
from ..config import ConfigError
from ..distributed import is_main_process, setup_process, visible_cpus
from ..files import atomic_write
from ..locks import FolderLock
from . import scheduler
from .plan import Plan
from .status import NOT_DONE, TaskStatus, describe, read_status, run_tracked, summary, write_status
from .tasks import AggregateTask, SampleTask, Task, TrainTask

__all__ = ["cancel", "check_python", "job", "live_jobs", "run_here", "sbatch_text", "slurm_parameters", "submit",
           "submitted_tasks", "todo", "wait"]

SUBMITTED = "submitted.json"


def todo(sweep: Plan, tasks: list[Task]) -> list[Task]:
    """The tasks that are not done yet (the table is always rewritten)."""
    return [task for task in tasks
            if isinstance(task, AggregateTask) or (status := read_status(sweep.root, task)) is None
            or status.state != "done"]


def job(root: str, task: Task, options: dict):
    """What a submitted job runs: the task, with its status recorded; requeued on USR2 (up to the cap)."""
    import submitit

    preemption.install()  # before anything slow: a scancel during start-up must not be lost
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:  # one process per GPU (or CPU slot): torch.distributed's variables for Accelerate
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    setup_process(options.get("cpus"))
    on_slurm = bool(os.environ.get("SLURM_JOB_ID"))
    if on_slurm and is_main_process() and options.get("name"):
        scheduler.rename(env.job_id, f"{options['name']}:{task.name}")  # squeue tells the cells apart
    restarts, cap = int(os.environ.get("SLURM_RESTART_COUNT", "0")), options.get("max_requeues", 5)
    too_many = (f"requeued {restarts} times without finishing (--max-requeues {cap}); give the job more time "
                "(--time-train, --time-sample) or save more often (train.checkpoint_every), then rerun the sweep")

    def attempt_check(previous: TaskStatus | None) -> str | None:
        return too_many if on_slurm and restarts > cap else None

    try:
        log = str(env.paths.stderr)  # the .err file: the progress bars are there
    except KeyError:  # submitit's DebugExecutor: the task prints to this console, there is no job folder
        log = None
    try:
        return run_tracked(Path(root), task, lambda: task.run(Path(root)), job_id=env.job_id,
                           scheduler="slurm" if on_slurm else None, log=log, attempt_check=attempt_check)
    except preemption.Preempted as stop:
        if not (on_slurm and stop.requeue):
            raise
        if is_main_process():
            if restarts >= cap:
                status = read_status(Path(root), task)
                status.state, status.error = "failed", too_many
                write_status(Path(root), status)
                raise RuntimeError(too_many) from None
            problem = preemption.requeue(env.job_id)  # ARRAY_TASK form for array tasks
            print(f"{stop}; requeueing {env.job_id}" + (f" (scontrol: {problem})" if problem else ""), flush=True)
        sys.exit(-1)  # no result: submitit waits for the requeued run


# On this machine -------------------------------------------------------------------------------

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


def _mark_cancelled(root: Path, tasks: list[Task], why: str) -> None:
    for task in tasks:
        previous = read_status(root, task)
        if previous is None or previous.state not in ("done", "running"):
            write_status(root, TaskStatus(task.stage, task.name, "cancelled", started=time.time(),
                                          finished=time.time(), error=why,
                                          attempts=previous.attempts if previous else 0))


def _run_jobs(executor, root: Path, tasks: list[Task], parallel: int, options: dict,
              cancel: _LocalCancel | None) -> dict[str, str]:
    """Run `tasks` with a submitit executor, up to `parallel` at a time (the next one starts as soon as one
    ends); {task name: error} of those not done."""
    from submitit.local.debug import DebugJob

    failures, queue, running = {}, list(tasks), []
    while queue or running:
        while queue and len(running) < parallel and not (cancel is not None and cancel.requested):
            task = queue.pop(0)
            submitted = executor.submit(job, str(root), task, options)
            running.append((task, submitted))
            print(f"[{task.stage}] {task.name}: job {submitted.job_id}, log {submitted.paths.stderr}", flush=True)
        if cancel is not None:
            cancel.running = [int(j.job_id) for _, j in running if j.job_id.isdigit()]
            if cancel.requested and queue:
                _mark_cancelled(root, queue, "the sweep was cancelled before it started")
                failures.update({task.name: "cancelled" for task in queue})
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
                failures[task.name] = (status.error if status is not None and status.error else
                                       text.splitlines()[-1] if text else repr(error))
                state = status.state if status is not None and status.state == "cancelled" else "failed"
                print(f"[{task.stage}] {task.name}: {state.upper()} ({failures[task.name]}); log "
                      f"{submitted.paths.stderr}", flush=True)
    return failures


def local_parallel(requested: int | None) -> int:
    """Tasks at once for --cluster local: as asked, else one per CPU (at most 8) on a machine without a GPU
    and 1 with one (the tasks would share it).

    On a CPU, one thread per task beats all threads on one task: a small network's operators do not
    split well over threads, and a single-threaded task loses only its share of the cores to another
    program, where a task with an OpenMP team slows down several times (each team waits for its
    slowest thread). Measured on the README's 2-core machine: see its Sweeps section.
    """
    if requested is not None:
        return max(1, requested)
    import torch

    return 1 if torch.cuda.is_available() else min(visible_cpus(), 8)


def run_here(root: Path, sweep: Plan, cluster: str, *, parallel: int | None = None, timeout_min: int = 24 * 60,
             max_requeues: int = 5, python: str | None = None) -> int:
    """--cluster local or debug: the stages one after the other on this machine; prints the table.

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
        options = {"cpus": max(1, visible_cpus() // parallel), "max_requeues": max_requeues}
    else:
        executor = submitit.DebugExecutor(folder=root / "logs" / "%j")
        parallel, options = 1, {"max_requeues": max_requeues}
    started = time.time()
    timings, failures = {}, {}
    with _LocalCancel() if cluster == "local" else _NoCancel() as cancel:
        for stage, tasks in sweep.stages():
            t0 = time.time()
            pending = todo(sweep, tasks)
            if pending:
                failures[stage] = _run_jobs(executor, root, pending, parallel, options,
                                            cancel if cluster == "local" else None)
            timings[stage] = round(time.time() - t0, 1)
    _remove_if_empty(root / "logs" / "%j")
    print()
    print((root / "table.md").read_text() if (root / "table.md").is_file() else "(no table)")
    print(json.dumps({"sweep": str(root), "seconds": timings, "total_seconds": round(time.time() - started, 1),
                      "failed": {stage: sorted(names) for stage, names in failures.items() if names}}))
    return 1 if any(failures.values()) else 0


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


# On Slurm ----------------------------------------------------------------------------------------

def _sbatch_extra(items: list[str]) -> dict:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--sbatch {item!r}: write KEY=VALUE (an sbatch long option without the dashes)")
        if any(c in item for c in "\n\r"):
            raise ConfigError(f"--sbatch {item!r}: a value may not contain a line break (it would become its own "
                              "line of the job script)")
        extra[key.replace("-", "_")] = True if value.lower() == "true" else value
    return extra


def slurm_parameters(args, stage: str, sweep_name: str = "sweep") -> dict:
    """submitit SlurmExecutor parameters of one stage."""
    resources = {  # nodes, GPUs per node, time limit in minutes
        TrainTask.stage: (args.nodes, args.gpus_per_node, args.time_train),
        SampleTask.stage: (args.sample_nodes, args.gpus_per_node, args.time_sample),
        AggregateTask.stage: (1, 0, 30),
    }
    nodes, gpus, minutes = resources[stage]
    for line in args.setup:
        if any(c in line for c in "\n\r"):
            raise ConfigError(f"--setup {line!r}: give each command as its own --setup (no line breaks)")
    tasks = 1 if stage == AggregateTask.stage else (args.tasks_per_node or max(gpus, 1))
    params = {"job_name": f"ncsn:{sweep_name}:{stage}", "time": minutes, "nodes": nodes, "ntasks_per_node": tasks,
              "signal_delay_s": args.signal_delay_s, "array_parallelism": args.array_parallelism,
              "partition": args.partition, "account": args.account, "qos": args.qos, "constraint": args.constraint,
              "cpus_per_task": args.cpus_per_task, "mem": f"{args.mem_gb}GB" if args.mem_gb else None,
              "gpus_per_node": gpus or None, "setup": list(args.setup) or None,
              "additional_parameters": _sbatch_extra(args.sbatch) or None}
    return {key: value for key, value in params.items() if value is not None}


def sbatch_text(root: Path, params: dict, count: int, python: str | None = None) -> str:
    """The sbatch script submitit writes for an array of `count` tasks with `params`, each started by `python`
    (a command line; default: this interpreter), without Slurm.

    submitit has no public way to render its script without submitting it; its executor
    renders it with submitit.slurm.slurm._make_sbatch_string, which this calls.
    tests/test_sweep_plan.py pins the text (golden test), so a submitit change that
    alters it shows there.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    command = f"{python or shlex.quote(sys.executable)} -u -m submitit.core._submit {root / 'logs' / '%j'}"
    return _make_sbatch_string(command=command, folder=root / "logs" / "%j", map_count=count, **params)


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
                          "hpc_ncsn, submitit and torch: install the project in the image (README, Containers) "
                          "or point PYTHONPATH at this checkout")
    version, where, torch_version, executable = found[-1]
    if version != __version__:
        raise ConfigError(f"--python {command!r} imports hpc_ncsn {version} from {where}, but this launcher is "
                          f"hpc_ncsn {__version__}: tasks and launcher must run the same version; rebuild the image "
                          "or point PYTHONPATH at this checkout")
    return f"{command} → {executable}: hpc_ncsn {version} ({where}), torch {torch_version}"


def check_submission(root: Path, sweep: Plan, args) -> None:
    """Ask Slurm (sbatch --test-only) whether it would take every stage's array; ConfigError naming why not."""
    for stage, tasks in sweep.stages():
        problem = scheduler.test_submission(sbatch_text(root, slurm_parameters(args, stage, root.name), len(tasks),
                                                        args.python))
        if problem:
            raise scheduler.Refused(f"Slurm refuses the {stage} jobs: {problem}; check --partition, --account, "
                                    "--qos, --constraint and the resources (nothing was submitted or written)")


def submitted_tasks(root: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    """({stage: {task name: job id}} of the latest submission of each task, every array id ever submitted)."""
    record = root / SUBMITTED
    latest: dict[str, dict[str, str]] = {}
    arrays = []
    for submission in json.loads(record.read_text()) if record.is_file() else []:
        for stage, jobs in submission["jobs"].items():
            latest.setdefault(stage, {}).update(jobs["tasks"])
            arrays.append(jobs["array"])
    return latest, arrays


LIVE = ("pending", "running", "preempted")


def live_jobs(root: Path, sweep: Plan, queue: dict | None) -> list[str]:
    """The sweep's job ids that are queued or running for a task that is not finished (a job that recorded its
    task's final state and is only leaving the queue does not count)."""
    if not queue:
        return []
    latest, _ = submitted_tasks(root)
    return [row["job_id"] for row in describe(sweep, queue, latest) if row["state"] in LIVE
            and row["job_id"] in queue]


def submit(root: Path, sweep: Plan, args) -> dict:
    """Submit the stages' unfinished tasks as dependent job arrays; returns {stage: {'array', 'tasks'}}."""
    import submitit

    submitted, previous = {}, None
    for stage, tasks in sweep.stages():
        pending = todo(sweep, tasks)
        if not pending:
            continue
        executor = submitit.SlurmExecutor(folder=root / "logs" / "%j", python=args.python)
        params = slurm_parameters(args, stage, root.name)
        if previous is not None:  # afterany: a failed task must not block its siblings' later stages
            params["dependency"] = f"afterany:{previous}"
        executor.update_parameters(**params)
        options = {"max_requeues": args.max_requeues, "name": params["job_name"]}
        jobs = executor.map_array(job, [str(root)] * len(pending), pending, [options] * len(pending))
        previous = jobs[0].job_id.split("_")[0]
        submitted[stage] = {"array": previous, "tasks": {task.name: j.job_id for task, j in zip(pending, jobs)}}
        print(f"[{stage}] submitted array {previous}: {len(pending)} task(s)", flush=True)
    record = root / SUBMITTED
    history = json.loads(record.read_text()) if record.is_file() else []
    history.append({"time": time.time(), "jobs": submitted})
    atomic_write(record, json.dumps(history, indent=2) + "\n")
    return submitted


def wait(root: Path, sweep: Plan, poll_s: float, cancel_hint: str) -> list[dict]:
    """Until none of the sweep's jobs is queued or running: a one-line summary every `poll_s` seconds.
    Returns the final status rows."""
    latest, _ = submitted_tasks(root)
    last_line = 0.0
    while True:
        queue = scheduler.queue()
        rows = describe(sweep, queue, latest)
        live = [row["job_id"] for row in rows if row["state"] in LIVE and queue and row["job_id"] in queue]
        if not live:
            return rows
        if time.time() - last_line >= poll_s:
            print(f"{time.strftime('%H:%M:%S')} {summary(rows)}; {len(live)} job(s) live; cancel: {cancel_hint}",
                  flush=True)
            last_line = time.time()
        time.sleep(min(poll_s, 5.0))


def cancel(root: Path, sweep: Plan) -> str:
    """Stop the sweep's live jobs (Slurm: scancel; this machine: SIGTERM to the launcher); what was done."""
    lock = FolderLock(root, "sweep", what="")
    holder = lock.holder()
    if holder and holder.get("what", "").startswith("launch/sweep.py --cluster local") and not lock.stale(holder):
        os.kill(int(holder["pid"]), signal.SIGTERM)
        return f"sent SIGTERM to the local sweep (pid {holder['pid']}); its running tasks save and stop"
    queue = scheduler.queue()
    latest, arrays = submitted_tasks(root)
    live = live_jobs(root, sweep, queue)
    if not live:
        return "no job of this sweep is queued or running"
    problem = scheduler.cancel(sorted({job_id.split("_")[0] for job_id in live}))
    if problem:
        raise scheduler.Refused(f"scancel refused: {problem}")
    waiting = [task for stage, tasks in sweep.stages() for task in tasks
               if latest.get(stage, {}).get(task.name) in live
               and queue[latest[stage][task.name]][0] != "RUNNING"]
    _mark_cancelled(root, waiting, "cancelled before it started (--cancel)")
    return (f"cancelled {len(live)} job(s) ({', '.join(sorted(set(j.split('_')[0] for j in live)))}); running "
            f"tasks save and record 'cancelled', {len(waiting)} waiting task(s) recorded 'cancelled'; "
            "rerun the sweep to resume")


def unfinished(rows: list[dict]) -> list[str]:
    return sorted(f"{row['stage']}/{row['task']}" for row in rows if row["state"] in NOT_DONE)
