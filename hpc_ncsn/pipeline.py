"""The sweep's task bodies: train one network, sample and score one cell, aggregate the table.

Each body takes the sweep folder and a task name from grid.plan, records its
state in status/<stage>/<task>.json (rank 0 only), and is safe to run again: a
training resumes from its newest checkpoint, a sampling keeps its valid shards.
launch/sweep.py submits these with submitit; they never import it.
"""

from __future__ import annotations

import json
from pathlib import Path

from .grid import Plan, SampleTask, SweepSpec, TrainTask, plan, read_status, run_tracked

__all__ = ["STAGES", "aggregate_task", "run_task", "sample_task", "train_task"]


def _plan(root: Path) -> Plan:
    return plan(SweepSpec.load(root), Path(root))


def _find(tasks: list, name: str, stage: str):
    for task in tasks:
        if task.name == name:
            return task
    raise KeyError(f"the sweep has no {stage} task {name!r}; its tasks: {', '.join(t.name for t in tasks)}")


def train_task(root: Path, name: str) -> Path:
    """Train (or resume) the network of training task `name`; returns its run folder."""
    from .config import config_from_dict
    from .training import train

    sweep = _plan(root)
    task: TrainTask = _find(sweep.train, name, "train")
    return train(config_from_dict(sweep.spec.base, task.overrides))


def sample_task(root: Path, name: str) -> dict:
    """Draw the cell's samples into shards (resumable) and score them; returns the metrics report."""
    from .distributed import process_group
    from .features import cache_dir
    from .generate import generate
    from .metrics import evaluate, extractor_for
    from .speed import NetworkSpeed

    sweep = _plan(root)
    task: SampleTask = _find(sweep.sample, name, "sample")
    training = read_status(sweep.root, "train", task.train)
    if training is None or training.state != "done":
        state = "never ran" if training is None else f"is {training.state}" + (
            f": {training.error}" if training.error else "")
        raise RuntimeError(f"cell {name} samples the network of training task {task.train}, which {state}; "
                           "rerun the sweep to train it first")
    train_folder = _find(sweep.train, task.train, "train").folder
    config = sweep.spec.cell_config(task.cell)  # same data as its training run (part of the training identity)
    settings = config.eval
    generate(train_folder, task.folder, num_samples=settings.num_samples, shard_size=settings.shard_size,
             batch_size=settings.sample_batch_size, seed=task.cell.seed, noise_overrides=task.noise_overrides,
             speed=NetworkSpeed.from_eval(settings))
    report = evaluate(task.folder, config.data, extractor_name=extractor_for(config.data.name, settings.extractor),
                      weights_path=Path(settings.weights) if settings.weights else None,
                      cache_dir=cache_dir() / "reference", batch_size=settings.batch_size,
                      out=task.folder / "metrics.json")
    rank, _, _ = process_group()
    return report if rank == 0 else {}


def aggregate_task(root: Path, name: str = "table") -> dict:
    from .aggregate import aggregate

    return aggregate(Path(root))


STAGES = {"train": train_task, "sample": sample_task, "aggregate": aggregate_task}


def run_task(stage: str, root: Path, name: str, *, job_id: str | None = None, log: str | None = None):
    """Run one task with its state recorded (what a submitted job calls)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    return run_tracked(Path(root), stage, name, lambda: STAGES[stage](Path(root), name), job_id=job_id, log=log)


def describe(root: Path) -> list[dict]:
    """Every task of the sweep with its recorded state (for the status view)."""
    sweep = _plan(root)
    rows = []
    for stage, tasks in (("train", sweep.train), ("sample", sweep.sample), ("aggregate", [None])):
        for task in tasks:
            name = task.name if task is not None else "table"
            status = read_status(sweep.root, stage, name)
            rows.append({"stage": stage, "task": name, "state": status.state if status else "pending",
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


def dumps(rows: list[dict]) -> str:
    return json.dumps(rows, indent=2)
