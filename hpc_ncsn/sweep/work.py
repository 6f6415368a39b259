"""What a sweep's job does: the body of each task record (hpc_ncsn.sweep.tasks), dispatched by its type.

`job(root, task, options)` is what every submitted job runs, on Slurm, on this machine
or in this process: it matches torch's threads to the allocation, records the task's
status (hpc_ncsn.sweep.status), and on USR2 requeues itself through
hpc_ncsn.preemption.requeue, at most `options.max_requeues` times. On SIGTERM (scancel,
--cancel) it stops without requeueing. A job asks the scheduler nothing about itself
beyond its own environment (SLURM_JOB_ID, SLURM_RESTART_COUNT); the launcher reconciles
the whole sweep with the queue.

`run(root, task)` does the work and is safe to run again: a training resumes from its
newest checkpoint, a sampling keeps its valid shards, the table is rewritten. A cell that
shares an earlier cell's samples (SampleTask.same_as) draws and scores nothing: its job
says so and records done, and every reader of the cell reads that cell's folder.

Importing this module does not import torch; the bodies import what they need.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .. import preemption
from ..config import config_from_dict
from ..distributed import barrier, is_main_process, process_group, setup_process
from . import scheduler
from .aggregate import aggregate
from .status import TaskStatus, observe, read_status, run_tracked, write_status
from .tasks import METRICS_FILE, AggregateTask, AnchorTask, NotRun, SampleTask, Task, TrainTask

__all__ = ["JobOptions", "job", "run"]


@dataclass(frozen=True)
class JobOptions:
    """What a job needs to know besides its task: its share of the CPUs (local), the requeue cap, and the
    name its Slurm job takes in squeue (`<name>:<task>`; None: keep submitit's)."""

    cpus: int | None = None
    max_requeues: int = 5
    name: str | None = None


def job(root: str, task: Task, options: JobOptions):
    """What a submitted job runs: the task, with its status recorded; requeued on USR2 (up to the cap)."""
    import submitit

    preemption.install()  # before anything slow: a scancel during start-up must not be lost
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:  # one process per GPU (or CPU slot): torch.distributed's variables for Accelerate
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    threads = setup_process(options.cpus)  # recorded in the task's status
    on_slurm = bool(os.environ.get("SLURM_JOB_ID"))
    if on_slurm and is_main_process() and options.name:
        scheduler.rename(env.job_id, f"{options.name}:{task.name}")  # squeue tells the cells apart
    restarts, cap = int(os.environ.get("SLURM_RESTART_COUNT", "0")), options.max_requeues
    too_many = (f"requeued {restarts} times without finishing (--max-requeues {cap}); give the job more time "
                "(--time-train, --time-sample) or save more often (train.checkpoint_every), then rerun the sweep")

    def attempt_check(previous: TaskStatus | None) -> str | None:
        return too_many if on_slurm and restarts > cap else None

    try:
        log = str(env.paths.stderr)  # the .err file: the progress bars are there
    except KeyError:  # submitit's DebugExecutor: the task prints to this console, there is no job folder
        log = None
    try:
        return run_tracked(Path(root), task, lambda: run(Path(root), task), job_id=env.job_id,
                           scheduler="slurm" if on_slurm else None, log=log, threads=threads,
                           attempt_check=attempt_check, note=task.shares() if isinstance(task, SampleTask) else None)
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


def run(root: Path, task: Task):
    """Do the task's work (resumable); what its body returns."""
    bodies = {TrainTask: _train, SampleTask: _sample, AnchorTask: _anchor, AggregateTask: _aggregate}
    return bodies[type(task)](Path(root), task)


def _train(root: Path, task: TrainTask) -> Path:
    from ..train import train

    train_section = task.config["train"]  # the trackers group the sweep's runs by its folder, unless told otherwise
    group = train_section.get("log_group") or root.resolve().name
    return train(config_from_dict({**task.config, "train": {**train_section, "log_group": group}}))


def _aggregate(root: Path, task: AggregateTask) -> dict:
    return aggregate(root)


def _sample(root: Path, task: SampleTask) -> dict:
    from ..samples.generate import generate

    if task.shares():  # an earlier cell of the sweep draws and scores these very samples: nothing to wait for
        print(f"cell {task.name} {task.shares()}: it draws and scores nothing", flush=True)
        return {"same_as": str(task.same_as)}
    training = read_status(root, task.train)
    # Its training's job has left the queue (the sample stage starts after it), so its own record decides.
    state, detail = observe(training, None)
    if state != "done":
        said = "never ran" if training is None else f"is {state}" + (f": {detail}" if detail else "")
        raise NotRun(f"cell {task.name} samples the network of training task {task.train.name}, which "
                     f"{said}; rerun the sweep to train it first", "cancelled" if state == "cancelled" else "failed")
    generate(task.train.folder, task.folder, overrides=task.sampling_overrides(), seed=task.seed)
    report = _score(task.folder, task.config)
    score_over_training(task)
    return report


def score_over_training(task: SampleTask) -> list[dict]:
    """With train.eval_every: draw train.eval_samples samples of the cell's sampler from each EMA snapshot
    of its training and score them (resumable like the cell); write fid_vs_step.json. Rank 0's list."""
    from ..evaluate.curve import score_snapshots

    train = task.config["train"]
    if not train["eval_every"]:
        return []
    config = config_from_dict(task.config)
    curve = score_snapshots(task.train.folder, task.over_training, config.data, config.evaluate,
                            num_samples=train["eval_samples"], overrides=task.sampling_overrides(), seed=task.seed)
    return curve if is_main_process() else []


def _anchor(root: Path, task: AnchorTask) -> dict:
    settings = task.config["generate"]
    if task.kind == "real":
        from ..samples.real import write_real_shards

        process_group()  # one writer (rank 0); the others wait for the folder before scoring their shards
        if is_main_process():
            write_real_shards(config_from_dict(task.config).data, task.folder, settings["num_samples"],
                              settings["shard_size"], split=task.held_out_split(), seed=task.seed)
        barrier()
    else:
        from ..samples.generate import generate
        from ..train import train

        train(config_from_dict(task.config, ["train.steps=0", f"train.out_dir={task.network}"]))
        generate(task.network, task.folder, seed=task.seed)
    return _score(task.folder, task.config)


def _score(folder: Path, config: dict) -> dict:
    """Evaluate a cell's sample folder with its config's evaluate section; rank 0's report (others: {})."""
    from ..evaluate.evaluator import evaluate

    config = config_from_dict(config)
    report = evaluate(folder, config.data, config.evaluate, out=folder / METRICS_FILE)
    return report if is_main_process() else {}
