"""The sweep's tasks as data: train one network, sample and score one cell, aggregate the table.

A task is a small frozen record that carries everything its job needs (its name, its
folders, its resolved config, the training it depends on); a submitted job receives
the record itself and never re-plans the sweep. The code that runs a task lives in
hpc_ncsn.sweep.work, which dispatches on the record's type; this module imports
nothing of the sweep (it is the wing's floor), so a pickled task drags nothing along.
`progress(root)` reads how far the task's files have come. The stage names live here
only (`STAGES`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Union

from ..evaluate.curve import CURVE
from ..files import read_jsonl

__all__ = ["ANCHORS", "CURVE", "METRICS_FILE", "STAGES", "AggregateTask", "AnchorTask", "NotRun", "SampleTask", "Task",
           "TrainTask"]

METRICS_FILE = "metrics.json"  # a cell's scores, beside its shards (written after them: the cell is complete)


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

    def progress(self, root: Path) -> dict:
        """Steps logged so far (metrics.jsonl's last complete line) out of train.steps."""
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
    # The samples folder of an earlier cell of the sweep with the same network, seed and samples (its sampler
    # ignores every key the two differ in, SamplerConfig.ignored_keys), and why: this cell draws nothing.
    same_as: Path | None = None
    because: str = ""  # e.g. "edm's sampler ignores sampler.steps_per_level"

    @property
    def samples(self) -> Path:
        """The folder that holds the cell's samples and scores: its own, or the one of the cell it shares them with
        (`same_as`), unless its own holds scores (a sweep made before cells shared: each was sampled by itself)."""
        if self.same_as is None or (self.folder / METRICS_FILE).is_file():
            return self.folder
        return self.same_as

    def shares(self) -> str:
        """What a cell that shares another's samples says of it (its status, its log, the table); '' if it does not."""
        if self.samples == self.folder:
            return ""
        return f"shares the samples of cell {self.same_as.parent.name} ({self.because})"

    def sampling_overrides(self) -> tuple[str, ...]:
        """The cell's sampler and generate sections, as overrides of its training run's config."""
        return tuple(f"{section}.{key}={value if isinstance(value, str) else json.dumps(value)}"
                     for section in ("sampler", "generate") for key, value in self.config[section].items())

    def progress(self, root: Path) -> dict:
        return _shard_progress(self.samples, self.config)

    @property
    def over_training(self) -> Path:
        """Where the snapshots' samples and CURVE go (beside the cell's samples)."""
        return self.samples.parent / "over_training"


def _shard_progress(folder: Path, config: dict) -> dict:
    """Shards written so far out of the folder's shards."""
    settings = config["generate"]
    total = -(-settings["num_samples"] // settings["shard_size"])
    return {"done": len(list(folder.glob("shard-*.h5"))) if folder.is_dir() else 0, "total": total, "unit": "shards"}


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

    @property
    def samples(self) -> Path:
        """The folder that holds the anchor's samples and scores: its own."""
        return self.folder

    def held_out_split(self) -> str:
        """The split the `real` anchor draws from: the one the reference statistics are not made of."""
        return "train" if self.config["evaluate"]["reference"] == "test" else "test"

    @property
    def network(self) -> Path:
        """The `untrained` anchor's initialised network (beside its samples)."""
        return self.folder.parent / "network"


@dataclass(frozen=True)
class AggregateTask:
    """Write the ablation table and plots of the whole sweep."""

    stage: ClassVar[str] = "aggregate"
    name: str = "table"

    def progress(self, root: Path) -> None:
        return None


Task = Union[TrainTask, SampleTask, AnchorTask, AggregateTask]
STAGES = (TrainTask.stage, SampleTask.stage, AggregateTask.stage)
