"""Growing a sweep folder (hpc_ncsn.sweep.grow): what a rerun with more seeds, arms or axis values, or with
--extend train.steps=N, does to a saved sweep, decided before anything is written; every other change refused."""

import json
from pathlib import Path

import pytest

from hpc_ncsn.sweep.grow import SweepMismatch, prepare, reconcile
from hpc_ncsn.sweep.plan import SweepSpec, plan
from hpc_ncsn.sweep.status import TaskStatus, status_path, write_status

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"


def spec(*overrides: str, **axes) -> SweepSpec:
    return SweepSpec.from_config(DEBUG, {"arm": ["geometric", "linear"], "seed": [0, 1]} | axes, tuple(overrides))


def saved(folder: Path, *overrides: str, **axes) -> Path:
    spec(*overrides, **axes).save(folder)
    return folder


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and isinstance(error.value, SweepMismatch)
    return message


def test_more_seeds_and_arms_add_only_new_cells_and_keep_every_saved_task_as_it_was(tmp_path):
    root = saved(tmp_path)
    before = plan(spec(), root)
    decision = reconcile(root, spec(arm=["geometric", "linear", "snr"], seed=[0, 1, 2]))
    assert decision.kind == "grow" and decision.added == {"arm": ["snr"], "seed": [2]} and decision.reset == ()
    grown = plan(decision.spec, root)
    old = {(t.stage, t.name): t for t in [*before.train, *before.sample]}
    new = {(t.stage, t.name): t for t in [*grown.train, *grown.sample]}
    assert all(new[key] == task for key, task in old.items())  # names, folders, configs, networks
    added = sorted(name for stage, name in set(new) - set(old))
    assert added == ["arm-geometric_seed-2", "arm-geometric_seed-2", "arm-linear_seed-2", "arm-linear_seed-2",
                     "arm-snr_seed-0", "arm-snr_seed-1", "arm-snr_seed-2"]  # 2 trainings, 5 cells
    line = decision.describe(grown)[0]
    assert "5 new cell(s)" in line and "2 new training(s)" in line and "arm + snr; seed + 2" in line
    (root / "audit.json").write_text(json.dumps({"geometric": {"verdict": "as audited then"}}))
    prepare(decision, {"geometric": {"verdict": "as audited now"}, "snr": {"verdict": "settles"}})
    assert json.loads((root / "audit.json").read_text()) == {"geometric": {"verdict": "as audited then"},
                                                             "snr": {"verdict": "settles"}}
    record = json.loads((root / "sweep.json").read_text())
    assert record["axes"] == [["arm", ["geometric", "linear", "snr"]], ["seed", [0, 1, 2]]]
    assert [set(entry) for entry in record["history"]] == [{"time", "grew"}]
    assert record["history"][0]["grew"] == {"arm": ["snr"], "seed": [2]}
    assert reconcile(root, spec(arm=["geometric", "linear", "snr"], seed=[0, 1, 2])).kind == "same"


def test_a_new_axis_value_that_an_arms_sampler_ignores_shares_the_saved_cells_samples(tmp_path):
    """edm ignores sampler.steps_per_level: the grown T=5 cell reads what the saved T=2 cell drew (saved values
    come first in grid order); the geometric arm's T=5 cell draws its own."""
    steps = "sampler.steps_per_level"
    root = saved(tmp_path, arm=["geometric", "edm"], seed=[0], **{steps: [2]})
    decision = reconcile(root, spec(arm=["geometric", "edm"], seed=[0], **{steps: [2, 5]}))
    assert decision.kind == "grow" and decision.added == {steps: [5]}
    shared = {task.name: task.same_as for task in plan(decision.spec, root).sample}
    assert shared == {f"arm-geometric_seed-0_{steps}-2": None, f"arm-geometric_seed-0_{steps}-5": None,
                      f"arm-edm_seed-0_{steps}-2": None,
                      f"arm-edm_seed-0_{steps}-5": root / "cells" / f"arm-edm_seed-0_{steps}-2" / "samples"}


@pytest.mark.parametrize("axes, words", [
    ({"seed": [2]}, "--seeds 2: the sweep in"),
    ({"seed": [1, 0, 2]}, "has seed values 0,1; a sweep grows by new values after those"),
    ({"arm": ["linear", "geometric"]}, "(e.g. --arms geometric,linear)"),
])
def test_a_grid_that_drops_or_reorders_saved_values_is_refused_naming_the_axis(tmp_path, axes, words):
    root = saved(tmp_path)
    with pytest.raises(SweepMismatch) as refused:
        reconcile(root, spec(**axes))
    assert words in one_line(refused)


def test_anything_but_the_grid_is_refused_naming_the_difference(tmp_path):
    root = saved(tmp_path)
    with pytest.raises(SweepMismatch) as refused:
        reconcile(root, spec("train.lr=0.002", seed=[0, 1, 2]))
    assert "base.train.lr: 0.001 → 0.002" in one_line(refused)
    with pytest.raises(SweepMismatch) as refused:
        reconcile(root, SweepSpec.from_config(DEBUG, {"arm": ["geometric", "linear"], "seed": [0, 1],
                                                      "sampler.steps_per_level": [3]}))
    assert "axis 'sampler.steps_per_level' is new" in one_line(refused)
    assert json.loads((root / "sweep.json").read_text()) == json.loads(spec().to_json())  # nothing written


def test_new_values_that_would_change_a_saved_cell_are_refused(tmp_path):
    """A wider σ range puts every network on a wider held-out grid: the saved trainings' configs would change."""
    root = saved(tmp_path, **{"noise.sigma_max": [10.0]})
    with pytest.raises(SweepMismatch) as refused:
        reconcile(root, spec(**{"noise.sigma_max": [10.0, 20.0]}))
    assert "train.heldout_sigma_max: 0.0 → 20.0" in one_line(refused)


def test_training_longer_is_an_explicit_extension_that_resets_the_trainings_and_their_cells_not_the_anchors(tmp_path):
    folder = tmp_path / "sweep"
    first = SweepSpec.from_config(DEBUG, {"arm": ["geometric", "snr"], "seed": [0]}, ("train.steps=4",),
                                  anchors=("untrained",), allow_unstable=("snr",))
    first.save(folder)
    longer = SweepSpec.from_config(DEBUG, first.axes, ("train.steps=4", "train.steps=8"), anchors=("untrained",),
                                   allow_unstable=("snr",))
    with pytest.raises(SweepMismatch) as refused:
        reconcile(folder, longer)
    assert "--extend train.steps=8" in one_line(refused)
    with pytest.raises(SweepMismatch) as refused:
        reconcile(folder, SweepSpec.from_config(DEBUG, first.axes, ("train.steps=2",), anchors=("untrained",),
                                                allow_unstable=("snr",)), extend=True)
    assert "never shorter" in one_line(refused)
    sweep = plan(first, folder)
    for task in [*sweep.train, *sweep.sample]:  # all done, each with its files
        write_status(folder, TaskStatus(task.stage, task.name, "done", started=1.0, finished=2.0))
        if task.stage == "sample":
            task.folder.mkdir(parents=True)
            (task.folder / "metrics.json").write_text('{"fid": 1.0}')
    (folder / "table.md").write_text("the table at 4 steps\n")
    (folder / "report.html").write_text("<p>the page at 4 steps</p>\n")
    decision = reconcile(folder, longer, extend=True)
    assert decision.kind == "extend" and decision.steps == (4, 8)
    assert sorted(task.name for task in decision.reset) == ["arm-geometric_seed-0", "arm-geometric_seed-0",
                                                            "arm-snr_seed-0"]  # the training and both its cells
    grown = plan(decision.spec, folder)
    assert [task.name for task in decision.todo(grown.sample)] == ["arm-geometric_seed-0", "arm-snr_seed-0"]
    prepare(decision)
    history = folder / "history" / "steps-4"
    assert (history / "table.md").read_text() == "the table at 4 steps\n"
    assert (history / "report.html").read_text() == "<p>the page at 4 steps</p>\n"  # its plots and samples inside
    for task in decision.reset:
        moved = history / status_path(folder, task).relative_to(folder)
        assert not status_path(folder, task).exists() and moved.is_file()
    assert (history / "cells" / "arm-snr_seed-0" / "samples" / "metrics.json").is_file()
    anchor = grown.sample[-1]
    assert anchor.name == "anchor-untrained_seed-0" and status_path(folder, anchor).is_file()  # kept
    record = json.loads((folder / "sweep.json").read_text())
    assert record["base"]["train"]["steps"] == 8 and record["history"][0]["extended"] == {"train.steps": [4, 8]}
    assert reconcile(folder, longer, extend=True).kind == "same"  # the same command again: resumes
    with pytest.raises(SweepMismatch) as refused:
        reconcile(folder, first)
    assert "train.steps=8" in one_line(refused)


def test_a_sweep_from_before_the_arm_rename_grows_under_its_own_cell_names(tmp_path):
    record = json.loads(spec().to_json())
    record["axes"] = [["schedule", values] if key == "arm" else [key, values] for key, values in record["axes"]]
    (tmp_path / "sweep.json").write_text(json.dumps(record))
    assert reconcile(tmp_path, spec()).spec.arm_word == "schedule"  # the same sweep, its folders' names
    decision = reconcile(tmp_path, spec(seed=[0, 1, 2]))
    assert decision.kind == "grow"
    assert [task.name for task in plan(decision.spec, tmp_path).sample][2] == "schedule-geometric_seed-2"
    prepare(decision)
    assert SweepSpec.load(tmp_path).arm_word == "schedule"  # still named as its folders are
    assert reconcile(tmp_path, spec(seed=[0, 1, 2])).kind == "same"
