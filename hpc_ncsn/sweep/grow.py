"""Growing a sweep folder: more seeds, arms or axis values, and training longer (--extend train.steps=N).

`reconcile(root, requested)` compares the sweep a command asks for with the one saved in
the folder and decides, without writing anything, what a run does (so `--dry-run` says
exactly that, refusal included):

    new          no sweep.json yet: the requested sweep
    same         the saved sweep again: resume what is not done
    grow         every saved axis value first, in its order, then new ones: only the new cells
                 (and the trainings only they need) run; the cells already there, their
                 trainings and their files are untouched
    extend       --extend train.steps=N above the saved steps: every training of the sweep
                 resumes from its checkpoint to N, and every cell that samples one is sampled and
                 scored again; the earlier results move to history/steps-<S>/ first

Anything else that differs (the base config, anchors, a new or missing axis, a value
dropped or reordered, a cell whose config the new values would change) is a SweepMismatch
in one line naming the difference. `prepare(decision, audits)` then records the decision
(sweep.json with its `history`, audit.json), inside the launcher's lock.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..files import atomic_write
from .plan import ARM_AXIS, AUDIT_FILE, REPORT_FILE, SEED_AXIS, SPEC_FILE, Plan, SweepSpec, changes, plan
from .status import status_path, todo
from .tasks import SampleTask, Task

__all__ = ["EXTENDABLE", "HISTORY_DIR", "Decision", "SweepMismatch", "prepare", "reconcile"]

HISTORY_DIR = "history"  # history/steps-<S>/: the results of a sweep before it was extended beyond S steps
EXTENDABLE = ("train.steps",)


class SweepMismatch(UserError, ValueError):
    """The sweep folder holds another sweep, or none; the message says which folder, what differs and what to do."""


@dataclass(frozen=True)
class Decision:
    """What a run on `root` does with the requested sweep (see the module doc)."""

    root: Path
    spec: SweepSpec  # the sweep to plan, run and save (named like the saved one)
    kind: str  # new | same | grow | extend | grow+extend
    added: dict  # {axis: [new values]}
    steps: tuple[int, int] | None = None  # (saved, requested) train.steps of an extension
    reset: tuple[Task, ...] = ()  # done work the extension runs again (its results move to history/)
    kept: frozenset = frozenset()  # (stage, name) of every task the folder's sweep had

    def todo(self, tasks: list[Task]) -> list[Task]:
        """The tasks a run starts: those not done, and those the extension runs again."""
        again = {(task.stage, task.name) for task in self.reset}
        return [task for task in tasks if (task.stage, task.name) in again or todo(self.root, [task])]

    def describe(self, sweep: Plan) -> list[str]:
        """What the run does to the folder, in the words --dry-run prints."""
        if self.kind == "new":
            return [f"a new sweep in {self.root}"]
        if self.kind == "same":
            return [f"the sweep saved in {self.root / SPEC_FILE}: resumes what is not done"]
        lines = []
        if self.added:
            cells = [task.name for task in sweep.sample if (task.stage, task.name) not in self.kept]
            trainings = [task.name for task in sweep.train if (task.stage, task.name) not in self.kept]
            lines.append(f"grows the sweep: {_added_words(self.added)}: {len(cells)} new cell(s) "
                         f"({', '.join(cells)}), {len(trainings)} new training(s); the cells already there are kept "
                         "as they are")
        if self.steps:
            before, after = self.steps
            trainings = [task for task in self.reset if task.stage == "train"]
            lines.append(f"extends training from {before} to {after} steps: {len(trainings)} training(s) resume from "
                         f"their checkpoints, {len(self.reset) - len(trainings)} cell(s) are sampled and scored again; "
                         f"their results at {before} steps move to {self.root / HISTORY_DIR / f'steps-{before}'}")
        return lines


def _flag(axis: str) -> str:
    return {ARM_AXIS: "--arms ", SEED_AXIS: "--seeds "}.get(axis, f"--axis {axis}=")


def _words(values: list) -> str:
    return ",".join(map(str, values))


def _added_words(added: dict) -> str:
    return "; ".join(f"{axis} + {_words(values)}" for axis, values in added.items())


def _with_steps(spec: SweepSpec, steps: int) -> SweepSpec:
    base = {**spec.base, "train": {**spec.base["train"], "steps": steps}}
    return dataclasses.replace(spec, base=base)


def _grid(saved: SweepSpec, requested: SweepSpec, root: Path) -> dict:
    """{axis: values the request adds}; SweepMismatch unless every saved value comes first, in its order."""
    if list(saved.axes) != list(requested.axes):
        new = [axis for axis in requested.axes if axis not in saved.axes]
        gone = [axis for axis in saved.axes if axis not in requested.axes]
        said = (f"axis {new[0]!r} is new" if new else f"axis {gone[0]!r} ({_words(saved.axes[gone[0]])}) is missing"
                if gone else f"the axes come in another order ({', '.join(requested.axes)})")
        raise SweepMismatch(f"{root} holds a sweep over {', '.join(saved.axes)}; {said}: cells are named after their "
                            "axes, so a sweep grows along the axes it has; start a new --out and aggregate the two "
                            "(hpc-ncsn aggregate DIR1 DIR2 --out DIR)")
    added = {}
    for axis, values in saved.axes.items():
        asked = requested.axes[axis]
        if asked[:len(values)] != values:
            raise SweepMismatch(f"{_flag(axis)}{_words(asked)}: the sweep in {root} has {axis} values "
                                f"{_words(values)}; a sweep grows by new values after those, in that order "
                                f"(e.g. {_flag(axis)}{_words(values + [v for v in asked if v not in values])}), "
                                "and never drops or reorders a cell")
        if asked[len(values):]:
            added[axis] = asked[len(values):]
    return added


def _steps(saved: SweepSpec, requested: SweepSpec, extend: bool, root: Path) -> tuple[int, int] | None:
    """(saved, requested) train.steps of an extension, None without one; SweepMismatch for a change without
    --extend or a shorter one."""
    before, after = saved.base["train"]["steps"], requested.base["train"]["steps"]
    if before == after:
        return None
    if after < before:
        raise SweepMismatch(f"train.steps={after}: the sweep in {root} trains {before} steps (sweep.json, history); "
                            f"a sweep trains longer, never shorter: rerun with train.steps={before}")
    if not extend:
        raise SweepMismatch(f"train.steps: {before} → {after}: to train the networks of the sweep in {root} longer, "
                            f"say so: --extend train.steps={after} (their checkpoints resume; docs/sweeps.md, Growing "
                            "a sweep), or pick a new --out")
    return before, after


def reconcile(root: Path, requested: SweepSpec, extend: bool = False) -> Decision:
    """What a run of `requested` does on `root` (nothing is written); SweepMismatch (one line) when it cannot."""
    root = Path(root)
    if not (root / SPEC_FILE).is_file():
        if extend:
            raise SweepMismatch(f"--extend: {root} holds no sweep to extend; for a new sweep give train.steps=N as an "
                                "override, without --extend")
        return Decision(root, requested, "new", {})
    saved = SweepSpec.load(root)
    spec = requested.named_like(saved)
    steps = _steps(saved, spec, extend, root)
    dropped = [arm for arm in saved.allow_unstable if arm not in spec.allow_unstable]
    if dropped:
        raise SweepMismatch(f"--allow-unstable-sampler: the sweep in {root} runs {_words(dropped)} although the "
                            f"sampler audit refuses it; give --allow-unstable-sampler {_words(saved.allow_unstable)} "
                            "again")
    before = _with_steps(saved, spec.base["train"]["steps"])
    other = dataclasses.replace(before, axes=spec.axes, overrides=spec.overrides,
                                allow_unstable=spec.allow_unstable).differences(spec)
    if other:
        raise SweepMismatch(f"{root} holds another sweep ({root / SPEC_FILE}); saved → requested: "
                            f"{'; '.join(other)}; "
                            "only the grid (more seeds, arms or axis values) and --extend train.steps=N can change "
                            "in a sweep folder: rerun with its config and options, or pick a new --out")
    added = _grid(saved, spec, root)
    if not added and not steps:
        return Decision(root, dataclasses.replace(spec, history=saved.history), "same", {})
    old, new = plan(before, root), plan(spec, root)
    _check_kept(old, new, root)
    reset: tuple[Task, ...] = ()
    if steps:  # every training, and every cell that samples one (not the anchors: they train nothing of the sweep)
        reset = (*old.train, *(task for task in old.sample if isinstance(task, SampleTask)))
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    entry |= {"grew": added} if added else {}
    entry |= {"extended": {"train.steps": list(steps)}} if steps else {}
    kind = "+".join(word for word, what in (("grow", added), ("extend", steps)) if what)
    kept = frozenset((task.stage, task.name) for task in [*old.train, *old.sample])
    return Decision(root, dataclasses.replace(spec, history=(*saved.history, entry)), kind, added, steps, reset, kept)


def _check_kept(old: Plan, new: Plan, root: Path) -> None:
    """Every task of the saved sweep is in the grown one, with its name, folder, config and training."""
    tasks = {(task.stage, task.name): task for task in [*new.train, *new.sample]}
    for task in [*old.train, *old.sample]:
        grown = tasks.get((task.stage, task.name))
        if grown is None:
            raise SweepMismatch(f"the new values would rename the {task.stage} task {task.name} of the sweep in "
                                f"{root}; "
                                "start a new --out and aggregate the two (hpc-ncsn aggregate DIR1 DIR2 --out DIR)")
        differ = changes(task.config, grown.config)
        train = getattr(task, "train", None)
        if train is not None and train.name != grown.train.name:
            differ.append(f"its network: {train.name} → {grown.train.name}")
        if differ:
            raise SweepMismatch(f"the new values would change {task.name} of the sweep in {root} "
                                f"({'; '.join(differ)}); its results would no longer be what it computed: set that "
                                "key in the config of a new sweep (--out) and aggregate the two")


def prepare(decision: Decision, audits: dict | None = None) -> None:
    """Record the decision in its folder (inside the launcher's lock): for an extension, move the earlier results
    to history/steps-<S>/ first (safe to repeat after an interruption), then write sweep.json and audit.json."""
    root = decision.root
    if decision.kind == "same":
        return
    if decision.steps:
        archive = root / HISTORY_DIR / f"steps-{decision.steps[0]}"
        page = [root / REPORT_FILE] if (root / REPORT_FILE).is_file() else []  # the tables, with plots and samples
        for table in [*sorted(root.glob("table.*")), *page]:
            if not (archive / table.name).exists():
                archive.mkdir(parents=True, exist_ok=True)
                shutil.copy2(table, archive / table.name)
        for task in decision.reset:
            _archive(root, task, archive)
    decision.spec.save(root)
    if audits is not None:
        saved = json.loads((root / AUDIT_FILE).read_text()) if (root / AUDIT_FILE).is_file() else {}
        audits = {row: saved.get(row, record) for row, record in audits.items()}  # a saved row's audit stays as it was
        atomic_write(root / AUDIT_FILE, json.dumps(audits, indent=2, sort_keys=True) + "\n")


def _archive(root: Path, task: Task, archive: Path) -> None:
    """Move a task's status (first: the task then runs again whatever happens next) and its results under
    `archive`; a training keeps its folder (it resumes there) and leaves a copy of its held-out loss."""
    from ..heldout import HELDOUT_FILE  # torch: only when a sweep is extended

    status = status_path(root, task)
    if status.is_file():
        target = archive / status.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(status, target)
    if isinstance(task, SampleTask):
        if task.folder.is_dir():
            target = archive / task.folder.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(task.folder, target)
    elif (task.folder / HELDOUT_FILE).is_file():
        target = archive / task.folder.relative_to(root) / HELDOUT_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(task.folder / HELDOUT_FILE, target)
