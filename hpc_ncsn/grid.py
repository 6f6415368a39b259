"""A sweep as data: its grid of cells, the trainings they need, and where everything lands.

A sweep is a base config plus axes: `schedule` (noise.schedule) and `seed`
(train.seed) first, and any other config key (`noise.steps_per_level`,
`train.lr`, ...) as further axes. A cell is one point of the grid.

Cells that differ only in how they sample share one training: the `snr` arm
samples the `geometric` arm's network (same ladder), and sampler keys
(noise.steps_per_level, step_lr, snr, init, final_denoise) never change the
weights. The plan trains each distinct network once.

On disk, under the sweep folder:

    sweep.json                 the spec (written once; a rerun must match it)
    train/<cell>/              a training run folder (train.out_dir), named after its first cell
    cells/<cell>/samples/      shards, manifest.json and metrics.json of one cell
    status/<stage>/<task>.json state of every task: running, done or failed (+ error, log)
    logs/                      job logs (submitit)
    table.md/.csv/.json, *.png the aggregated ablation
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, config_from_dict, config_to_dict, load_config
from .preemption import Preempted
from .schedules import ARMS

__all__ = ["AXIS_KEYS", "SAMPLER_KEYS", "Cell", "SweepSpec", "TaskStatus", "plan", "read_status", "write_status"]

AXIS_KEYS = {"schedule": "noise.schedule", "seed": "train.seed"}
SAMPLER_KEYS = ("steps_per_level", "step_lr", "snr", "init", "final_denoise")
STAGES = ("train", "sample", "aggregate")


def _yaml_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class Cell:
    """One point of the grid: an ordered tuple of (axis, value)."""

    axes: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        parts = [f"{key}-{value}" for key, value in self.axes]
        return re.sub(r"[^A-Za-z0-9.,=+_-]", "", "_".join(parts))

    @property
    def seed(self) -> int:
        return int(dict(self.axes).get("seed", 0))

    def overrides(self) -> list[str]:
        return [f"{AXIS_KEYS.get(key, key)}={_yaml_value(value)}" for key, value in self.axes]

    def group(self) -> tuple[tuple[str, Any], ...]:
        """The cell's axes without the seed: the row of the ablation table it belongs to."""
        return tuple((key, value) for key, value in self.axes if key != "seed")


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep computes (not where or how it runs).

    `base` is the resolved config (the YAML file plus the sweep-wide overrides) as a
    plain dict, stored in sweep.json: the sweep folder does not depend on the config
    file staying unchanged, and a rerun after editing it is recognized as another sweep.
    """

    config: str  # where `base` was read from (for the record)
    base: dict
    axes: dict[str, list]
    overrides: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.axes or any(not values for values in self.axes.values()):
            raise ValueError(f"every sweep axis needs at least one value, got {self.axes}")
        for key, values in self.axes.items():
            if len(set(map(json.dumps, values))) != len(values):
                raise ValueError(f"axis {key!r} repeats a value: {values}")

    @classmethod
    def from_config(cls, path: Path, axes: dict[str, list], overrides: tuple[str, ...] = ()) -> "SweepSpec":
        """Resolve the config file and the sweep-wide overrides (ConfigError names a bad key)."""
        base = config_to_dict(load_config(path, overrides))
        return cls(config=str(path), base=base, axes=axes, overrides=tuple(overrides))

    def cells(self) -> list[Cell]:
        keys = list(self.axes)
        return [Cell(tuple(zip(keys, values))) for values in itertools.product(*self.axes.values())]

    def cell_config(self, cell: Cell, *extra: str) -> Config:
        """The cell's resolved config (ConfigError names a bad axis key or value)."""
        return config_from_dict(self.base, [*cell.overrides(), *extra])

    def differences(self, other: "SweepSpec") -> list[str]:
        """Human-readable differences from another spec (empty when they describe the same sweep)."""
        mine, theirs = _flatten(asdict(self)), _flatten(asdict(other))
        return [f"{key}: {mine.get(key, '(absent)')!r} → {theirs.get(key, '(absent)')!r}"
                for key in sorted(set(mine) | set(theirs)) if key != "config" and mine.get(key) != theirs.get(key)]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "SweepSpec":
        data = json.loads(text)
        data["overrides"] = tuple(data.get("overrides", ()))
        return cls(**data)

    @classmethod
    def load(cls, root: Path) -> "SweepSpec":
        path = Path(root) / "sweep.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {root} is not a sweep folder (launch/sweep.py writes it)")
        return cls.from_json(path.read_text())


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def training_identity(config: Config) -> str:
    """What determines the trained weights: the config without sampler keys, with the arm mapped to its ladder."""
    tree = config_to_dict(config)
    tree["noise"]["schedule"] = ARMS[tree["noise"]["schedule"]].ladder
    for key in SAMPLER_KEYS:
        tree["noise"].pop(key)
    tree["train"].pop("out_dir")
    tree.pop("eval")
    return json.dumps(tree, sort_keys=True)


@dataclass(frozen=True)
class TrainTask:
    name: str
    overrides: tuple[str, ...]  # overrides of the sweep's base config for this training run
    folder: Path


@dataclass(frozen=True)
class SampleTask:
    name: str
    cell: Cell
    train: str  # the TrainTask whose network this cell samples
    noise_overrides: tuple[str, ...]  # this cell's sampler, applied to the trained run's config
    folder: Path


@dataclass(frozen=True)
class Plan:
    root: Path
    spec: SweepSpec
    train: list[TrainTask]
    sample: list[SampleTask]


def plan(spec: SweepSpec, root: Path) -> Plan:
    """The training tasks (one per distinct network) and sampling tasks (one per cell) of a sweep."""
    root = Path(root)
    trainings: dict[str, TrainTask] = {}
    samples = []
    for cell in spec.cells():
        config = spec.cell_config(cell)
        identity = training_identity(config)
        if identity not in trainings:
            training_overrides = list(cell.overrides())
            ladder = ARMS[config.noise.schedule].ladder
            if ladder != config.noise.schedule:  # e.g. snr: train the ladder the arm samples with
                training_overrides.append(f"noise.schedule={ladder}")
            folder = root / "train" / cell.name
            trainings[identity] = TrainTask(cell.name, (*training_overrides, f"train.out_dir={folder}"), folder)
        noise = config_to_dict(config)["noise"]
        noise_overrides = tuple(f"noise.{key}={_yaml_value(value)}" for key, value in noise.items())
        samples.append(SampleTask(cell.name, cell, trainings[identity].name, noise_overrides,
                                  root / "cells" / cell.name / "samples"))
    return Plan(root, spec, list(trainings.values()), samples)


# Task status ------------------------------------------------------------------------------

@dataclass
class TaskStatus:
    stage: str
    task: str
    state: str  # running | done | failed | preempted (stopped at a signal after saving; resumes when rerun)
    started: float = 0.0
    finished: float | None = None
    host: str = field(default_factory=socket.gethostname)
    job_id: str | None = None
    log: str | None = None
    error: str | None = None
    traceback: str | None = None
    attempts: int = 1


def status_path(root: Path, stage: str, task: str) -> Path:
    assert stage in STAGES, f"unknown stage {stage!r}"
    return Path(root) / "status" / stage / f"{task}.json"


def write_status(root: Path, status: TaskStatus) -> None:
    path = status_path(root, status.stage, status.task)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(asdict(status), indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_status(root: Path, stage: str, task: str) -> TaskStatus | None:
    path = status_path(root, stage, task)
    if not path.is_file():
        return None
    return TaskStatus(**json.loads(path.read_text()))


def run_tracked(root: Path, stage: str, task: str, body, *, job_id: str | None = None, log: str | None = None):
    """Run `body()` with its status recorded: running, then done or failed with the traceback (re-raised).

    Under torch.distributed (RANK set) only rank 0 records.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        return body()
    previous = read_status(root, stage, task)
    status = TaskStatus(stage, task, "running", started=time.time(), job_id=job_id, log=log,
                        attempts=(previous.attempts + 1) if previous else 1)
    write_status(root, status)
    try:
        result = body()
    except Preempted as error:
        status.state, status.finished, status.error = "preempted", time.time(), str(error)
        write_status(root, status)
        raise
    except BaseException as error:
        status.state, status.finished = "failed", time.time()
        status.error = f"{type(error).__name__}: {error}".strip()
        status.traceback = traceback.format_exc()
        write_status(root, status)
        raise
    status.state, status.finished = "done", time.time()
    write_status(root, status)
    return result
