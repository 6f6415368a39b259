"""The ablation table from a sweep folder's files: statistics over seeds, failed and missing cells, stable output."""

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from hpc_ncsn.samples.shards import ShardSpec, write_shard
from hpc_ncsn.sweep.aggregate import aggregate
from hpc_ncsn.sweep.plan import SweepSpec, plan
from hpc_ncsn.sweep.status import TaskStatus, write_status

ROOT = Path(__file__).resolve().parent.parent
FID = {("geometric", 0): 10.0, ("geometric", 1): 12.0, ("geometric", 2): 17.0, ("linear", 0): 30.0,
       ("linear", 1): 34.0}


@pytest.fixture
def sweep_folder(tmp_path):
    """A 2-arm × 3-seed sweep: five cells scored, linear seed 2 failed in training."""
    return make_sweep(tmp_path, [0, 1, 2])


def make_sweep(tmp_path: Path, seeds: list[int], *overrides: str, axes: dict | None = None,
               arms: tuple[str, ...] = ("geometric", "linear"), fids: dict = FID) -> Path:
    """The cells of `seeds` of sweep_folder's sweep, in `tmp_path` (`axes`: further axes), those of `fids` done; a
    cell that shares another's samples (SampleTask.same_as) has only its status, as its job leaves it."""
    spec = SweepSpec.from_config(ROOT / "configs" / "debug.yaml",
                                 {"arm": list(arms), "seed": seeds, **(axes or {})}, overrides)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "sweep.json").write_text(spec.to_json())
    sweep = plan(spec, tmp_path)
    for task in sweep.train:
        failed = task.name == "arm-linear_seed-2"
        write_status(tmp_path, TaskStatus("train", task.name, "failed" if failed else "done", started=1.0,
                                          error="TrainingDiverged: 20 non-finite steps" if failed else None,
                                          log="logs/7_0_log.err" if failed else None))
        task.folder.mkdir(parents=True)
        levels = np.linspace(5.0, 1.0, 6)
        (task.folder / "metrics.jsonl").write_text("".join(
            json.dumps({"step": step, "loss_per_level": list(levels / step)}) + "\n" for step in (1, 2, 3)))
    for task in sweep.sample:
        key = (dict(task.group)["arm"], task.seed)
        if key not in fids:
            continue
        if task.same_as:
            write_status(tmp_path, TaskStatus("sample", task.name, "done", started=1.0, note=task.shares()))
            continue
        task.folder.mkdir(parents=True)
        (task.folder / "metrics.json").write_text(json.dumps(
            {"fid": fids[key], "kid_mean": fids[key] / 1000, "is_mean": 2.0, "n": 500}))
        write_shard(task.folder / "shard-00000.h5", ShardSpec(0, 0, 4), np.full((4, 8, 8, 1), 9, np.uint8), {})
        write_status(tmp_path, TaskStatus("sample", task.name, "done", started=1.0))
    return tmp_path


def test_table_statistics_over_seeds(sweep_folder):
    table = aggregate(sweep_folder)
    geometric, linear = table["rows"]
    assert geometric["group"] == {"arm": "geometric"} and geometric["seeds_done"] == 3
    assert geometric["fid"]["mean"] == pytest.approx(13.0)
    std = math.sqrt(((10 - 13) ** 2 + (12 - 13) ** 2 + (17 - 13) ** 2) / 2)
    assert geometric["fid"]["std"] == pytest.approx(std)
    assert geometric["fid"]["ci95"] == pytest.approx(4.302653 * std / math.sqrt(3), rel=1e-6)
    assert linear["fid"]["mean"] == pytest.approx(32.0) and linear["seeds_done"] == 2
    assert linear["fid"]["ci95"] == pytest.approx(12.706205 * math.sqrt(8) / math.sqrt(2), rel=1e-6)
    assert geometric["n_per_cell"] == 500 and geometric["kid_mean"]["mean"] == pytest.approx(0.013)


def test_failed_and_missing_cells_stay_in_the_table(sweep_folder):
    (sweep_folder / "status" / "sample" / "arm-geometric_seed-2.json").unlink()
    table = aggregate(sweep_folder)
    geometric, linear = table["rows"]
    assert geometric["seeds_done"] == 2 and geometric["problems"] == ["seed 2: pending"]
    assert linear["problems"] == ["seed 2: failed (train: TrainingDiverged: 20 non-finite steps "
                                  "(log: logs/7_0_log.err))"]
    states = {cell["name"]: cell["state"] for cell in table["cells"]}
    assert states["arm-linear_seed-2"] == "failed" and states["arm-geometric_seed-2"] == "pending"
    markdown = (sweep_folder / "table.md").read_text()
    assert "| arm-linear_seed-2 | failed |" in markdown and "2/3" in markdown


def test_one_seed_has_no_spread(sweep_folder):
    for seed in (1, 2):
        (sweep_folder / "status" / "sample" / f"arm-geometric_seed-{seed}.json").unlink()
    geometric = aggregate(sweep_folder)["rows"][0]
    assert geometric["fid"] == {"mean": 10.0, "std": None, "ci95": None}


def test_outputs_are_identical_on_rerun_and_parse(sweep_folder):
    aggregate(sweep_folder)
    first = {name: (sweep_folder / name).read_bytes() for name in ("table.md", "table.csv", "table.json")}
    aggregate(sweep_folder)
    assert first == {name: (sweep_folder / name).read_bytes() for name in first}
    rows = list(csv.DictReader(io.StringIO(first["table.csv"].decode())))
    assert [row["arm"] for row in rows] == ["geometric", "linear"]
    assert float(rows[1]["fid_mean"]) == 32.0 and rows[1]["seeds_done"] == "2"
    for plot in ("fid.png", "loss_per_level.png", "samples.png"):
        assert (sweep_folder / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cell_whose_process_died_without_a_word_is_lost_not_running(sweep_folder):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    write_status(sweep_folder, TaskStatus("sample", "arm-geometric_seed-2", "running", started=1.0,
                                          pid=int(dead.stdout), heartbeat=1.0, log="logs/9_0_log.err"))
    (sweep_folder / "cells" / "arm-geometric_seed-2" / "samples" / "metrics.json").unlink()
    geometric = aggregate(sweep_folder)["rows"][0]
    assert geometric["seeds_done"] == 2
    assert geometric["problems"] == [f"seed 2: lost (sample: its process {dead.stdout.strip()} is gone without a "
                                     "final state; rerun the sweep to resume it (log: logs/9_0_log.err))"]


def test_a_metric_no_cell_could_compute_is_empty_not_an_error(sweep_folder):
    """IS without a classifier (Inception weights without one): null in every report, '–' in the table."""
    for report in sweep_folder.glob("cells/*/samples/metrics.json"):
        (report).write_text(json.dumps({**json.loads(report.read_text()), "is_mean": None}))
    table = aggregate(sweep_folder, plots=False)
    assert [row["is_mean"]["mean"] for row in table["rows"]] == [None, None]
    assert table["rows"][0]["fid"]["mean"] == pytest.approx(13.0)


def test_the_loss_curve_of_a_partial_sweep_keeps_the_finished_seed():
    from hpc_ncsn.sweep.aggregate import mean_over_seeds

    finished = (np.array([10, 20, 30, 40]), np.array([[4.0, 2.0], [3.0, 1.5], [2.0, 1.0], [1.0, 0.5]]))
    running = (np.array([10, 20]), np.array([[6.0, 4.0], [5.0, 3.5]]))
    steps, mean = mean_over_seeds([finished, running])
    assert steps.tolist() == [10, 20, 30, 40]
    assert mean.tolist() == [[5.0, 3.0], [4.0, 2.5], [2.0, 1.0], [1.0, 0.5]]


def test_rows_are_named_as_the_readme_names_the_arms(sweep_folder):
    aggregate(sweep_folder, plots=False)
    rows = [line.split("|")[1].strip() for line in (sweep_folder / "table.md").read_text().splitlines()[2:4]]
    assert rows == ["geometric", "linear"]


def test_fid_over_training_gives_each_row_its_curve_and_best_step(sweep_folder):
    curves = {("geometric", 0): {100: 50.0, 200: 20.0, 300: 25.0}, ("geometric", 1): {100: 40.0, 200: 30.0, 300: 21.0},
              ("geometric", 2): {100: 45.0, 200: 22.0},  # its step 300 was not scored: the row uses 100 and 200
              ("linear", 0): {100: 90.0, 200: 80.0, 300: 70.0}, ("linear", 1): {100: 95.0, 200: 85.0, 300: 60.0}}
    for task in plan(SweepSpec.load(sweep_folder), sweep_folder).sample:
        key = (dict(task.group)["arm"], task.seed)
        if key in curves:
            (task.folder.parent / "over_training").mkdir()
            (task.folder.parent / "over_training" / "fid_vs_step.json").write_text(json.dumps(
                [{"step": step, "fid": fid, "kid_mean": fid / 1000, "n": 100} for step, fid in curves[key].items()]))
    table = aggregate(sweep_folder)
    geometric, linear = table["rows"]
    assert [point["step"] for point in geometric["over_training"]] == [100, 200]
    assert geometric["over_training"][1]["fid"]["mean"] == pytest.approx(24.0)
    assert geometric["best_step"]["step"] == 200 and linear["best_step"]["step"] == 300
    assert linear["best_step"]["fid"]["mean"] == pytest.approx(65.0) and linear["best_step"]["n"] == 100
    assert "| geometric | 3/3 | 500 | 13 |" in (sweep_folder / "table.md").read_text()
    assert "| 200 (24 at N=100) |" in (sweep_folder / "table.md").read_text()
    row = next(csv.DictReader(io.StringIO((sweep_folder / "table.csv").read_text())))
    assert (row["best_step"], row["best_step_fid_mean"], row["best_step_n"]) == ("200", "24.0", "100")
    assert (sweep_folder / "fid_vs_step.png").stat().st_size > 0


def test_without_fid_over_training_the_table_has_no_best_step(sweep_folder):
    table = aggregate(sweep_folder)
    assert all("best_step" not in row for row in table["rows"])
    assert "best step" not in (sweep_folder / "table.md").read_text()
    assert not (sweep_folder / "fid_vs_step.png").exists()


def test_two_folders_of_one_sweep_make_the_table_of_the_whole_sweep(sweep_folder, tmp_path, capsys):
    """Seeds 0,1 in one folder and seed 2 in another: the joined table is the 3-seed folder's, row for row."""
    from hpc_ncsn.cli import main

    whole = aggregate(sweep_folder)
    first, second = make_sweep(tmp_path / "a", [0, 1]), make_sweep(tmp_path / "b", [2])
    assert main(["aggregate", str(first), str(second), "--out", str(tmp_path / "joined")]) == 0
    joined = json.loads((tmp_path / "joined" / "table.json").read_text())
    assert joined["rows"] == whole["rows"] and joined["comparisons"] == whole["comparisons"]
    assert joined["sweeps"] == [str(first), str(second)]
    assert sorted(cell["name"] for cell in joined["cells"]) == sorted(cell["name"] for cell in whole["cells"])
    out = capsys.readouterr().out
    assert "| geometric | 3/3 | 500 | 13 |" in out
    assert out.endswith(f"\nreport: {tmp_path / 'joined' / 'report.html'}\n")  # the page of the joined table
    assert (tmp_path / "joined" / "fid.png").stat().st_size > 0


@pytest.mark.parametrize("second, words", [
    (("b", [2], "train.steps=8"), "differ in more than the grid ("),
    (("b", [1, 2]), "cell arm-geometric_seed-1 is in both"),
])
def test_folders_whose_cells_differ_in_more_than_the_grid_are_refused_in_one_line(tmp_path, capsys, second, words):
    from hpc_ncsn.cli import main

    first = make_sweep(tmp_path / "a", [0, 1])
    name, seeds, *overrides = second
    other = make_sweep(tmp_path / name, seeds, *overrides)
    assert main(["aggregate", str(first), str(other), "--out", str(tmp_path / "joined")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    if overrides:
        assert "base.train.steps: 500 → 8" in err
    assert not (tmp_path / "joined").exists()
    assert main(["aggregate", str(first), str(other)]) == 2 and "add --out DIR" in capsys.readouterr().err


def test_a_cell_sampled_from_a_shorter_training_stays_out_of_its_row(sweep_folder):
    """Its manifest says step 250 of networks the sweep trains 500 steps: a row never mixes training lengths."""
    samples = sweep_folder / "cells" / "arm-geometric_seed-2" / "samples"
    (samples / "manifest.json").write_text(json.dumps({"meta": {"checkpoint_step": 250}, "shards": []}))
    (sweep_folder / "cells" / "arm-geometric_seed-1" / "samples" / "manifest.json").write_text(
        json.dumps({"meta": {"checkpoint_step": 500}, "shards": []}))
    geometric = aggregate(sweep_folder, plots=False)["rows"][0]
    assert geometric["seeds"] == [0, 1] and geometric["fid"]["mean"] == pytest.approx(11.0)
    assert geometric["problems"] == ["seed 2: stale (sampled at step 250 of a network the sweep trains to 500 steps: "
                                     "left out of its row)"]


def test_a_cell_that_shares_another_cells_samples_keeps_its_row_with_the_same_numbers(tmp_path):
    """edm ignores sampler.steps_per_level: its cell at T=5 reads the samples its cell at T=2 drew, and each T
    still compares edm with geometric, seed by seed."""
    fids = {("geometric", 0): 10.0, ("geometric", 1): 12.0, ("edm", 0): 8.0, ("edm", 1): 9.5}
    folder = make_sweep(tmp_path, [0, 1], axes={"sampler.steps_per_level": [2, 5]}, arms=("geometric", "edm"),
                        fids=fids)
    assert not (folder / "cells" / "arm-edm_seed-0_sampler.steps_per_level-5").exists()
    table = aggregate(folder, plots=False)
    edm2, edm5 = table["rows"][2:]
    assert edm5["group"] == {"arm": "edm", "sampler.steps_per_level": 5} and edm5["seeds_done"] == 2
    assert edm5["fid"] == edm2["fid"] and edm5["fid"]["mean"] == pytest.approx(8.75)
    said = "same samples as the row edm, sampler.steps_per_level=2 (edm's sampler ignores sampler.steps_per_level)"
    assert edm5["shares"] == [said] and "shares" not in edm2
    assert {c["setting"]["sampler.steps_per_level"]: (c["arm"], c["paired"], c["differences"])
            for c in table["comparisons"]} == {2: ("edm", True, [-2.0, -2.5]), 5: ("edm", True, [-2.0, -2.5])}
    markdown = (folder / "table.md").read_text()
    assert "| edm, sampler.steps_per_level=5 † | 2/2 | 500 | 8.75 |" in markdown
    assert f"- edm, sampler.steps_per_level=5: {said}" in markdown
    assert said.replace("'", "&#x27;") in (folder / "report.html").read_text()
    # The cell that drew the samples fails: the one that shares them says so, naming it.
    write_status(folder, TaskStatus("sample", "arm-edm_seed-1_sampler.steps_per_level-2", "failed", started=1.0,
                                    error="OutOfMemoryError: CUDA"))
    cells = {cell["name"]: cell for cell in aggregate(folder, plots=False)["cells"]}
    shared = cells["arm-edm_seed-1_sampler.steps_per_level-5"]
    assert shared["same_as"] == "arm-edm_seed-1_sampler.steps_per_level-2"
    assert (shared["state"], shared["detail"]) == ("failed", "sample of arm-edm_seed-1_sampler.steps_per_level-2: "
                                                             "OutOfMemoryError: CUDA")
