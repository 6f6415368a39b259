"""A sweep as data: its grid of cells, the tasks that compute them, and where everything lands.

A sweep is a base config plus axes: `arm` (an arm of hpc_ncsn.config.ARMS, which
sets noise.ladder and sampler.step_rule) and `seed` (train.seed) first, then any other
config key (`sampler.steps_per_level`, `train.lr`, ...). A cell is one point of the
grid, named after its axis values in axis order.

Cells that differ only in how they sample share one training: the `snr` arm samples
the `geometric` arm's network (same ladder), and the sampler, generate and evaluate
sections never change the weights. The plan trains each distinct network once.
Cells that also differ only in sampler keys their sampler ignores (`sampling_identity`:
the `edm` arm at two values of sampler.steps_per_level) share their samples: the first
of them in grid order draws and scores them, the others record it (SampleTask.same_as)
and draw nothing; each keeps its row of the table, with the same numbers.

On disk, under the sweep folder:

    sweep.json                 the spec (written once; a rerun must match it)
    train/<cell>/              a training run folder (train.out_dir), named after its first cell
    cells/<cell>/samples/      shards, manifest.json and metrics.json of one cell
    status/<stage>/<task>.json state of every task: running, done or failed (+ error, log)
    logs/                      job logs (submitit)
    table.md/.csv/.json, *.png the aggregated ablation
    report.html                the same table, plots and sample grids as one self-contained page

Sweeps made before the arm axis had its name called it `schedule` (cells such as
`schedule-geometric_seed-0`). Their sweep.json is read as the config reads old keys: the
axis becomes `arm`, and `arm_word` keeps the word their folders were named with, so
they resume, report and aggregate where they are without moving a file.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..audit import OVERRIDE_FLAG, audit_arm
from ..config import ConfigError, SamplerConfig, arm_overrides, config_from_dict, config_to_dict, load_config
from ..errors import UserError
from ..files import atomic_write
from .tasks import ANCHORS, AggregateTask, AnchorTask, SampleTask, Task, TrainTask

__all__ = ["ARM_AXIS", "AUDIT_FILE", "LEGACY_ARM_AXIS", "REPORT_FILE", "SEED_AXIS", "Cell", "Plan", "SweepSpec",
           "audit_plan", "changes", "plan", "row_label", "sampling_identity", "training_identity"]

ARM_AXIS, SEED_AXIS = "arm", "seed"
LEGACY_ARM_AXIS = "schedule"  # the arm axis's name in sweeps made before the rename (sweep.json, cell folders)
SPEC_FILE = "sweep.json"
AUDIT_FILE = "audit.json"  # the sampler audit of every row, written with sweep.json
REPORT_FILE = "report.html"  # the table, plots and samples as one page (hpc_ncsn.sweep.report), written with table.md
# Sections that never change the trained weights.
SAMPLING_SECTIONS = ("sampler", "generate", "evaluate")


def _yaml_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


class NotASweep(UserError, FileNotFoundError):
    """A folder that should hold a sweep has no sweep.json."""


@dataclass(frozen=True)
class Cell:
    """One point of the grid: an ordered tuple of (axis, value)."""

    axes: tuple[tuple[str, Any], ...]
    arm_word: str = ARM_AXIS  # how the arm axis is spelled in the name (LEGACY_ARM_AXIS in an older sweep)

    @property
    def name(self) -> str:
        parts = [f"{self.arm_word if key == ARM_AXIS else key}-{value}" for key, value in self.axes]
        return re.sub(r"[^A-Za-z0-9.,=+_-]", "", "_".join(parts))

    @property
    def seed(self) -> int:
        return int(dict(self.axes).get(SEED_AXIS, 0))

    def overrides(self) -> list[str]:
        items = []
        for key, value in self.axes:
            if key == ARM_AXIS:
                items += arm_overrides(value)
            else:
                items.append(f"{'train.seed' if key == SEED_AXIS else key}={_yaml_value(value)}")
        return items

    def group(self) -> tuple[tuple[str, Any], ...]:
        """The cell's axes without the seed: the row of the ablation table it belongs to."""
        return tuple((key, value) for key, value in self.axes if key != SEED_AXIS)


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep computes (not where or how it runs).

    `base` is the resolved config (the YAML file plus the sweep-wide overrides) as a
    plain dict, stored in sweep.json: the sweep folder does not depend on the config
    file staying unchanged, and a rerun after editing it is recognized as another sweep.
    `axes` keeps its order (it names the cells), in sweep.json too.
    """

    config: str  # where `base` was read from (for the record)
    base: dict
    axes: dict[str, list]
    overrides: tuple[str, ...] = ()
    anchors: tuple[str, ...] = ()  # calibration rows of the table (tasks.ANCHORS), one per seed
    # Arms (or "all") the sampler audit lets run although their chain does not settle (--allow-unstable-sampler)
    allow_unstable: tuple[str, ...] = ()
    arm_word: str = ARM_AXIS  # the arm axis's word in cell names: LEGACY_ARM_AXIS in a sweep made before the rename
    # How the folder's sweep grew ({time, grew: {axis: values}, extended: {train.steps: [S, N]}}, hpc_ncsn.sweep.grow):
    # the record of its folder, not part of what it computes (never compared).
    history: tuple[dict, ...] = dataclasses.field(default=(), compare=False)

    def __post_init__(self):
        if not self.axes or any(not values for values in self.axes.values()):
            raise ConfigError(f"every sweep axis needs at least one value, got {self.axes}")
        unknown = [anchor for anchor in self.anchors if anchor not in ANCHORS]
        if unknown:
            raise ConfigError(f"anchor(s) {unknown}: choose from {', '.join(ANCHORS)}")
        if "real" in self.anchors and self.base["data"]["name"] == "digits":
            raise ConfigError("--anchors real: the real-image anchor needs images the reference is not made of, and the digits have "
                              "no test split; use a data set with one (fashion_mnist, mnist, cifar10) or drop it")
        for key, values in self.axes.items():
            if len(set(map(json.dumps, values))) != len(values):
                raise ConfigError(f"axis {key!r} repeats a value: {values}; list each value once")

    @classmethod
    def from_config(cls, path: Path, axes: dict[str, list], overrides: tuple[str, ...] = (),
                    anchors: tuple[str, ...] = (), allow_unstable: tuple[str, ...] = ()) -> "SweepSpec":
        """Resolve the config file and the sweep-wide overrides (ConfigError names a bad key)."""
        base = config_to_dict(load_config(path, overrides))
        return cls(config=str(path), base=base, axes=axes, overrides=tuple(overrides), anchors=tuple(anchors),
                   allow_unstable=tuple(allow_unstable))

    def cells(self) -> list[Cell]:
        keys = list(self.axes)
        return [Cell(tuple(zip(keys, values)), self.arm_word) for values in itertools.product(*self.axes.values())]

    def cell_config(self, cell: Cell, *extra: str) -> dict:
        """The cell's resolved config as a plain dict (ConfigError names a bad axis key or value)."""
        return config_to_dict(config_from_dict(self.base, [*cell.overrides(), *extra]))

    def _record(self) -> dict:
        record = {"config": self.config, "base": self.base, "axes": [[key, list(values)] for key, values in
                                                                        self.axes.items()],
                  "overrides": list(self.overrides)}
        record |= {"anchors": list(self.anchors)} if self.anchors else {}  # sweeps without: as before
        return record | ({"allow_unstable_sampler": list(self.allow_unstable)} if self.allow_unstable else {})

    def named_like(self, saved: "SweepSpec") -> "SweepSpec":
        """This spec with the cell names of `saved`, the same sweep as saved in its folder (an older sweep
        keeps its folders' names)."""
        return dataclasses.replace(self, arm_word=saved.arm_word)

    def differences(self, other: "SweepSpec") -> list[str]:
        """Human-readable differences from another spec (empty when they describe the same sweep)."""
        return [change for change in changes(self._record(), other._record()) if not change.startswith("config: ")]

    def to_json(self) -> str:
        record = self._record() | ({"history": list(self.history)} if self.history else {})  # never grew: as before
        if self.arm_word == LEGACY_ARM_AXIS:  # rewritten (grown): still read as made before the rename
            record["axes"] = [[self.arm_word if key == ARM_AXIS else key, values] for key, values in record["axes"]]
        return json.dumps(record, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "SweepSpec":
        data = json.loads(text)
        axes = [list(item) for item in (data["axes"] if isinstance(data["axes"], list) else data["axes"].items())]
        legacy = any(key == LEGACY_ARM_AXIS for key, _ in axes)  # made before the rename: migrate the key
        axes = [[ARM_AXIS if key == LEGACY_ARM_AXIS else key, values] for key, values in axes]
        # Resolved again: a key added to hpc_ncsn since the sweep was saved takes its default (which keeps the
        # old behaviour), so an upgrade does not turn a sweep folder into "another sweep".
        base = config_to_dict(config_from_dict(data["base"], source=SPEC_FILE))
        return cls(config=data["config"], base=base, axes=dict(axes), overrides=tuple(data.get("overrides", ())),
                   anchors=tuple(data.get("anchors", ())), allow_unstable=tuple(data.get("allow_unstable_sampler", ())),
                   arm_word=LEGACY_ARM_AXIS if legacy else ARM_AXIS, history=tuple(data.get("history", ())))

    @classmethod
    def load(cls, root: Path) -> "SweepSpec":
        path = Path(root) / SPEC_FILE
        if not path.is_file():
            raise NotASweep(f"{root} holds no sweep (no {SPEC_FILE}); pass the --out of a launched sweep "
                            "(launch/sweep.py writes it)")
        return cls.from_json(path.read_text())

    def save(self, root: Path) -> None:
        atomic_write(Path(root) / SPEC_FILE, self.to_json())


def changes(before: dict, after: dict) -> list[str]:
    """'key: before → after' for every leaf of two nested dicts (resolved configs, sweep records) that differs."""
    mine, theirs = _flatten(before), _flatten(after)
    return [f"{key}: {mine.get(key, '(absent)')!r} → {theirs.get(key, '(absent)')!r}"
            for key in sorted(set(mine) | set(theirs)) if mine.get(key) != theirs.get(key)]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b.c': leaf} of nested dicts."""
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def training_identity(config: dict) -> str:
    """What determines the trained weights: the config without its sampling sections and output folder."""
    tree = {section: dict(values) for section, values in config.items() if section not in SAMPLING_SECTIONS}
    tree["train"].pop("out_dir")
    return json.dumps(tree, sort_keys=True)


def sampling_identity(config: dict) -> str:
    """What determines a cell's samples and scores besides its network and seed: its sampler, generate and evaluate
    sections without the keys its sampler ignores (SamplerConfig.ignored_keys)."""
    tree = {section: dict(config[section]) for section in SAMPLING_SECTIONS}
    for key in SamplerConfig(**config["sampler"]).ignored_keys():
        section, name = key.split(".")
        tree[section].pop(name)
    return json.dumps(tree, sort_keys=True)


def _because(source: SampleTask, cell: SampleTask) -> str:
    """Why `cell` draws the samples of `source` (same network, seed and sampling_identity): the keys they differ
    in, which its sampler ignores."""
    mine, theirs = _flatten(source.config), _flatten(cell.config)
    keys = sorted(key for key in set(mine) | set(theirs) if mine.get(key) != theirs.get(key))
    if not keys:
        return "the same resolved config"
    sampler = dict(cell.group).get(ARM_AXIS) or f"the {cell.config['sampler']['kind']}"
    return f"{sampler}'s sampler ignores {', '.join(keys)}"


@dataclass(frozen=True)
class Plan:
    root: Path
    spec: SweepSpec
    train: list[TrainTask]
    sample: list[SampleTask | AnchorTask]  # the cells, then the anchors
    aggregate: AggregateTask

    @classmethod
    def joined(cls, root: Path, spec: SweepSpec, sweeps: list["Plan"]) -> "Plan":
        """The plans of several sweep folders as one, their tasks in order, under `spec` (hpc_ncsn.sweep.combine):
        what one table of them shows; `root` is where that table goes."""
        return cls(Path(root), spec, [task for sweep in sweeps for task in sweep.train],
                   [task for sweep in sweeps for task in sweep.sample], AggregateTask())

    def stages(self) -> list[tuple[str, list[Task]]]:
        """(stage, its tasks) in the order they run."""
        return [(TrainTask.stage, list(self.train)), (SampleTask.stage, list(self.sample)),
                (AggregateTask.stage, [self.aggregate])]


def plan(spec: SweepSpec, root: Path) -> Plan:
    """The training tasks (one per distinct network) and sampling tasks (one per cell; a cell whose samples an
    earlier cell draws records it, `same_as`) of a sweep."""
    root = Path(root)
    trainings: dict[str, TrainTask] = {}
    samples: list[SampleTask] = []
    drawn: dict[tuple, SampleTask] = {}  # (network, sampling identity, seed) → the cell that draws those samples
    names: dict[str, Cell] = {}
    for cell in spec.cells():
        if cell.name in names:
            raise ConfigError(f"cells {dict(names[cell.name].axes)} and {dict(cell.axes)} would share the folder "
                              f"{cell.name!r} (a cell's name keeps only letters, digits and .,=+_-); "
                              "give the axis values that differ in those characters")
        names[cell.name] = cell
    configs = [(cell, spec.cell_config(cell)) for cell in names.values()]
    common = _heldout_grid(spec.base, [config for _, config in configs])
    for cell, config in configs:
        identity = training_identity(config)
        if identity not in trainings:
            folder = root / "train" / cell.name
            run_config = spec.cell_config(cell, f"train.out_dir={folder}", *common)
            trainings[identity] = TrainTask(cell.name, folder, run_config)
        task = SampleTask(cell.name, root / "cells" / cell.name / "samples", config, trainings[identity],
                          cell.seed, cell.group())
        source = drawn.setdefault((identity, sampling_identity(config), cell.seed), task)
        if source is not task:
            task = dataclasses.replace(task, same_as=source.folder, because=_because(source, task))
        samples.append(task)
    for kind in spec.anchors:
        for seed in spec.axes.get(SEED_AXIS, [0]):
            name = f"anchor-{kind}_seed-{seed}"
            config = config_to_dict(config_from_dict(spec.base, [f"train.seed={seed}"]))
            samples.append(AnchorTask(name, root / "cells" / name / "samples", config, int(seed),
                                      (("anchor", kind),), kind))
    return Plan(root, spec, list(trainings.values()), samples, AggregateTask())


def _heldout_grid(base: dict, configs: list[dict]) -> list[str]:
    """Overrides that put every network of the sweep on one held-out σ grid (hpc_ncsn.heldout): the widest
    trained range, where the cells' resolved `configs` differ in range and the `base` config leaves the grid at
    its default."""
    train = base["train"]
    if train.get("heldout_sigma_max") or train.get("heldout_sigma_min"):
        return []  # the config names its grid: the same for every network already
    ranges = {(c["noise"]["sigma_max"], c["noise"]["sigma_min"]) for c in configs}
    if len(ranges) == 1:
        return []  # each network's own range is the common one
    return [f"train.heldout_sigma_max={max(high for high, _ in ranges)}",
            f"train.heldout_sigma_min={min(low for _, low in ranges)}"]


def row_label(group: tuple[tuple[str, Any], ...]) -> str:
    """A row's name: the arm by itself (`geometric`), an anchor as `anchor: real`, other axes as key=value."""
    parts = [str(value) if key == ARM_AXIS else f"{key}: {value}" if key == "anchor" else f"{key}={value}"
             for key, value in group]
    return ", ".join(parts) or "(all)"


def audit_plan(sweep: Plan) -> dict[str, dict]:
    """The sampler audit (hpc_ncsn.audit) of every row of the sweep, {row label: record}, before anything
    runs: UnstableSampler (one line) for an arm whose chain would not settle, unless the spec lets it run."""
    allowed = sweep.spec.allow_unstable
    override = True if "all" in allowed else set(allowed)
    records = {}
    for task in sweep.sample:
        label = row_label(task.group)
        if isinstance(task, SampleTask) and label not in records:
            arm = dict(task.group).get(ARM_AXIS, "")
            record = audit_arm(config_from_dict(task.config), arm, name=label, override=override, flag=OVERRIDE_FLAG)
            records[label] = record.to_dict()
    return records
