"""launch/sweep.py --cluster slurm on a real Slurm started on this machine by slurm/local-cluster.sh.

The cluster has two simulated nodes (two slurmd on this host) and a MaxArraySize of 8 (a
site's low limit: a stage of more tasks is split into several arrays). It is started once
for this module and stopped at the end, stopping exactly what the script started.
Needs root (to install and run the daemons) or an already installed Slurm + munge.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers import HANG_GUARD_S, TINY

pytestmark = pytest.mark.slow  # a real Slurm on this machine, real jobs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "slurm" / "local-cluster.sh"
SWEEP = [*TINY, "generate.num_samples=20", "generate.shard_size=10"]
# TINY's 6-level ladder (γ ≈ 3.9) is too coarse for the SNR rule at any r (the sampler audit refuses its snr arm);
# these tests run it anyway, as a user may, through the flag that records it.
UNSTABLE_OK = ["--allow-unstable-sampler", "snr,ancestral"]  # TINY's 6-level ladder (γ = 3.85)
MAX_ARRAY_SIZE = 8  # the cluster's MaxArraySize: the six-arm sweep's 12 cells need two sample arrays


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if os.geteuid() != 0 and shutil.which("slurmctld") is None:
        pytest.skip("needs root to install Slurm, or an installed slurmctld/slurmd/munge")
    folder = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "HPC_NCSN_SLURM_DIR": str(folder / "cluster")}
    started = subprocess.run(["bash", str(SCRIPT), "start", "--nodes", "2", "--max-array-size", str(MAX_ARRAY_SIZE)],
                             env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert started.returncode == 0, started.stderr[-3000:]
    conf = str(folder / "cluster" / "slurm.conf")
    try:
        yield {"SLURM_CONF": conf, "HPC_NCSN_CACHE": str(folder / "cache"), "HPC_NCSN_SLURM_DIR": str(folder / "cluster")}
    finally:
        stopped = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True,
                                 timeout=HANG_GUARD_S)
        assert stopped.returncode == 0, stopped.stderr
        assert not (folder / "cluster" / "started.list").exists()
        assert not leftovers(conf), "stop left processes of its cluster running"


def leftovers(conf: str) -> list[str]:
    """Live processes started by the cluster of `conf` (daemons, job steps, job processes)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split(")")[-1].split()[0]
        except (OSError, IndexError):
            continue
        if f"SLURM_CONF={conf}".encode() in environ and state != "Z" and int(proc.name) != os.getpid():
            found.append((proc / "cmdline").read_text().replace("\0", " "))
    return found


def sweep(cluster: dict, out: Path, *args: str, timeout: int = HANG_GUARD_S, check: bool = True, wait: bool = True):
    command = [sys.executable, str(ROOT / "launch" / "sweep.py"), "--cluster", "slurm", "--out", str(out),
               *(["--wait"] if wait else []), *UNSTABLE_OK, *args]
    result = subprocess.run(command, env={**os.environ, **cluster}, capture_output=True, text=True,
                            timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def counting_squeue(folder: Path) -> tuple[dict, Path]:
    """A PATH entry whose `squeue` notes who called it (the job's array id, or `launcher`) and runs the real one."""
    calls, bin_dir = folder / "squeue-calls.txt", folder / "bin"
    bin_dir.mkdir()
    (bin_dir / "squeue").write_text(f'#!/bin/sh\necho "${{SLURM_ARRAY_JOB_ID:-${{SLURM_JOB_ID:-launcher}}}}" >> {calls}\n'
                                    f'exec {shutil.which("squeue")} "$@"\n')
    (bin_dir / "squeue").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, calls


def test_sweep_of_six_arms_and_two_seeds_reaches_the_paired_table(cluster, tmp_path):
    """... in arrays split to fit MaxArraySize, every task run once, Slurm asked once per poll of the sweep."""
    out = tmp_path / "sweep"
    arms = ["geometric", "linear", "snr", "linear-sampled", "edm", "ancestral"]
    path, calls = counting_squeue(tmp_path)
    start = time.time()
    result = sweep({**cluster, **path}, out, "--schedules", ",".join(arms), "--seeds", "0,1", "--poll-s", "1",
                   *SWEEP)
    print(f"slurm sweep 6 arms x 2 seeds: {time.time() - start:.1f} s")
    # One squeue before submitting (jobs of an earlier launch to attach to?), then one per poll: each poll but the
    # last (nothing live) prints a line at --poll-s 1. The jobs never ask, but the table's, once.
    polls = [line for line in result.stdout.splitlines() if re.match(r"\d\d:\d\d:\d\d .* job\(s\) live", line)]
    callers = calls.read_text().split()
    assert callers.count("launcher") == 1 + len(polls) + 1 and len(polls) >= 1, (callers, result.stdout)
    aggregate_job = json.loads((out / "status" / "aggregate" / "table.json").read_text())["job_id"]
    assert sorted(set(callers) - {"launcher"}) == [aggregate_job.split("_")[0]] and len(callers) == len(polls) + 3
    status = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--status", "--out", str(out)],
                            env={**os.environ, **cluster, **path}, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert status.returncode == 0 and len(calls.read_text().split()) == len(callers) + 1  # one for 17 tasks
    # 12 cells > MaxArraySize: the sample stage in two arrays (8 + 4 tasks); every task ran once.
    jobs = json.loads((out / "submitted.json").read_text())[0]["jobs"]
    assert [len(jobs[stage]["arrays"]) for stage in ("train", "sample", "aggregate")] == [1, 2, 1]
    assert sorted(set(jobs["sample"]["tasks"].values())) == sorted(
        f"{array}_{index}" for array, count in zip(jobs["sample"]["arrays"], (8, 4)) for index in range(count))
    table = json.loads((out / "table.json").read_text())
    assert [(row["group"]["arm"], row["seeds_done"]) for row in table["rows"]] == [(arm, 2) for arm in arms]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["failed"] == [] and set(summary["jobs"]) == {"train", "sample", "aggregate"}
    statuses = [json.loads(p.read_text()) for p in (out / "status").glob("*/*.json")]
    # trainings: geometric and linear per seed; every other arm samples the geometric network
    assert len(statuses) == 4 + 12 + 1 and all(s["state"] == "done" and s["job_id"] for s in statuses)
    assert all(s["attempts"] == 1 for s in statuses) and len({s["job_id"] for s in statuses}) == 17
    paired = {c["arm"]: c["paired"] for c in table["comparisons"]}
    assert paired == {"linear": False, "snr": True, "linear-sampled": True, "edm": True, "ancestral": True}
    assert all(row["nfe"]["mean"] > 0 and row["precision"]["mean"] is not None for row in table["rows"])
    assert all(row["heldout_dsm"]["mean"] > 0 for row in table["rows"])


def running_training(out: Path, name: str, min_step: int, timeout: float = HANG_GUARD_S) -> dict:
    """Wait until the training task runs and has logged `min_step`; its status."""
    deadline = time.time() + timeout
    status_file = out / "status" / "train" / f"{name}.json"
    metrics = out / "train" / name / "metrics.jsonl"
    while time.time() < deadline:
        if status_file.is_file() and metrics.is_file():
            lines = metrics.read_text().splitlines()
            if lines and json.loads(lines[-1])["step"] >= min_step:
                return json.loads(status_file.read_text())
        time.sleep(0.2)
    raise AssertionError(f"training {name} did not reach step {min_step}")


def ema_of(run: Path) -> dict:
    latest = sorted((run / "checkpoints").glob("step-*"))[-1]
    return torch.load(latest / "ema.pt", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """`ema(base)`: the EMA weights of a sweep's geometric seed-0 training of the resolved config `base`, trained
    outside Slurm without interruption; trained once per config (both interruptions below train one network)."""
    made = {}

    def ema(base: dict) -> dict:
        key = json.dumps(base, sort_keys=True)
        if key not in made:
            folder = tmp_path_factory.mktemp("uninterrupted")
            config = folder / "config.json"
            config.write_text(json.dumps(base))
            check = subprocess.run([sys.executable, "-c", (
                "import json, sys; from hpc_ncsn.config import config_from_dict; from hpc_ncsn.train import train; "
                "train(config_from_dict(json.load(open(sys.argv[1])), sys.argv[2:]))"),
                str(config), "noise.ladder=geometric", "train.seed=0", f"train.out_dir={folder / 'run'}"],
                capture_output=True, text=True, timeout=HANG_GUARD_S)
            assert check.returncode == 0, check.stderr[-3000:]
            made[key] = ema_of(folder / "run")
        return made[key]

    return ema


@pytest.mark.parametrize("interruption", ["USR2 warning", "requeue without warning"])
def test_interrupted_training_resumes_and_ends_with_the_weights_of_an_uninterrupted_run(cluster, uninterrupted,
                                                                                       tmp_path, interruption):
    long = [*SWEEP, "train.steps=2000", "train.checkpoint_every=100", "train.log_every=10"]
    out = tmp_path / "sweep"
    process = subprocess.Popen([sys.executable, str(ROOT / "launch" / "sweep.py"), "--cluster", "slurm", "--wait",
                                "--out", str(out), *UNSTABLE_OK, "--arms", "geometric", "--seeds", "0", *long],
                               env={**os.environ, **cluster}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    if interruption == "USR2 warning":  # what Slurm sends --signal-delay-s before the time limit
        status = running_training(out, "arm-geometric_seed-0", min_step=30)
        command = ["scancel", "--signal=USR2", status["job_id"]]
    else:  # a requeue from outside, e.g. an admin or a node failure: SIGTERM, then SIGKILL
        status = running_training(out, "arm-geometric_seed-0", min_step=120)
        command = ["scontrol", "requeue", status["job_id"]]
    subprocess.run(command, env={**os.environ, **cluster}, check=True)
    stdout, stderr = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    final = json.loads((out / "status" / "train" / "arm-geometric_seed-0.json").read_text())
    assert final["state"] == "done" and final["attempts"] == 2
    log = Path(status["log"]).with_suffix(".out").read_text()  # prints; status["log"] is the .err (progress bars)
    assert "resumed from" in log
    if interruption == "USR2 warning":
        assert "stop requested (SIGUSR2)" in log and "requeueing" in log

    # The same training, uninterrupted, outside Slurm.
    reference = uninterrupted(json.loads((out / "sweep.json").read_text())["base"])
    interrupted = ema_of(out / "train" / "arm-geometric_seed-0")
    assert interrupted["step"] == reference["step"] == 2000
    for key, value in reference["ema"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(interrupted["ema"][key], value), key


def test_a_failing_task_is_reported_while_its_siblings_finish(cluster, tmp_path):
    out = tmp_path / "sweep"
    bad = out / "train" / "arm-linear_seed-0"
    bad.mkdir(parents=True)
    (bad / "config.yaml").write_text("data:\n  name: digits\n  image_size: 16\n")  # someone else's run
    result = sweep(cluster, out, "--arms", "geometric,linear", "--seeds", "0", *SWEEP, check=False)
    assert result.returncode == 1
    assert json.loads(result.stdout.strip().splitlines()[-1])["failed"] == [
        "sample/arm-linear_seed-0", "train/arm-linear_seed-0"]
    failed = json.loads((out / "status" / "train" / "arm-linear_seed-0.json").read_text())
    assert "another config" in failed["error"] and Path(failed["log"]).is_file()
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert rows[0]["seeds_done"] == 1 and rows[1]["problems"][0].startswith("seed 0: failed")


def test_training_spans_two_nodes(cluster, tmp_path):
    out = tmp_path / "sweep"
    sweep(cluster, out, "--arms", "geometric", "--seeds", "0", "--nodes", "2", "--tasks-per-node", "1", *SWEEP)
    run = out / "train" / "arm-geometric_seed-0"
    meta = json.loads(sorted((run / "checkpoints").glob("step-*"))[-1].joinpath("meta.json").read_text())
    assert meta["world_size"] == 2
    status = json.loads((out / "status" / "sample" / "arm-geometric_seed-0.json").read_text())
    assert status["state"] == "done"


def test_plain_sbatch_templates_train_on_two_nodes_then_sample_and_evaluate(cluster, tmp_path):
    env = {**os.environ, **cluster, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    run, samples = tmp_path / "run", tmp_path / "samples"

    def sbatch(*args: str) -> None:
        result = subprocess.run(["sbatch", "--wait", f"--output={tmp_path}/%x-%j.out", *args], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=HANG_GUARD_S)
        logs = "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("*.out"))
        assert result.returncode == 0, result.stderr + logs

    sbatch("--nodes=2", "--ntasks-per-node=1", str(ROOT / "slurm" / "train.sbatch"), "--config",
           str(ROOT / "configs" / "debug.yaml"), *TINY, f"train.out_dir={run}")
    meta = json.loads(sorted((run / "checkpoints").glob("step-*"))[-1].joinpath("meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 4
    sbatch("--ntasks-per-node=2", str(ROOT / "slurm" / "sample.sbatch"), str(run), str(samples), "20",
           "--shard-size", "10")
    report = json.loads((samples / "metrics.json").read_text())
    assert report["n"] == 20 and report["fid"] > 0


# The control plane on a real cluster -----------------------------------------------------------

LONG = [*SWEEP, "train.steps=2500", "train.checkpoint_every=200", "train.log_every=10"]
ONE = ["--arms", "geometric", "--seeds", "0"]


def launch(cluster: dict, out: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "launch" / "sweep.py"), "--cluster", "slurm", "--out", str(out),
               *UNSTABLE_OK, *args]
    return subprocess.Popen(command, env={**os.environ, **cluster}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def squeue(cluster: dict) -> list[str]:
    listed = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], env={**os.environ, **cluster}, capture_output=True,
                            text=True, check=True)
    return listed.stdout.split()


def status_of(out: Path, stage: str = "train", name: str = "arm-geometric_seed-0") -> dict:
    return json.loads((out / "status" / stage / f"{name}.json").read_text())


def wait_for(condition, timeout: float = HANG_GUARD_S, what: str = "the condition", show=None):
    """Poll `condition` until it is truthy; on timeout, fail with what `show()` returns (e.g. the status file)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    try:
        seen = f"; last seen: {show()}" if show is not None else ""
    except OSError as error:
        seen = f"; last seen: {error}"
    raise AssertionError(f"{what} did not happen within {timeout} s{seen}")


@pytest.fixture(scope="module")
def undisturbed(cluster, tmp_path_factory) -> dict:
    """The one-cell LONG sweep, run on the cluster without interruption: the table a disturbed run must give."""
    out = tmp_path_factory.mktemp("undisturbed") / "sweep"
    sweep(cluster, out, *ONE, *LONG)
    return json.loads((out / "table.json").read_text())


def test_extra_axes_run_to_the_table_with_every_task_started_by_the_profiles_python_command(cluster, tmp_path):
    out = tmp_path / "sweep"
    noted = tmp_path / "started.txt"  # a stand-in for `apptainer exec img.sif`: notes each command, runs it
    wrapper = tmp_path / "exec-in-image"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {noted}\nexec "$@"\n')
    wrapper.chmod(0o755)
    profile = tmp_path / "cluster.yaml"  # the Python command from a profile file (--profile), the rest as flags
    profile.write_text(f"python: {wrapper} {sys.executable}\ntime_sample: 30\ntime_train: 999\n")
    result = sweep(cluster, out, "--arms", "geometric,linear,snr", "--seeds", "0,1", "--axis",
                   "data.image_size=8,16", "--profile", str(profile), "--time-train", "30", *SWEEP)
    recorded = json.loads((out / "sweep.json").read_text())["slurm"]
    assert (recorded["python"], recorded["time_train"], recorded["profile"]) == (
        f"{wrapper} {sys.executable}", 30, str(profile))
    rows = json.loads((out / "table.json").read_text())["rows"]
    assert [(row["group"]["arm"], row["group"]["data.image_size"], row["seeds_done"]) for row in rows] == [
        (arm, size, 2) for arm in ("geometric", "linear", "snr") for size in (8, 16)]
    assert json.loads(result.stdout.strip().splitlines()[-1])["failed"] == []
    assert len(list((out / "train").iterdir())) == 8  # snr shares the geometric networks
    started = noted.read_text().splitlines()  # the launcher's check, then one srun step per task
    assert started[0].startswith(f"{sys.executable} -c ") and len(started) == 1 + 8 + 12 + 1
    assert all(line.startswith(f"{sys.executable} -u -m submitit.core._submit ") for line in started[1:])


def test_scancel_and_cancel_stop_without_requeue_and_a_rerun_resumes(cluster, undisturbed, tmp_path):
    out = tmp_path / "sweep"
    first = launch(cluster, out, *ONE, *LONG)
    assert first.wait(timeout=HANG_GUARD_S) == 0, first.stderr.read()
    running = wait_for(lambda: (out / "status/train/arm-geometric_seed-0.json").is_file()
                       and status_of(out)["progress"] is not None and status_of(out),
                       what="the training start", show=lambda: status_of(out))
    names = subprocess.run(["squeue", "-h", "-o", "%j"], env={**os.environ, **cluster}, capture_output=True,
                           text=True).stdout.split()
    assert "ncsn:sweep:train:arm-geometric_seed-0" in names  # each task names its cell in squeue
    # While the jobs are live, the same command attaches instead of submitting again.
    again = sweep(cluster, out, *ONE, *LONG, wait=False)
    assert "attaching to them instead of submitting again" in again.stdout
    assert len(json.loads((out / "submitted.json").read_text())) == 1
    # Plain scancel of the printed arrays: the training saves and stops; nothing comes back.
    subprocess.run(["scancel", *[job["array"] for job in
                                 json.loads((out / "submitted.json").read_text())[-1]["jobs"].values()]],
                   env={**os.environ, **cluster}, check=True)
    wait_for(lambda: status_of(out)["state"] == "cancelled", what="the cancelled state", show=lambda: status_of(out))
    wait_for(lambda: not squeue(cluster), what="the queue to drain")  # a loaded node completes slowly
    # Ended as cancelled, never requeued: a requeue (even one held back until cred_expire) would count a restart.
    shown = subprocess.run(["scontrol", "-o", "show", "job", running["job_id"]], env={**os.environ, **cluster},
                           capture_output=True, text=True, check=True).stdout
    assert "JobState=CANCELLED" in shown and "Restarts=0" in shown, shown
    stopped = status_of(out)
    assert "SIGTERM" in stopped["error"] and stopped["job_id"] == running["job_id"]
    status = sweep(cluster, out, "--status").stdout
    assert "cancelled" in status.splitlines()[1]
    # A rerun resumes from the checkpoint saved at the cancel; --cancel stops it again.
    resumed = launch(cluster, out, *ONE, *LONG)
    assert resumed.wait(timeout=HANG_GUARD_S) == 0
    wait_for(lambda: status_of(out)["attempts"] == 2 and status_of(out)["state"] == "running",
             what="the resumed training", show=lambda: status_of(out))
    cancel = sweep(cluster, out, "--cancel")
    assert "cancelled" in cancel.stdout and "2 waiting task(s) recorded 'cancelled'" in cancel.stdout
    wait_for(lambda: status_of(out)["state"] == "cancelled", what="the second cancel", show=lambda: status_of(out))
    assert status_of(out, "sample")["state"] == "cancelled"
    # The last rerun finishes, with the numbers of an undisturbed sweep.
    final = sweep(cluster, out, *ONE, *LONG)
    assert json.loads(final.stdout.strip().splitlines()[-1])["failed"] == []
    assert status_of(out)["attempts"] == 3
    assert "resumed from" in Path(status_of(out)["log"]).with_suffix(".out").read_text()
    assert json.loads((out / "table.json").read_text())["rows"] == undisturbed["rows"]


def test_a_task_killed_without_a_word_is_lost_and_a_rerun_finishes_it(cluster, undisturbed, tmp_path):
    out = tmp_path / "sweep"
    waiting = launch(cluster, out, *ONE, "--wait", "--poll-s", "1", *LONG)
    running = wait_for(lambda: (out / "status/train/arm-geometric_seed-0.json").is_file()
                       and status_of(out)["state"] == "running" and status_of(out),
                       what="the training start", show=lambda: status_of(out))
    os.kill(running["pid"], signal.SIGKILL)  # an OOM kill: nothing is written
    stdout, stderr = waiting.communicate(timeout=HANG_GUARD_S)
    assert waiting.returncode == 1, stdout[-2000:] + stderr[-2000:]
    assert "train/arm-geometric_seed-0" in json.loads(stdout.strip().splitlines()[-1])["lost"]
    assert re.search(r"^\d\d:\d\d:\d\d train: 1 \w+; sample: 1 \w+; aggregate: 1 \w+; \d job\(s\) live; cancel: ",
                     stdout, re.M)  # --wait's one-line progress
    lines = sweep(cluster, out, "--status").stdout.splitlines()
    assert lines[1].split()[2] == "lost" and "left the queue without a final state" in lines[1]
    final = sweep(cluster, out, *ONE, *LONG)
    assert json.loads(final.stdout.strip().splitlines()[-1])["failed"] == []
    assert json.loads((out / "table.json").read_text())["rows"] == undisturbed["rows"]


def test_a_failed_node_requeues_its_job_which_resumes_elsewhere(cluster, undisturbed, tmp_path):
    out = tmp_path / "sweep"
    waiting = launch(cluster, out, *ONE, "--wait", "--poll-s", "1", *LONG)
    # Keyed on the checkpoint folder itself, not on the status file's progress: that is refreshed every 30 s, and a
    # machine that trains the 2,500 steps faster than that would never show it (CI did, once).
    checkpoints = out / "train" / "arm-geometric_seed-0" / "checkpoints"
    wait_for(lambda: (out / "status/train/arm-geometric_seed-0.json").is_file()
             and status_of(out)["state"] == "running" and any(checkpoints.glob("step-*")),
             what="the first checkpoint", show=lambda: status_of(out))
    nodes = subprocess.run(["squeue", "-h", "-o", "%N", "-t", "running"], env={**os.environ, **cluster},
                           capture_output=True, text=True).stdout.split()
    node = 1 if nodes[0].endswith("n1") else 2
    env = {**os.environ, **cluster}
    subprocess.run(["bash", str(SCRIPT), "kill-node", str(node)], env=env, check=True, capture_output=True)
    try:
        stdout, stderr = waiting.communicate(timeout=HANG_GUARD_S)
    finally:
        subprocess.run(["bash", str(SCRIPT), "restart-node", str(node)], env=env, check=True, capture_output=True)
    assert waiting.returncode == 0, stdout[-2000:] + stderr[-2000:]
    final = status_of(out)
    assert final["state"] == "done" and final["attempts"] == 2
    assert json.loads((out / "table.json").read_text())["rows"] == undisturbed["rows"]


def test_requeues_beyond_the_cap_fail_the_task_with_the_reason(cluster, tmp_path):
    out = tmp_path / "sweep"
    assert launch(cluster, out, *ONE, "--max-requeues", "1", *LONG).wait(timeout=HANG_GUARD_S) == 0
    env = {**os.environ, **cluster}
    for attempt in (1, 2):  # the time-limit warning, twice
        job = wait_for(lambda: (out / "status/train/arm-geometric_seed-0.json").is_file()
                       and status_of(out)["state"] == "running" and status_of(out)["attempts"] == attempt
                       and status_of(out)["job_id"], what=f"attempt {attempt}", show=lambda: status_of(out))
        subprocess.run(["scancel", "--signal=USR2", job], env=env, check=True)
    wait_for(lambda: status_of(out)["state"] == "failed", what="the failure", show=lambda: status_of(out))
    assert "requeued 1 times without finishing (--max-requeues 1)" in status_of(out)["error"]
    wait_for(lambda: not squeue(cluster), what="the queue to drain")


def test_a_bad_partition_is_one_line_and_writes_nothing(cluster, tmp_path):
    out = tmp_path / "sweep"
    result = sweep(cluster, out, *ONE, "--partition", "nope", *SWEEP, check=False)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "Slurm refuses the train jobs: invalid partition" in result.stderr and "--partition" in result.stderr
    assert not out.exists()


MUNGE_SHARED = """
set -u
mount -t tmpfs -o size=1m tmpfs /run/munge   # this namespace's own /run/munge: no munged runs here yet
for name in a b; do HPC_NCSN_SLURM_DIR="$1/$name" bash "$2" start --nodes 1 || exit 1; done
started=$(cat /run/munge/hpc_ncsn-munged.pid)
HPC_NCSN_SLURM_DIR="$1/a" bash "$2" stop || exit 1   # a started munged; b still uses it
munge -n | unmunge >/dev/null && echo "munge answers"
SLURM_CONF="$1/b/slurm.conf" sinfo -h -o %T
HPC_NCSN_SLURM_DIR="$1/b" bash "$2" stop || exit 1   # the last user: munged goes with it
kill -0 "$started" 2>/dev/null && echo "munged left running" || echo "munged stopped"
"""


def test_a_cluster_that_started_munged_leaves_it_to_another_cluster_that_uses_it_and_the_last_one_stops_it(
        tmp_path):
    """Two local clusters share munged: stopping the one that started it must not break the other's
    authentication; stopping the last user stops it. In a mount namespace with its own /run/munge, so that the
    munged of this machine (and of other clusters on it) is not touched."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("slurmctld") is None:
        pytest.skip("needs root, unshare and an installed Slurm")
    done = subprocess.run(["unshare", "-m", "bash", "-c", MUNGE_SHARED, "scenario", str(tmp_path), str(SCRIPT)],
                          capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.split("\n") == ["munge answers", "idle", "munged stopped", ""], done.stdout + done.stderr
    assert "munged left running: cluster ncsn" in done.stderr


# "Is it done?" answered right: an unanswering controller, a scancel of queued jobs, a changed sweep, a Ctrl-C ------

LATER = ["--sbatch", "begin=now+3600"]  # every job waits in the queue (BeginTime) until the test releases it


def release(cluster: dict, *arrays: str) -> None:
    """Let the held-back (LATER) jobs of these arrays start now."""
    for array in arrays:
        subprocess.run(["scontrol", "update", f"JobId={array}", "StartTime=now"], env={**os.environ, **cluster},
                       check=True, capture_output=True)


def arrays(out: Path) -> dict[str, str]:
    """{stage: array id} of the sweep's one submission."""
    submitted = json.loads((out / "submitted.json").read_text())
    assert len(submitted) == 1
    return {stage: jobs["array"] for stage, jobs in submitted[0]["jobs"].items()}


def lines_until(process: subprocess.Popen, pattern: str) -> str:
    """Read the launcher's stdout until a line matches `pattern` (re.search); what was read."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    raise AssertionError(f"the launcher ended without a line matching {pattern!r}: {''.join(seen)[-2000:]}"
                         f"{process.stderr.read()[-2000:]}")


PROGRESS = r"^\d\d:\d\d:\d\d train: .* job\(s\) live; cancel: "


def test_wait_rides_out_a_controller_that_does_not_answer_and_a_short_patience_gives_up_in_one_line(cluster,
                                                                                                    tmp_path):
    out = tmp_path / "sweep"
    patient = launch(cluster, out, *ONE, "--wait", "--poll-s", "1", *LATER, *SWEEP)
    lines_until(patient, PROGRESS)
    impatient = launch(cluster, out, *ONE, "--wait", "--poll-s", "1", "--scheduler-patience-s", "1", *LATER, *SWEEP)
    assert "attaching" in lines_until(impatient, PROGRESS)  # the jobs wait in the queue all along
    controller = int((Path(cluster["HPC_NCSN_SLURM_DIR"]) / "slurmctld.pid").read_text())
    os.kill(controller, signal.SIGSTOP)  # the controller this module started stops answering
    try:
        stdout, stderr = impatient.communicate(timeout=HANG_GUARD_S)
    finally:
        os.kill(controller, signal.SIGCONT)
    assert impatient.returncode == 3, stdout[-2000:] + stderr[-2000:]
    assert len(stderr.strip().splitlines()) == 1 and "Slurm did not answer for" in stderr and "squeue: " in stderr
    assert "Slurm did not answer (squeue: " in stdout  # it asked again before giving up
    # The patient launcher is still waiting; what ends its wait is the jobs' end (here a scancel of them all, which
    # keeps the test short), and it says so: not done, no table, exit 1.
    assert patient.poll() is None
    subprocess.run(["scancel", *arrays(out).values()], env={**os.environ, **cluster}, check=True)
    stdout, stderr = patient.communicate(timeout=HANG_GUARD_S)
    assert patient.returncode == 1, stdout[-3000:] + stderr[-3000:]
    assert "Slurm did not answer (squeue: " in stdout
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["cancelled"] == ["aggregate/table", "sample/arm-geometric_seed-0", "train/arm-geometric_seed-0"]
    assert summary["done"] == [] and summary["table"] is None


def test_a_scancel_of_queued_jobs_is_recorded_and_a_changed_sweep_on_the_live_folder_is_refused(cluster, tmp_path):
    out = tmp_path / "sweep"
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}  # threads: the allocation's
    waiting = subprocess.Popen([sys.executable, str(ROOT / "launch" / "sweep.py"), "--cluster", "slurm", "--out",
                                str(out), *UNSTABLE_OK, *ONE, "--wait", "--poll-s", "2", "--cpus-per-task", "2",
                                *LATER, *SWEEP], env={**env, **cluster}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines_until(waiting, PROGRESS)
    # Another arm (a growth) or another train.steps (an extension not asked for) while the jobs are queued:
    # refused, nothing submitted.
    for arms, steps, refusal in (("geometric,linear", 4, "are still queued or running, and this command would grow"),
                                 ("geometric", 5, "--extend train.steps=5")):
        other = sweep(cluster, out, "--arms", arms, "--seeds", "0", *LATER, *SWEEP, f"train.steps={steps}",
                      wait=False, check=False)
        assert other.returncode == 2 and refusal in other.stderr, other.stdout + other.stderr
        assert len(other.stderr.strip().splitlines()) == 1
    stages = arrays(out)
    assert set(squeue(cluster)) >= set(stages.values())  # still live
    # A plain scancel of the queued sampling job: recorded, the sweep does not end as done.
    subprocess.run(["scancel", stages["sample"]], env={**os.environ, **cluster}, check=True)
    release(cluster, stages["train"], stages["aggregate"])
    stdout, stderr = waiting.communicate(timeout=HANG_GUARD_S)
    assert waiting.returncode == 1, stdout[-3000:] + stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["cancelled"] == ["sample/arm-geometric_seed-0"] and summary["failed"] == summary["lost"] == []
    assert summary["done"] == ["aggregate/table", "train/arm-geometric_seed-0"]
    recorded = status_of(out, "sample")
    job = json.loads((out / "submitted.json").read_text())[0]["jobs"]["sample"]["tasks"]["arm-geometric_seed-0"]
    assert recorded["state"] == "cancelled" and recorded["job_id"] == job
    assert "cancelled before the task started" in recorded["error"]
    table = json.loads((out / "table.json").read_text())
    assert table["complete"] is False and "**Incomplete:** 1 of 1 cells" in (out / "table.md").read_text()
    row = sweep(cluster, out, "--status").stdout.splitlines()[2]
    assert row.split()[:3] == ["sample", "arm-geometric_seed-0", "cancelled"]
    assert status_of(out)["threads"] == 2  # --cpus-per-task 2: what the training chose, recorded


def test_a_launcher_interrupted_between_two_sbatch_leaves_its_jobs_recorded_for_status_and_cancel(cluster,
                                                                                                   tmp_path):
    out, bin_dir = tmp_path / "sweep", tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"  # the real sbatch; before the second real submission, a Ctrl-C to the launcher
    sbatch.write_text(f"""#!/bin/sh
for arg in "$@"; do [ "$arg" = --test-only ] && exec {shutil.which("sbatch")} "$@"; done
if [ -e {tmp_path}/one ]; then kill -INT $PPID; sleep 3; exit 1; fi
touch {tmp_path}/one
exec {shutil.which("sbatch")} "$@"
""")
    sbatch.chmod(0o755)
    env = {**os.environ, **cluster, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    # As from a terminal: SIGINT at its default, whatever this test process inherited (a background job's SIGINT
    # is ignored, and Python then installs no KeyboardInterrupt handler).
    interrupted = subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--cluster", "slurm", "--out",
                                  str(out), *UNSTABLE_OK, *ONE, *LATER, *SWEEP], env=env, capture_output=True,
                                 text=True, timeout=HANG_GUARD_S,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert interrupted.returncode == 130, interrupted.stdout[-2000:] + interrupted.stderr[-2000:]
    submitted = json.loads((out / "submitted.json").read_text())
    assert [list(entry["jobs"]) for entry in submitted] == [["train"]]
    job = submitted[0]["jobs"]["train"]["tasks"]["arm-geometric_seed-0"]
    assert job in squeue(cluster)
    assert job in sweep(cluster, out, "--status").stdout.splitlines()[1]
    assert "cancelled 1 job(s)" in sweep(cluster, out, "--cancel").stdout
    wait_for(lambda: job not in squeue(cluster), timeout=HANG_GUARD_S, what="the job to leave the queue")
    wait_for(lambda: (out / "status/train/arm-geometric_seed-0.json").is_file()
             and status_of(out)["state"] == "cancelled", what="the cancelled state", show=lambda: status_of(out))
