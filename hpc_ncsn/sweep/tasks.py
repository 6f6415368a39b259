"""The sweep's tasks: train one network, sample and score one cell, aggregate the table.

A task is a small frozen object that carries everything its job needs (its resolved
config, its folders, the training it depends on); a submitted job receives the object
itself and never re-plans the sweep. `run(root)` does the work and is safe to run
again: a training resumes from its newest checkpoint, a sampling keeps its valid
shards, the table is rewritten. The stage names live here only (`STAGES`).

Importing this module does not import torch; the bodies import what they need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union

__all__ = ["ANCHORS", "CURVE", "STAGES", "AggregateTask", "AnchorTask", "NotRun", "SampleTask", "Task", "TrainTask"]


CURVE = "fid_vs_step.json"  # a cell's FID over training, in SampleTask.over_training


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
        return tuple(f"{section}.{key}={value if isinstance(value, str) else json.dumps(value)}"
                     for section in ("sampler", "generate") for key, value in self.config[section].items())

    def progress(self, root: Path) -> dict:
        return _shard_progress(self.folder, self.config)

    def run(self, root: Path) -> dict:
        from ..samples.generate import generate
        from .scheduler import queue
        from .status import observe, read_status

        training = read_status(root, self.train)
        state, detail = observe(training, queue())
        if state != "done":
            said = "never ran" if training is None else f"is {state}" + (f": {detail}" if detail else "")
            raise NotRun(f"cell {self.name} samples the network of training task {self.train.name}, which "
                         f"{said}; rerun the sweep to train it first", "cancelled" if state == "cancelled" else "failed")
        generate(self.train.folder, self.folder, overrides=self.sampling_overrides(), seed=self.seed)
        report = _score(self.folder, self.config)
        self.score_over_training()
        return report

    @property
    def over_training(self) -> Path:
        """Where the snapshots' samples and CURVE go (beside the cell's samples)."""
        return self.folder.parent / "over_training"

    def score_over_training(self) -> list[dict]:
        """With train.eval_every: draw train.eval_samples samples of this cell's sampler from each EMA snapshot
        of its training and score them (resumable like the cell); write fid_vs_step.json. Rank 0's list."""
        from ..checkpoint import checkpoint_name, snapshots
        from ..distributed import is_main_process
        from ..files import atomic_write
        from ..samples.generate import generate

        train = self.config["train"]
        if not train["eval_every"]:
            return []
        curve = []
        for step, snapshot in snapshots(self.train.folder):
            folder = self.over_training / checkpoint_name(step)
            generate(snapshot, folder, seed=self.seed,
                     overrides=(*self.sampling_overrides(), f"generate.num_samples={train['eval_samples']}"))
            report = _score(folder, self.config)  # every rank takes part, so every rank scores
            curve.append({"step": step, **{key: report.get(key) for key in ("fid", "kid_mean", "n")}})
        if is_main_process():
            atomic_write(self.over_training / CURVE, json.dumps(curve, indent=2) + "\n")
        return curve


def _shard_progress(folder: Path, config: dict) -> dict:
    """Shards written so far out of the folder's shards."""
    settings = config["generate"]
    total = -(-settings["num_samples"] // settings["shard_size"])
    return {"done": len(list(folder.glob("shard-*.h5"))) if folder.is_dir() else 0, "total": total, "unit": "shards"}


def _score(folder: Path, config: dict) -> dict:
    """Evaluate a cell's sample folder with its config's evaluate section; rank 0's report (others: {})."""
    from ..config import config_from_dict
    from ..distributed import is_main_process
    from ..evaluate.evaluator import evaluate

    config = config_from_dict(config)
    report = evaluate(folder, config.data, config.evaluate, out=folder / "metrics.json")
    return report if is_main_process() else {}


ANCHORS = ("real", "untrained")


@dataclass(frozen=True)
class AnchorTask:
    """A row that calibrates the table, scored like a cell (same N, reference and extractor):

    - `real`: N real images of the split the reference is not made of (the FID floor at this N);
    - `untrained`: the samples of the initialised, untrained network (train.steps=0) with the base
      config's sampler (the ceiling).
    """

    stage: ClassVar[str] = "sample"
    name: str
    folder: Path
    config: dict  # the base config with this anchor's train.seed
    seed: int
    group: tuple[tuple[str, Any], ...]  # (("anchor", kind),)
    kind: str
    train: None = None  # no training task of the sweep: an anchor makes what it needs itself

    def progress(self, root: Path) -> dict:
        return _shard_progress(self.folder, self.config)

    def held_out_split(self) -> str:
        """The split the `real` anchor draws from: the one the reference statistics are not made of."""
        return "train" if self.config["evaluate"]["reference"] == "test" else "test"

    def run(self, root: Path) -> dict:
        from ..config import config_from_dict

        settings = self.config["generate"]
        if self.kind == "real":
            from ..distributed import barrier, is_main_process, process_group
            from ..samples.real import write_real_shards

            process_group()  # one writer (rank 0); the others wait for the folder before scoring their shards
            if is_main_process():
                write_real_shards(config_from_dict(self.config).data, self.folder, settings["num_samples"],
                                  settings["shard_size"], split=self.held_out_split(), seed=self.seed)
            barrier()
        else:
            from ..samples.generate import generate
            from ..train import train

            network = self.folder.parent / "network"
            train(config_from_dict(self.config, ["train.steps=0", f"train.out_dir={network}"]))
            generate(network, self.folder, seed=self.seed)
        return _score(self.folder, self.config)


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


Task = Union[TrainTask, SampleTask, AnchorTask, AggregateTask]
STAGES = (TrainTask.stage, SampleTask.stage, AggregateTask.stage)
