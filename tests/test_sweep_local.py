"""launch/sweep.py on this machine (submitit's local executor): the whole line to the table, rerun, failures."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc_ncsn.samples.shards import read_shard
from hpc_ncsn.config import load_config
from helpers import HANG_GUARD_S, TINY as BASE, network_calls

pytestmark = pytest.mark.slow  # real processes: launch/sweep.py and submitit's local jobs

ROOT = Path(__file__).resolve().parent.parent
TINY = [*BASE, "generate.num_samples=20", "generate.shard_size=10"]
# TINY's 6-level ladder (γ ≈ 3.9) is too coarse for the SNR rule at any r (the sampler audit refuses its snr arm);
# these tests run it anyway, as a user may, through the flag that records it.
UNSTABLE_OK = ["--allow-unstable-sampler", "snr,ancestral"]  # TINY's 6-level ladder (γ = 3.85)


def command(out: Path, *args: str) -> list[str]:
    """launch/sweep.py on `out` with `args`: options first, then KEY=VALUE overrides, which win over TINY's."""
    options = [arg for arg in args if "=" not in arg or arg.startswith("--")]
    overrides = [arg for arg in args if "=" in arg and not arg.startswith("--")]
    return [sys.executable, str(ROOT / "launch" / "sweep.py"), "--out", str(out), *options, *UNSTABLE_OK, *TINY,
            *overrides]


def environment(out: Path) -> dict:
    return {**os.environ, "HPC_NCSN_CACHE": str(out.parent / "cache")}  # threads: the product's own setting


def sweep(out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command(out, *args), env=environment(out), capture_output=True, text=True,
                            timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def summary(result: subprocess.CompletedProcess) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("sweep") / "sweep"
    return out, sweep(out, "--arms", "geometric,linear,snr", "--seeds", "0,1")


def test_sweep_runs_every_cell_to_the_table(finished):
    out, result = finished
    table = json.loads((out / "table.json").read_text())
    assert [row["group"]["arm"] for row in table["rows"]] == ["geometric", "linear", "snr"]
    assert all(row["seeds_done"] == 2 and row["n_per_cell"] == 20 for row in table["rows"])
    assert all(row["fid"]["ci95"] is not None and row["fid"]["mean"] > 0 for row in table["rows"])
    assert "| snr | 2/2 | 20 |" in result.stdout
    for plot in ("fid.png", "loss_per_level.png", "samples.png"):
        assert (out / plot).stat().st_size > 0


def test_the_sweep_as_one_page_in_a_real_browser(finished, browser, tmp_path):
    """report.html as chromium parses it: table.json's rows and paired verdicts, audit.json's verdict of each arm,
    and a grid of each cell's own first samples, pixel for pixel."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from test_report import PNG, dump_dom

    out, result = finished
    assert Path(summary(result)["report"]) == (out / "report.html").resolve()
    page = dump_dom(browser, tmp_path, out / "report.html")
    table = json.loads((out / "table.json").read_text())
    rows = page.body_rows("rows")
    assert [row[0] for row in rows] == [row["group"]["arm"] for row in table["rows"]]
    assert [float(row[3]) for row in rows] == pytest.approx([row["fid"]["mean"] for row in table["rows"]], rel=5e-4)
    assert [row[-1] for row in page.body_rows("comparisons")] == [c["verdict"] for c in table["comparisons"]]
    audit = json.loads((out / "audit.json").read_text())
    assert [(row[0], row[-1]) for row in page.body_rows("audit")] == [(arm, a["verdict"]) for arm, a in audit.items()]
    images = {attrs["alt"]: attrs["src"] for tag, attrs in page.elements if tag == "img"}
    assert all(src.startswith(PNG) for src in images.values())
    for cell in table["cells"]:
        first = read_shard(out / "cells" / cell["name"] / "samples" / "shard-00000.h5")[0][:36, ..., 0]
        side, (h, w) = int(np.ceil(np.sqrt(len(first)))), first.shape[1:]
        expected = np.zeros((side * h, side * w), np.uint8)  # the images row by row in a square, black beyond
        for k, image in enumerate(first):
            row, column = divmod(k, side)
            expected[row * h:(row + 1) * h, column * w:(column + 1) * w] = image
        grid = Image.open(io.BytesIO(base64.b64decode(images[f"samples of {cell['name']}"][len(PNG):])))
        assert np.array_equal(np.asarray(grid), expected)


def test_the_snr_arm_samples_the_geometric_network(finished):
    out, _ = finished
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "arm-geometric_seed-0", "arm-geometric_seed-1", "arm-linear_seed-0", "arm-linear_seed-1"]
    attrs = read_shard(out / "cells" / "arm-snr_seed-1" / "samples" / "shard-00000.h5")[2]
    assert attrs["arm"] == "snr" and attrs["seed"] == 1
    assert attrs["run"] == "../../../train/arm-geometric_seed-1"  # relative: the folder may move


def test_rerun_skips_finished_tasks_and_rewrites_the_same_table(finished):
    out, _ = finished
    table = (out / "table.json").read_bytes()
    logs = sorted(p.name for p in (out / "logs").iterdir())
    again = summary(sweep(out, "--schedules", "geometric,linear,snr", "--seeds", "0,1"))  # the same flag
    assert set(again["seconds"]) == {"train", "sample", "aggregate"} and again["failed"] == []
    new_logs = sorted(set(p.name for p in (out / "logs").iterdir()) - set(logs))
    assert len(new_logs) == 1  # only the aggregation ran again
    assert (out / "table.json").read_bytes() == table


def test_a_different_sweep_in_the_same_folder_is_refused_alike_by_dry_run_and_run(finished):
    out, _ = finished
    spec = (out / "sweep.json").read_bytes()
    for args, words in [(("--arms", "geometric", "--seeds", "0,1"), "a sweep grows by new values after those"),
                        (("--arms", "geometric,linear,snr", "--seeds", "0,1", "train.lr=0.002"),
                         "holds another sweep"),
                        (("--arms", "geometric,linear,snr", "--seeds", "0,1", "train.steps=8"),
                         "--extend train.steps=8")]:
        planned, real = sweep(out, *args, "--dry-run", check=False), sweep(out, *args, check=False)
        assert planned.returncode == real.returncode == 2 and planned.stdout == real.stdout == ""
        assert planned.stderr == real.stderr and real.stderr.count("\n") == 1 and words in real.stderr, real.stderr
    assert (out / "sweep.json").read_bytes() == spec


def planned_runs(dry_run: str) -> list[tuple[str, str]]:
    """(stage, task) of every task a --dry-run says the run starts."""
    runs, stage = [], None
    for line in dry_run.splitlines():
        stage = "train" if line.startswith("train (") else "sample" if line.startswith("sample + evaluate (") else stage
        if line.endswith(" [runs]"):
            runs.append((stage, line.split(":")[0].strip()))
    return sorted(runs)


def started(result: subprocess.CompletedProcess) -> list[tuple[str, str]]:
    """(stage, task) of every task the run started (the launcher's '[stage] task: job …' lines)."""
    return sorted(tuple(line[1:].split(": job")[0].split("] ")) for line in result.stdout.splitlines()
                  if ": job " in line and not line.startswith("[aggregate]"))


def per_cell_lines(table: str) -> dict[str, str]:
    return {line.split("|")[1].strip(): line for line in table.split("Per cell:")[1].splitlines() if "_seed-" in line}


def test_a_grown_sweep_runs_only_its_new_cells_and_keeps_the_old_ones_byte_for_byte(finished, tmp_path):
    """Seed 2 and the ode arm on the finished 3-arm × 2-seed sweep (in a copy): only seed 2's two networks
    train, only the six new cells sample; every old cell's files and table lines stay as they were."""
    import shutil

    out, _ = finished
    grown = tmp_path / "grown" / "sweep"
    shutil.copytree(out, grown)
    before = {path: path.read_bytes() for path in grown.glob("cells/*/samples/*") if path.is_file()}
    old_cells = per_cell_lines((grown / "table.md").read_text())
    args = ("--cluster", "debug", "--arms", "geometric,linear,snr,ode", "--seeds", "0,1,2")
    planned = sweep(grown, *args, "--dry-run").stdout
    assert "grows the sweep: arm + ode; seed + 2: 6 new cell(s)" in planned and "2 new training(s)" in planned
    result = sweep(grown, *args)
    assert summary(result)["failed"] == []
    assert started(result) == planned_runs(planned) == sorted(
        [("train", "arm-geometric_seed-2"), ("train", "arm-linear_seed-2")]
        + [("sample", f"arm-{arm}_seed-2") for arm in ("geometric", "linear", "snr")]
        + [("sample", f"arm-ode_seed-{seed}") for seed in (0, 1, 2)])
    assert {path: path.read_bytes() for path in before} == before  # shards, manifests, metrics.json
    new_cells = per_cell_lines((grown / "table.md").read_text())
    assert {name: new_cells[name] for name in old_cells} == old_cells and len(new_cells) == 12
    record = json.loads((grown / "sweep.json").read_text())
    assert record["history"][0]["grew"] == {"arm": ["ode"], "seed": [2]}
    again = sweep(grown, *args, "--dry-run").stdout
    assert "resumes what is not done" in again and planned_runs(again) == []


def test_training_longer_resumes_the_networks_and_samples_their_cells_again(tmp_path):
    out = tmp_path / "sweep"
    args = ("--cluster", "debug", "--arms", "geometric", "--seeds", "0")
    sweep(out, *args)
    cell = out / "cells" / "arm-geometric_seed-0" / "samples"
    report, log = (cell / "metrics.json").read_bytes(), (out / "train" / "arm-geometric_seed-0" / "metrics.jsonl")
    lines = log.read_text().splitlines()
    planned = sweep(out, *args, "--extend=train.steps=8", "--dry-run").stdout
    assert "extends training from 4 to 8 steps: 1 training(s) resume from their checkpoints" in planned
    # Its cost: the 4 steps left of batch 16, the grid of step 8 (4 images; sample_every=1000: the last step only),
    # the cell's 20 samples again; at the rate its training logged last.
    calls = network_calls(load_config(out / "train" / "arm-geometric_seed-0" / "config.yaml"))
    logged = json.loads(lines[-1])["images_per_s"]
    assert f"  train: 1 network(s), {4 * 16:,} training images (each through the network and back; the largest task " \
           f"{4 * 16:,}), and {4 * calls:,} network evaluations for their sample grids" in planned
    assert f"  sample: 20 samples drawn, {20 * calls:,} network evaluations (the largest task {20 * calls:,})\n" \
        in planned
    assert f"  at the {logged:,.0f} images/s its trainings logged last: " in planned
    result = sweep(out, *args, "--extend=train.steps=8")
    assert started(result) == planned_runs(planned) == [("sample", "arm-geometric_seed-0"),
                                                       ("train", "arm-geometric_seed-0")]
    assert log.read_text().splitlines()[:len(lines)] == lines  # resumed at step 4, not trained again from 0
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [2, 4, 6, 8]
    assert json.loads((cell / "manifest.json").read_text())["meta"]["checkpoint_step"] == 8
    assert (out / "history" / "steps-4" / "cells" / "arm-geometric_seed-0" / "samples" / "metrics.json"
            ).read_bytes() == report
    table = json.loads((out / "table.json").read_text())
    assert table["rows"][0]["training_images"]["mean"] == 8 * 16 and table["rows"][0]["seeds_done"] == 1
    assert sorted(path.name for path in (out / "train" / "arm-geometric_seed-0" / "samples").glob("*.png")) == \
        ["step-00000004.png", "step-00000008.png"]  # the grids the cost counted: one per run's last step
    assert "  nothing: every task is done" in sweep(out, *args, "--extend=train.steps=8", "--dry-run").stdout
    assert json.loads((out / "sweep.json").read_text())["history"][0]["extended"] == {"train.steps": [4, 8]}


def test_status_lists_every_task(finished):
    out, _ = finished
    lines = sweep(out, "--status", "--arms", "geometric,linear,snr", "--seeds", "0,1").stdout.splitlines()
    assert len(lines) == 1 + 4 + 6 + 1 and all(" done " in line for line in lines[1:])


def test_a_failed_training_fails_its_cells_and_spares_the_others(tmp_path):
    out = tmp_path / "sweep"
    bad = out / "train" / "arm-linear_seed-0"
    bad.mkdir(parents=True)
    (bad / "config.yaml").write_text("data:\n  name: digits\n  image_size: 16\n")  # someone else's run
    result = sweep(out, "--arms", "geometric,linear", "--seeds", "0", check=False)
    assert result.returncode == 1
    assert summary(result)["failed"] == ["sample/arm-linear_seed-0", "train/arm-linear_seed-0"]
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert rows[0]["seeds_done"] == 1 and rows[0]["problems"] == []
    assert rows[1]["seeds_done"] == 0 and "another config" in rows[1]["problems"][0]
    status = sweep(out, "--status", "--arms", "geometric,linear", "--seeds", "0").stdout
    assert "failed" in status and "log:" in status


def test_debug_cluster_runs_everything_in_one_process(tmp_path):
    out = tmp_path / "sweep"
    result = sweep(out, "--cluster", "debug", "--arms", "linear", "--seeds", "3")
    assert "[train] arm-linear_seed-3: done" in result.stdout
    statuses = [json.loads(p.read_text()) for p in (out / "status").glob("*/*.json")]
    assert len(statuses) == 3 and all(s["state"] == "done" for s in statuses)
    assert len({s["pid"] for s in statuses}) == 1  # submitit's DebugExecutor: all in the sweep's own process
    row = json.loads((out / "table.json").read_text())["rows"][0]
    assert row["seeds_done"] == 1 and row["seeds"] == [3] and row["fid"]["mean"] > 0


def container_like(folder: Path) -> tuple[str, Path]:
    """A stand-in for `apptainer exec img.sif`: a wrapper that notes each command it runs, then runs it.
    Returns (the --python command, the file of noted commands)."""
    noted = folder / "started.txt"
    wrapper = folder / "exec-in-image"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {noted}\nexec "$@"\n')
    wrapper.chmod(0o755)
    return f"{wrapper} {sys.executable}", noted


def test_every_local_task_starts_through_the_python_command(tmp_path):
    python, noted = container_like(tmp_path)
    out = tmp_path / "sweep"
    result = sweep(out, "--python", python, "--arms", "linear", "--seeds", "3")
    assert result.stdout.startswith(f"tasks start with: {python} → {sys.executable}: hpc_ncsn ")
    started = noted.read_text().splitlines()
    assert started[0].startswith(f"{sys.executable} -c ")  # the check before anything ran
    assert started[1:] == [f"{sys.executable} -u -m submitit.core._submit {out / 'logs' / '%j'}"] * 3  # the tasks
    assert json.loads((out / "table.json").read_text())["rows"][0]["seeds_done"] == 1


def test_local_cluster_runs_each_task_in_its_own_process(finished):
    out, _ = finished
    statuses = [json.loads(p.read_text()) for p in (out / "status").glob("*/*.json")]
    assert len({s["pid"] for s in statuses}) == len(statuses) == 4 + 6 + 1
    logs = {p.name for p in (out / "logs").iterdir()}  # one folder per job (a rerun adds its own), no "%j"
    assert {s["job_id"] for s in statuses} <= logs and all(name.isdigit() for name in logs)


def test_local_tasks_run_side_by_side_with_the_cpus_shared_among_them(finished):
    out, _ = finished
    visible = len(os.sched_getaffinity(0))
    if visible < 2 or __import__("torch").cuda.is_available():
        pytest.skip("one CPU, or a GPU: one task at a time")
    trainings = sorted((s["started"], s["finished"]) for s in
                       (json.loads(p.read_text()) for p in (out / "status" / "train").glob("*.json")))
    assert any(earlier[1] > later[0] for earlier, later in zip(trainings, trainings[1:]))  # two ran at once
    at_once = min(visible, 8)  # one task per CPU, at most 8
    for metrics in (out / "cells").glob("*/samples/metrics.json"):
        assert json.loads(metrics.read_text())["environment"]["threads_per_process"] == visible // at_once
    statuses = [json.loads(p.read_text()) for p in (out / "status").glob("*/*.json")]
    assert {status["threads"] for status in statuses} == {visible // at_once}  # what each task chose, recorded



def test_a_cell_samples_as_soon_as_its_own_network_is_trained(tmp_path):
    """Two networks, one trained 75 times longer, two tasks at a time: the short network's cell starts while the
    long one still trains (no stage barrier), each cell after its own training, the table after every cell; a
    stage's seconds span its first task's start to its last task's end."""
    out = tmp_path / "sweep"
    result = sweep(out, "--arms", "geometric", "--seeds", "0", "--local-parallel", "2", "--axis=train.steps=4,300",
                   "train.checkpoint_every=100")
    short, long = "arm-geometric_seed-0_train.steps-4", "arm-geometric_seed-0_train.steps-300"
    train, sample = ({name: json.loads((out / "status" / stage / f"{name}.json").read_text()) for name in (short, long)}
                     for stage in ("train", "sample"))
    assert sample[short]["started"] < train[long]["finished"]  # the overlap the stage barrier forbade
    assert all(train[name]["finished"] < sample[name]["started"] for name in (short, long))
    table = json.loads((out / "status" / "aggregate" / "table.json").read_text())
    assert table["started"] > max(status["finished"] for status in sample.values())
    seconds = summary(result)["seconds"]  # the launcher's span holds its tasks' own (0.1 s: its rounding)
    assert seconds["train"] >= train[long]["finished"] - min(status["started"] for status in train.values()) - 0.1
    assert seconds["sample"] >= sample[long]["finished"] - sample[short]["started"] - 0.1

def test_a_failing_task_opens_no_debugger_without_a_terminal_and_its_siblings_go_on(tmp_path):
    out = tmp_path / "sweep"
    bad = out / "train" / "arm-linear_seed-0"
    bad.mkdir(parents=True)
    (bad / "config.yaml").write_text("data:\n  name: digits\n  image_size: 16\n")  # someone else's run
    result = sweep(out, "--cluster", "debug", "--arms", "geometric,linear", "--seeds", "0", check=False)
    assert result.returncode == 1
    assert summary(result)["failed"] == ["sample/arm-linear_seed-0", "train/arm-linear_seed-0"]
    assert json.loads((out / "table.json").read_text())["rows"][0]["seeds_done"] == 1


def test_an_extra_axis_runs_and_reruns_with_the_cells_it_named(tmp_path):
    """The edm sampler ignores sampler.steps_per_level: its cell at T=2 shares the samples its cell at T=1 draws."""
    out = tmp_path / "sweep"
    args = ("--arms", "geometric,edm", "--seeds", "0", "--axis=sampler.steps_per_level=1,2", "--axis=data.channels=1")
    first = sweep(out, *args)
    assert summary(first)["failed"] == []
    table = json.loads((out / "table.json").read_text())
    rows = table["rows"]
    assert [row["group"] for row in rows] == [
        {"arm": arm, "sampler.steps_per_level": steps, "data.channels": 1} for arm in ("geometric", "edm")
        for steps in (1, 2)]
    assert all(row["seeds_done"] == 1 for row in rows)
    assert len(list((out / "train").iterdir())) == 1  # the sampler axis shares one training
    drew = {path.parent.parent.name for path in (out / "cells").glob("*/samples/shard-*.h5")}
    edm = "arm-edm_seed-0_sampler.steps_per_level-{}_data.channels-1"
    assert edm.format(1) in drew and edm.format(2) not in drew and len(drew) == 3  # edm's cells drew once
    assert rows[3]["fid"] == rows[2]["fid"] and rows[3]["fid"]["mean"] > 0
    said = "(edm's sampler ignores sampler.steps_per_level)"
    assert f"edm, sampler.steps_per_level=2, data.channels=1: same samples as the row edm, " \
           f"sampler.steps_per_level=1, data.channels=1 {said}" in (out / "table.md").read_text()
    assert sorted(c["setting"]["sampler.steps_per_level"] for c in table["comparisons"] if c["arm"] == "edm") == [1, 2]
    status = json.loads((out / "status" / "sample" / f"{edm.format(2)}.json").read_text())
    assert status["state"] == "done" and status["note"] == f"shares the samples of cell {edm.format(1)} {said}"
    assert summary(sweep(out, *args))["failed"] == []


LONG = ("--arms", "geometric", "--seeds", "0", "train.steps=300", "train.checkpoint_every=20",
        "train.log_every=10")


def start(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(command(out, *args), env=environment(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)


def training_status(out: Path, min_step: int, timeout: float = HANG_GUARD_S) -> dict:
    """The training task's status once it runs and has logged `min_step`."""
    status, metrics = out / "status" / "train" / "arm-geometric_seed-0.json", \
        out / "train" / "arm-geometric_seed-0" / "metrics.jsonl"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if status.is_file() and metrics.is_file():
            lines = [line for line in metrics.read_text().splitlines() if line.endswith("}")]
            if lines and json.loads(lines[-1])["step"] >= min_step:
                return json.loads(status.read_text())
        time.sleep(0.2)
    raise AssertionError(f"the training did not reach step {min_step}")


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("undisturbed") / "sweep"
    sweep(out, *LONG)
    return json.loads((out / "table.json").read_text())


def test_a_second_launcher_on_the_same_folder_is_refused_and_cancel_stops_the_first(undisturbed, tmp_path):
    out = tmp_path / "sweep"
    first = start(out, *LONG)
    try:
        status = training_status(out, min_step=30)
        second = sweep(out, *LONG, check=False)
        assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1
        assert f"is in use by launch/sweep.py --cluster local (host" in second.stderr
        assert f"pid {first.pid}" in second.stderr and "--cancel --out" in second.stderr
        cancelled = sweep(out, "--cancel", check=False)
        assert cancelled.returncode == 0 and f"pid {first.pid}" in cancelled.stdout
        stdout, _ = first.communicate(timeout=HANG_GUARD_S)
    finally:
        first.kill()
    assert first.returncode == 1
    assert "[train] arm-geometric_seed-0: CANCELLED (stop requested (SIGTERM) at step " in stdout
    ended = json.loads(stdout.strip().splitlines()[-1])  # one key per state, as Slurm's --wait says it
    assert ended["cancelled"] == ["aggregate/table", "sample/arm-geometric_seed-0", "train/arm-geometric_seed-0"]
    assert ended["failed"] == ended["lost"] == ended["done"] == [] and ended["table"] is None
    final = json.loads((out / "status" / "train" / "arm-geometric_seed-0.json").read_text())
    assert final["state"] == "cancelled" and "SIGTERM" in final["error"] and final["pid"] == status["pid"]
    assert json.loads((out / "status" / "sample" / "arm-geometric_seed-0.json").read_text())["state"] == \
        "cancelled"
    lines = sweep(out, "--status").stdout.splitlines()
    assert lines[1].split()[:3] == ["train", "arm-geometric_seed-0", "cancelled"]
    # A rerun resumes from the checkpoint saved at the cancel and ends with the undisturbed numbers.
    again = summary(sweep(out, *LONG))
    assert again["failed"] == again["cancelled"] == [] and len(again["done"]) == 3 and again["table"]
    resumed = json.loads((out / "status" / "train" / "arm-geometric_seed-0.json").read_text())
    log = Path(resumed["log"])  # the .err file, where the progress bar is; prints go to the .out beside it
    assert log.suffix == ".err" and "train:" in log.read_text()
    assert resumed["state"] == "done" and resumed["attempts"] == 2 and "resumed from" in log.with_suffix(".out").read_text()
    assert json.loads((out / "table.json").read_text())["rows"] == undisturbed["rows"]


def test_a_training_killed_without_a_word_is_lost_and_a_rerun_finishes_it(undisturbed, tmp_path):
    out = tmp_path / "sweep"
    first = start(out, *LONG)
    try:
        status = training_status(out, min_step=30)
        os.kill(status["pid"], signal.SIGKILL)  # an OOM kill or kill -9: no status written
        stdout, _ = first.communicate(timeout=HANG_GUARD_S)
    finally:
        first.kill()
    assert first.returncode == 1
    ended = json.loads(stdout.strip().splitlines()[-1])
    assert ended["lost"] == ["train/arm-geometric_seed-0"] and ended["cancelled"] == []
    lines = sweep(out, *LONG[:4], "--status").stdout.splitlines()
    train_line = next(line for line in lines if line.startswith("train"))
    assert train_line.split()[2] == "lost" and "gone without a final state" in train_line
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert rows[0]["seeds_done"] == 0 and "lost" in rows[0]["problems"][0]
    assert summary(sweep(out, *LONG))["failed"] == []
    assert json.loads((out / "table.json").read_text())["rows"] == undisturbed["rows"]


def test_a_moved_sweep_folder_resumes_without_redrawing_its_shards(finished, tmp_path):
    import shutil

    out, _ = finished
    moved = tmp_path / "elsewhere" / "sweep"
    shutil.copytree(out, moved)
    cell = moved / "cells" / "arm-snr_seed-0" / "samples"
    (moved / "status" / "sample" / "arm-snr_seed-0.json").unlink()  # this cell's sampling runs again
    (cell / "metrics.json").unlink()
    shards = {p.name: p.stat().st_mtime_ns for p in cell.glob("shard-*.h5")}
    again = sweep(moved, "--arms", "geometric,linear,snr", "--seeds", "0,1")
    assert summary(again)["failed"] == [] and "[sample] arm-snr_seed-0: done" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in cell.glob("shard-*.h5")} == shards  # kept, not redrawn
    assert json.loads((moved / "table.json").read_text())["rows"] == json.loads((out / "table.json").read_text())["rows"]


def test_a_sweep_made_before_the_arm_rename_resumes_where_it_is(finished, tmp_path):
    """An older sweep folder: its axis was `schedule` in sweep.json, its cells, runs and status files were named
    schedule-<arm>_seed-<n>. Built here by renaming a finished sweep's back; the documented command resumes it."""
    import shutil

    out, _ = finished
    old = tmp_path / "old" / "sweep"
    shutil.copytree(out, old)
    for folder in [old / "cells", old / "train", *(old / "status").iterdir()]:
        for path in folder.iterdir():
            path.rename(path.with_name(path.name.replace("arm-", "schedule-", 1)))
    record = json.loads((old / "sweep.json").read_text())
    record["axes"] = [["schedule" if key == "arm" else key, values] for key, values in record["axes"]]
    (old / "sweep.json").write_text(json.dumps(record))
    for status in (old / "status").rglob("*.json"):
        status.write_text(status.read_text().replace('"arm-', '"schedule-'))
    (old / "status" / "sample" / "schedule-snr_seed-0.json").unlink()  # this cell's scoring runs again
    (old / "cells" / "schedule-snr_seed-0" / "samples" / "metrics.json").unlink()
    for table in old.glob("table.*"):
        table.unlink()
    again = sweep(old, "--schedules", "geometric,linear,snr", "--seeds", "0,1")
    assert summary(again)["failed"] == [] and "[train]" not in again.stdout  # every training is done
    assert "[sample] schedule-snr_seed-0: done" in again.stdout  # the one cell not done, under its own name
    table = json.loads((old / "table.json").read_text())
    assert table["rows"] == json.loads((out / "table.json").read_text())["rows"]  # rows keyed by "arm"
    assert [cell["name"] for cell in table["cells"]][:2] == ["schedule-geometric_seed-0", "schedule-geometric_seed-1"]
    assert json.loads((old / "sweep.json").read_text()) == record  # read as migrated, never rewritten
    status = sweep(old, "--status").stdout.splitlines()
    assert all(line.split()[2] == "done" for line in status[1:]), status


def test_fid_over_training_scores_every_snapshot_of_each_cell_and_the_table_names_the_best_step(tmp_path):
    out = tmp_path / "sweep"
    result = sweep(out, "--arms", "geometric,snr", "--seeds", "0", "train.steps=4", "train.eval_every=2",
                   "train.eval_samples=20", "train.keep_checkpoints=1")
    snapshots = out / "train" / "arm-geometric_seed-0" / "snapshots"
    assert sorted(p.name for p in snapshots.iterdir()) == ["step-00000002", "step-00000004"]  # never rotated
    for cell in ("arm-geometric_seed-0", "arm-snr_seed-0"):
        curve = json.loads((out / "cells" / cell / "over_training" / "fid_vs_step.json").read_text())
        assert [point["step"] for point in curve] == [2, 4] and all(point["n"] == 20 for point in curve)
        # The last snapshot is the final EMA, drawn with the same seed and N: the cell's own samples and FID.
        assert curve[-1]["fid"] == json.loads((out / "cells" / cell / "samples" / "metrics.json").read_text())["fid"]
        for point in curve:  # each point is the report of a real sample folder of that snapshot
            folder = out / "cells" / cell / "over_training" / f"step-0000000{point['step']}"
            assert json.loads((folder / "metrics.json").read_text())["fid"] == point["fid"]
            assert read_shard(folder / "shard-00000.h5")[2]["checkpoint_step"] == point["step"]
    snr = json.loads((out / "cells" / "arm-snr_seed-0" / "over_training" / "step-00000004" / "metrics.json")
                     .read_text())
    geometric = json.loads((out / "cells" / "arm-geometric_seed-0" / "over_training" / "step-00000004" /
                            "metrics.json").read_text())
    assert snr["fid"] != geometric["fid"]  # one network, each cell's own sampler
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert all(row["best_step"]["step"] in (2, 4) for row in rows)
    assert "best step (FID)" in result.stdout and (out / "fid_vs_step.png").stat().st_size > 0


def test_six_arms_run_to_a_table_with_paired_verdicts_and_what_each_cell_cost(finished, tmp_path):
    """The finished three-arm sweep (a copy) grown by three arms: their cells sample its networks (the same ones a
    six-arm sweep from scratch trains, as the Slurm test's does)."""
    import shutil

    out = tmp_path / "sweep"
    shutil.copytree(finished[0], out)
    arms = ["geometric", "linear", "snr", "linear-sampled", "edm", "ancestral"]
    result = sweep(out, "--arms", ",".join(arms), "--seeds", "0,1")
    assert "[train]" not in result.stdout and result.stdout.count("[sample] ") == 2 * 6  # job line, done line
    statuses = [json.loads(p.read_text()) for p in (out / "status" / "train").glob("*.json")]
    assert len(statuses) == 4  # trainings: geometric and linear, 2 seeds; the other arms sample geometric's
    table = json.loads((out / "table.json").read_text())
    assert [row["group"]["arm"] for row in table["rows"]] == arms
    cells = {(cell["group"]["arm"], cell["seed"]): cell for cell in table["cells"]}
    for (arm, seed), cell in cells.items():
        assert cell["state"] == "done"
        assert cell["train"] == f"arm-{'linear' if arm == 'linear' else 'geometric'}_seed-{seed}"
    nfe = {arm: cells[arm, 0]["extra"]["nfe"] for arm in arms}
    levels, steps = 6, 2  # TINY: L = 6, T = 2, and a final denoising step
    assert nfe == {"geometric": levels * steps + 1, "linear": levels * steps + 1, "snr": levels * steps + 1,
                   "linear-sampled": levels * steps + 1, "edm": 35, "ancestral": levels}
    comparisons = {c["arm"]: c for c in table["comparisons"]}
    assert set(comparisons) == set(arms) - {"geometric"} and all(c["baseline"] == "geometric" for c in comparisons.values())
    assert not comparisons["linear"]["paired"] and all(comparisons[arm]["paired"] for arm in arms[2:])
    for arm in arms[2:]:  # the paired differences are the cells' own FIDs, seed by seed
        expected = [cells[arm, s]["metrics"]["fid"] - cells["geometric", s]["metrics"]["fid"] for s in (0, 1)]
        assert comparisons[arm]["differences"] == pytest.approx(expected, rel=1e-12)
        assert comparisons[arm]["verdict"] in ("better", "worse", "no difference seen at 95 %")
    assert table["audit"]["snr"]["verdict"] == "unsettled, run anyway: --allow-unstable-sampler given"
    assert table["audit"]["edm"]["verdict"] == "settles" and table["audit"]["edm"]["kind"] == "edm"
    # TINY's 6 levels (γ = 3.85): the ancestral step lands a level behind, 3.85 σ_L, above the limit
    assert table["audit"]["ancestral"]["verdict"] == "unsettled, run anyway: --allow-unstable-sampler given"
    markdown = (out / "table.md").read_text()
    assert "Against geometric, FID difference" in markdown and "cannot be seen" in markdown
    for plot in ("paired.png", "fid_vs_nfe.png"):
        assert (out / plot).stat().st_size > 0
    assert "| edm | 2/2 | 20 |" in result.stdout
