"""Run a sweep on Slurm: the stages as dependent job arrays (submitit), waiting for them, cancelling them.

The driver takes a `SlurmOptions` record (what lands in the sbatch scripts), built once by
the sweep command from its flags. Every poll of the whole sweep asks Slurm once
(`scheduler.queue()`: one squeue) and reconciles every task's recorded status with it;
the jobs themselves never query the scheduler. A query Slurm does not answer is retried
(scheduler.patient_queue), never read as "nothing is live"; a task whose job left the queue
without a word is recorded `cancelled` or `lost` once (status.record_vanished).
`submitted.json` keeps every submission (the array ids and which job each task was),
rewritten after each sbatch, so a rerun attaches to live jobs instead of submitting again
and an interrupted launcher leaves no job unrecorded.
"""

from __future__ import annotations

import json
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..config import ConfigError
from ..errors import UserError
from ..files import atomic_write
from ..locks import FolderLock, running, signal_holder
from . import scheduler
from .limits import Limits, array_plan
from .plan import Plan
from .status import describe, mark_cancelled, read_status, record_vanished, summary, todo, vanished
from .tasks import AggregateTask, SampleTask, TrainTask
from .work import JobOptions, job

__all__ = ["LOWEST", "SlurmOptions", "cancel", "check_submission", "live_jobs", "observed_queue", "sbatch_text",
           "slurm_parameters", "submit", "submitted_tasks", "wait"]

SUBMITTED = "submitted.json"


@dataclass(frozen=True)
class SlurmOptions:
    """Where and how the jobs of a Slurm sweep run (the sweep command's `--cluster slurm` flags)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_train: int = 24 * 60  # minutes
    time_sample: int = 4 * 60
    nodes: int = 1  # per training task
    sample_nodes: int = 1
    gpus_per_node: int = 0  # 0: CPU-only jobs
    tasks_per_node: int | None = None  # default: one per GPU, else 1
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    signal_delay_s: int = 120
    array_parallelism: int = 64
    sbatch: tuple[str, ...] = ()  # KEY=VALUE: any other sbatch option
    setup: tuple[str, ...] = ()  # lines run before each task
    max_requeues: int = 5
    python: str | None = None  # the command that starts Python in each task (default: this interpreter)
    max_array_size: int | None = None  # Slurm's MaxArraySize (default: scontrol show config's; hpc_ncsn.sweep.limits)
    max_submit_jobs: int | None = None  # the user's MaxSubmitJobs (default: unknown; MaxJobCount still applies)

    def __post_init__(self):
        for key, low in LOWEST.items():
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(f"--{key.replace('_', '-')} {value!r}: must be an integer >= {low}")
        for flag in ("partition", "account", "qos", "constraint"):
            if getattr(self, flag) is not None:
                _directive_value(f"--{flag}", getattr(self, flag), plain=True)
        for line in self.setup:
            if any(c in line for c in "\n\r"):
                raise ConfigError(f"--setup {line!r}: give each command as its own --setup (no line breaks)")
        _sbatch_extra(self.sbatch)  # a malformed --sbatch is refused when the record is built


# The smallest value of each number a job script or a task reads (None: Slurm's default).
LOWEST = {"time_train": 1, "time_sample": 1, "nodes": 1, "sample_nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1,
           "cpus_per_task": 1, "mem_gb": 1, "signal_delay_s": 0, "array_parallelism": 1, "max_requeues": 0}
# What sbatch's reading of a `#SBATCH` line takes as the end of an argument or a quote, or drops (a backslash
# escapes the next character, even inside the quotes submitit puts around a value); a line break ends the line.
_BREAKS_A_DIRECTIVE = frozenset(" \t#\"'\\")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_./@%+=:,~-]+")  # written unquoted into the job script's srun line


def _directive_value(flag: str, value: str, plain: bool = False) -> str:
    """`value` when it stays one argument of its `#SBATCH` line: never a line break or other control character;
    with `plain` (a partition, account, QOS or constraint: Slurm names), no space, '#', quote or backslash either.
    ConfigError naming `flag` otherwise (the value shown at most 60 characters long)."""
    shown = repr(value) if len(value) <= 60 else repr(value[:60]) + "…"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"{flag} {shown}: a line break or control character would end its line of the job script "
                          "and start another; pass the value on one line")
    if "\\" in value or (plain and _BREAKS_A_DIRECTIVE.intersection(value)):
        what = "a space, '#', quote or backslash" if plain else "a backslash"
        raise ConfigError(f"{flag} {shown}: {what} would end or change the value in the job script's #SBATCH "
                          "line; pass the name as sinfo/sacctmgr show it")
    return value


def _sbatch_extra(items: list[str]) -> dict:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--sbatch {item!r}: write KEY=VALUE (an sbatch long option without the dashes)")
        _directive_value("--sbatch", item, plain=False)
        _directive_value("--sbatch", key, plain=True)
        extra[key.replace("-", "_")] = True if value.lower() == "true" else value
    return extra


def slurm_parameters(options: SlurmOptions, stage: str, sweep_name: str = "sweep") -> dict:
    """submitit SlurmExecutor parameters of one stage."""
    resources = {  # nodes, GPUs per node, time limit in minutes
        TrainTask.stage: (options.nodes, options.gpus_per_node, options.time_train),
        SampleTask.stage: (options.sample_nodes, options.gpus_per_node, options.time_sample),
        AggregateTask.stage: (1, 0, 30),
    }
    nodes, gpus, minutes = resources[stage]
    tasks = 1 if stage == AggregateTask.stage else (options.tasks_per_node or max(gpus, 1))
    params = {"job_name": _directive_value("the sweep folder's name", f"ncsn:{sweep_name}:{stage}"), "time": minutes, "nodes": nodes, "ntasks_per_node": tasks,
              "signal_delay_s": options.signal_delay_s, "array_parallelism": options.array_parallelism,
              "partition": options.partition, "account": options.account, "qos": options.qos,
              "constraint": options.constraint, "cpus_per_task": options.cpus_per_task,
              "mem": f"{options.mem_gb}GB" if options.mem_gb else None, "gpus_per_node": gpus or None,
              "setup": list(options.setup) or None, "additional_parameters": _sbatch_extra(options.sbatch) or None}
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

    if not _PLAIN_PATH.fullmatch(str(root)):
        raise ConfigError(f"the sweep folder {str(root)[:200]!r} holds a character that submitit writes unquoted "
                          "into the job script (a space, quote, '$', ';', ...); put the sweep in a folder whose path "
                          "has only letters, digits and ._-+=@%:,~/")
    command = f"{python or shlex.quote(sys.executable)} -u -m submitit.core._submit {root / 'logs' / '%j'}"
    return _make_sbatch_string(command=command, folder=root / "logs" / "%j", map_count=count, **params)


def check_submission(root: Path, sweep: Plan, options: SlurmOptions, limits: Limits) -> None:
    """Ask Slurm (sbatch --test-only) whether it would take every stage's largest array; ConfigError naming why
    not. Refused first, without asking, where the sweep holds more jobs than the limits allow."""
    for stage, arrays, _ in array_plan([(stage, todo(root, tasks)) for stage, tasks in sweep.stages()], limits,
                                       options.array_parallelism):
        problem = scheduler.test_submission(sbatch_text(root, slurm_parameters(options, stage, root.name),
                                                        len(arrays[0]), options.python))
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
            arrays += jobs.get("arrays", [jobs["array"]])
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


def _stamped(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


def observed_queue(root: Path, sweep: Plan, patience_s: float,
                   say: Callable[[str], None] = _stamped) -> scheduler.Queue | None:
    """The queue of a sweep submitted to Slurm (one squeue, asked again while Slurm does not answer:
    scheduler.patient_queue; None for a sweep never submitted there), with the final
    state of every task whose job vanished without a word recorded (once; sacct only for jobs the controller
    has forgotten, where the cluster keeps accounting). `say` gets the retries and what was recorded."""
    latest, _ = submitted_tasks(root)
    if not latest:  # never submitted to Slurm (a local sweep, or nothing yet): nothing to ask
        return None
    queue = scheduler.patient_queue(patience_s, say=say)
    if queue is None:
        return None
    tasks = [task for _, stage_tasks in sweep.stages() for task in stage_tasks]
    jobs = [(task, latest.get(task.stage, {}).get(task.name)) for task in tasks]
    forgotten = [job for task, job in jobs if job not in queue.ended
                 and vanished(read_status(root, task), queue, job) is not None]
    queue.ended.update(scheduler.final_states(forgotten))
    for name in record_vanished(root, tasks, queue, latest):
        say(f"{name}: its job left the queue before the task started; recorded")
    return queue


def _record_submission(root: Path, history: list, entry: dict) -> None:
    """Rewrite submitted.json: the earlier submissions and this one as far as it got (atomically)."""
    atomic_write(root / SUBMITTED, json.dumps([*history, entry], indent=2) + "\n")


def submit(root: Path, sweep: Plan, options: SlurmOptions, limits: Limits, queued: int = 0) -> dict:
    """Submit the stages' unfinished tasks as dependent job arrays, each stage in as many arrays as `limits`
    need (hpc_ncsn.sweep.limits.array_plan; Refused before the first sbatch where the sweep and the `queued`
    jobs exceed them); returns {stage: {'array' (the first), 'arrays', 'tasks'}}. submitted.json records each
    array as soon as sbatch took it."""
    import submitit

    record = root / SUBMITTED
    history = json.loads(record.read_text()) if record.is_file() else []
    submitted, previous = {}, []
    entry = {"time": time.time(), "jobs": submitted}
    for stage, arrays, parallelism in array_plan([(stage, todo(root, tasks)) for stage, tasks in sweep.stages()],
                                                 limits, options.array_parallelism, queued):
        ids, tasks = [], {}
        for pending in arrays:
            executor = submitit.SlurmExecutor(folder=root / "logs" / "%j", python=options.python)
            params = slurm_parameters(options, stage, root.name) | {"array_parallelism": parallelism}
            if previous:  # afterany: a failed task must not block its siblings' later stages
                params["dependency"] = "afterany:" + ":".join(previous)
            executor.update_parameters(**params)
            job_options = JobOptions(max_requeues=options.max_requeues, name=params["job_name"])
            jobs = executor.map_array(job, [str(root)] * len(pending), pending, [job_options] * len(pending))
            ids.append(jobs[0].job_id.split("_")[0])
            tasks |= {task.name: j.job_id for task, j in zip(pending, jobs)}
            submitted[stage] = {"array": ids[0], "arrays": ids, "tasks": tasks}
            _record_submission(root, history, entry)  # before the next sbatch: a Ctrl-C there loses no job
        previous = ids
        print(f"[{stage}] submitted {'array' if len(ids) == 1 else 'arrays'} {', '.join(ids)}: {len(tasks)} task(s)",
              flush=True)
    return submitted


def wait(root: Path, sweep: Plan, poll_s: float, cancel_hint: str, patience_s: float = 600.0) -> list[dict]:
    """Until none of the sweep's jobs is queued or running: a one-line summary every `poll_s` seconds.
    Returns the final status rows; scheduler.Unanswered when Slurm did not answer for `patience_s` seconds."""
    latest, _ = submitted_tasks(root)
    last_line = 0.0
    while True:
        queue = observed_queue(root, sweep, patience_s)
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
    holder = FolderLock(root, "sweep", what="").holder()
    if holder and holder.get("cluster") == "local":  # signalled only if it is that very launcher, of this folder
        if holder.get("folder") == str(Path(root).resolve()) and signal_holder(holder, signal.SIGTERM):
            return f"sent SIGTERM to the local sweep (pid {holder['pid']}); its running tasks save and stop"
        if running(holder) is None:
            raise UserError(f"{root}: its local sweep runs on host {holder.get('host')} (pid {holder.get('pid')}); "
                            "run --cancel there")
    latest, arrays = submitted_tasks(root)
    if not latest:  # never submitted to Slurm: no job to ask about
        return "no job of this sweep is queued or running"
    queue = scheduler.queue()
    live = live_jobs(root, sweep, queue)
    if not live:
        return "no job of this sweep is queued or running"
    problem = scheduler.cancel(sorted({job_id.split("_")[0] for job_id in live}))
    if problem:
        raise scheduler.Refused(f"scancel refused: {problem}")
    waiting = [task for stage, tasks in sweep.stages() for task in tasks
               if latest.get(stage, {}).get(task.name) in live
               and queue[latest[stage][task.name]][0] != "RUNNING"]
    mark_cancelled(root, waiting, "cancelled before it started (--cancel)")
    return (f"cancelled {len(live)} job(s) ({', '.join(sorted(set(j.split('_')[0] for j in live)))}); running "
            f"tasks save and record 'cancelled', {len(waiting)} waiting task(s) recorded 'cancelled'; "
            "rerun the sweep to resume")
