"""The sweep's tasks: train one network, sample and score one cell, aggregate the table.

A task is a small frozen object that carries everything its job needs (its resolved
config, its folders, the training it depends on); a submitted job receives the object
itself and never re-plans the sweep. `run(root)` does the work and is safe to run
again: a training resumes from its newest checkpoint, a sampling keeps its valid
shards, the table is rewritten. The stage names live here only (`STAGES`).

Importing this module does not import torch; the bodies import what they need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union

__all__ = ["STAGES", "AggregateTask", "NotRun", "SampleTask", "Task", "TrainTask"]


class NotRun(RuntimeError):
    """The task cannot run because of the task it depends on; `state` is what it records (failed or cancelled)."""

    def __init__(self, message: str, state: str):
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class TrainTask:
    """Train (or resume) one network in `folder`; `config` is its resolved config (train.out_dir = folder)."""

    stage: ClassVar[str] = "train"
    name: str
    folder: Path
    config: dict

    def run(self, root: Path) -> Path:
        from ..config import config_from_dict
        from ..train import train

        return train(config_from_dict(self.config))

    def progress(self, root: Path) -> dict:
        """Steps logged so far (metrics.jsonl's last complete line) out of train.steps."""
        from ..files import read_jsonl

        records = read_jsonl(self.folder / "metrics.jsonl")
        return {"done": records[-1]["step"] if records else 0, "total": self.config["train"]["steps"],
                "unit": "steps"}


@dataclass(frozen=True)
class SampleTask:
    """Draw one cell's samples from its training's EMA weights into shards (resumable), then score them."""

    stage: ClassVar[str] = "sample"
    name: str
    folder: Path
    config: dict  # the cell's resolved config: its sampler, generate and evaluate sections are used here
    train: TrainTask
    seed: int
    group: tuple[tuple[str, Any], ...]  # the cell's axes without the seed: its row of the table

    def sampling_overrides(self) -> tuple[str, ...]:
        """The cell's sampler and generate sections, as overrides of its training run's config."""
        import json

        return tuple(f"{section}.{key}={value if isinstance(value, str) else json.dumps(value)}"
                     for section in ("sampler", "generate") for key, value in self.config[section].items())

    def progress(self, root: Path) -> dict:
        """Shards written so far out of the cell's shards."""
        settings = self.config["generate"]
        total = -(-settings["num_samples"] // settings["shard_size"])
        return {"done": len(list(self.folder.glob("shard-*.h5"))) if self.folder.is_dir() else 0,
                "total": total, "unit": "shards"}

    def run(self, root: Path) -> dict:
        from ..config import config_from_dict
        from ..distributed import is_main_process
        from ..evaluate.evaluator import evaluate
        from ..evaluate.extractors import extractor_for
        from ..files import cache_dir
        from ..samples.generate import generate
        from .scheduler import queue
        from .status import observe, read_status

        training = read_status(root, self.train)
        state, detail = observe(training, queue())
        if state != "done":
            said = "never ran" if training is None else f"is {state}" + (f": {detail}" if detail else "")
            raise NotRun(f"cell {self.name} samples the network of training task {self.train.name}, which "
                         f"{said}; rerun the sweep to train it first", "cancelled" if state == "cancelled" else "failed")
        config = config_from_dict(self.config)
        generate(self.train.folder, self.folder, overrides=self.sampling_overrides(), seed=self.seed)
        settings = config.evaluate
        report = evaluate(self.folder, config.data, extractor_name=extractor_for(config.data.name, settings.extractor),
                          weights_path=Path(settings.weights) if settings.weights else None,
                          cache_dir=cache_dir() / "reference", batch_size=settings.batch_size,
                          out=self.folder / "metrics.json", reference_split=settings.reference,
                          reference_size=settings.reference_size)
        return report if is_main_process() else {}


@dataclass(frozen=True)
class AggregateTask:
    """Write the ablation table and plots of the whole sweep."""

    stage: ClassVar[str] = "aggregate"
    name: str = "table"

    def run(self, root: Path) -> dict:
        from .aggregate import aggregate

        return aggregate(Path(root))

    def progress(self, root: Path) -> None:
        return None


Task = Union[TrainTask, SampleTask, AggregateTask]
STAGES = (TrainTask.stage, SampleTask.stage, AggregateTask.stage)
