"""Several sweep folders as one table: `hpc-ncsn aggregate DIR1 DIR2 ... --out DIR`.

Folders join when their cells differ only in the grid: the same axes, in the same
order, and the same resolved base config and anchors (a folder extended to more
training steps differs in train.steps, so its cells never share a row with shorter
ones). A cell (or anchor) may come from one folder only. The joined grid lists each
axis's values in the order the folders first name them, so the first folder's first
arm stays the baseline of the comparisons. Anything else is refused in one line that
names the folders and the difference.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .aggregate import write_table
from .grow import SweepMismatch
from .plan import SPEC_FILE, Plan, SweepSpec, plan

__all__ = ["aggregate_folders", "combine"]


def combine(roots: list[Path]) -> tuple[SweepSpec, list[Plan]]:
    """One spec (the union of the folders' grids) and each folder's plan; SweepMismatch (one line) when the folders'
    cells differ in more than the grid or a cell is in two of them."""
    roots = [Path(root) for root in roots]
    specs = [SweepSpec.load(root) for root in roots]
    first = specs[0]
    for root, spec in zip(roots[1:], specs[1:]):
        if list(spec.axes) != list(first.axes):
            raise SweepMismatch(f"{root} is a sweep over {', '.join(spec.axes)}, {roots[0]} over "
                                f"{', '.join(first.axes)}: their cells are not rows of one table; aggregate folders "
                                "with the same axes")
        like = dataclasses.replace(first, axes=spec.axes, overrides=spec.overrides, allow_unstable=spec.allow_unstable)
        other = like.differences(spec)
        if other:
            raise SweepMismatch(f"{root} and {roots[0]} differ in more than the grid ({roots[0]} → {root}: "
                                f"{'; '.join(other)}): their cells cannot share a row; aggregate sweeps made with one "
                                "config and options")
    plans = [plan(spec, root) for spec, root in zip(specs, roots)]
    seen: dict[str, Path] = {}
    for sweep in plans:
        for task in sweep.sample:
            if task.name in seen:
                raise SweepMismatch(f"cell {task.name} is in both {seen[task.name]} and {sweep.root}; a cell of the "
                                    "table comes from one folder: leave one of them out")
            seen[task.name] = sweep.root
    axes = {key: list({repr(value): value for spec in specs for value in spec.axes[key]}.values())
            for key in first.axes}
    unstable = tuple(dict.fromkeys(arm for spec in specs for arm in spec.allow_unstable))
    return dataclasses.replace(first, axes=axes, allow_unstable=unstable), plans


def aggregate_folders(roots: list[Path], out: Path, plots: bool = True) -> dict:
    """The table of several sweep folders (combine) in `out`, a folder that is none of theirs."""
    out = Path(out)
    if (out / SPEC_FILE).is_file():
        raise SweepMismatch(f"--out {out} holds a sweep, whose own table this would overwrite; pick another folder "
                            "for the joined table")
    spec, plans = combine(roots)
    out.mkdir(parents=True, exist_ok=True)
    return write_table(out, spec, plans, plots)
