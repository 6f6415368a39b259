"""W&B as Slurm users run it: offline (WANDB_MODE=offline, no network), the run's id kept in the run folder so a
rerun or requeue continues the same W&B run, the group and name given, the per-level losses as a few σ bins.

The real `wandb` package writes the offline run files; the test reads them back record by record (W&B's
append-only log: 32 KiB blocks of records, each a checksum, a length, a type and a protobuf `Record`)."""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpc_ncsn.train.trackers import SIGMA_BINS, WANDB_IDENTITY, sigma_bins, tracker_record
from helpers import HANG_GUARD_S, TINY_TRAINING

ROOT = Path(__file__).resolve().parent.parent
BLOCK, HEADER = 32768, 7  # W&B's log: blocks of 32 KiB; the file header and each record header are 7 bytes


def test_per_level_losses_reach_trackers_as_a_few_sigma_bins():
    """Levels 0..L-1 with loss = level index: each bin's mean is the mean of its consecutive indices."""
    assert sigma_bins([float(level) for level in range(8)]) == [0.5, 2.5, 4.5, 6.5]
    assert sigma_bins([float(level) for level in range(10)]) == [1.0, 4.0, 6.5, 8.5]  # parts of 3, 3, 2, 2
    assert sigma_bins([1.0, None, 3.0, None, None, None, 5.0, 7.0]) == [1.0, 3.0, None, 6.0]  # missing levels
    assert sigma_bins([2.0, 4.0]) == [2.0, 4.0] and sigma_bins([]) == []
    record = {"step": 10, "loss": 1.5, "phase": "train", "loss_per_level": [float(level) for level in range(232)]}
    scalars = tracker_record(record)
    assert sorted(scalars) == ["loss"] + [f"loss_by_sigma/q{part}" for part in range(SIGMA_BINS)]  # not 232 series
    assert scalars["loss_by_sigma/q0"] == pytest.approx(np.mean(np.arange(58)))


@pytest.mark.slow  # a (zero-step) training in this process
def test_a_sweep_training_is_grouped_by_the_sweep_folder(tmp_path):
    """The run's resolved config.yaml records the group its trackers got (steps=0: the initialised network only);
    a group the config names itself is kept (`train.log_group or` the folder's name)."""
    from hpc_ncsn.config import config_to_dict, load_config
    from hpc_ncsn.sweep.tasks import TrainTask
    from hpc_ncsn.sweep.work import run

    root = tmp_path / "sweep-study"
    folder = root / "train" / "arm-geometric_seed-0"
    config = config_to_dict(load_config(ROOT / "configs/debug.yaml", [
        *TINY_TRAINING, "train.steps=0", "train.heldout_examples=0", f"train.out_dir={folder}"]))
    assert config["train"]["log_group"] == ""
    run(root, TrainTask("arm-geometric_seed-0", folder, config))
    assert load_config(folder / "config.yaml").train.log_group == "sweep-study"


def wandb_records(path: Path):
    """(record type, protobuf Record) of a .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    offset, pending = HEADER, b""
    while offset + HEADER <= len(data):
        if BLOCK - offset % BLOCK < HEADER:  # a block's tail too short for a record header is padding
            offset += BLOCK - offset % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + HEADER])
        if kind == 0:
            break
        pending += data[offset + HEADER:offset + HEADER + length]
        offset += HEADER + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record.WhichOneof("record_type"), record


@pytest.mark.slow  # two real trainings and FID over training with the real wandb package
def test_offline_wandb_run_is_continued_by_a_rerun_and_the_curve_with_its_group_name_and_binned_losses(tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed here: pip install wandb (into a venv of its own, "
                                        "e.g. python -m venv --system-site-packages .venv-wandb) runs this test")
    out = tmp_path / "cell-a"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    env.pop("WANDB_API_KEY", None)
    for steps in (4, 6):  # the second start resumes from step 4's checkpoint, as a requeued job does
        command = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/debug.yaml"),
                   *TINY_TRAINING, f"train.steps={steps}", "train.log_every=2", "train.checkpoint_every=2",
                   "train.sample_every=100", "train.heldout_examples=0", "train.log_with=wandb", "train.eval_every=3",
                   "train.log_group=sweep-study", f"train.out_dir={out}"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert result.returncode == 0, result.stderr[-4000:]
    # FID over training afterwards (snapshots at steps 3, 4 and 6), into the same W&B run.
    result = subprocess.run([sys.executable, "-m", "hpc_ncsn", "curve", "--run-dir", str(out), "--num-samples", "10"],
                            env={**env, "HPC_NCSN_CACHE": str(tmp_path / "cache")}, capture_output=True, text=True,
                            timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-4000:]
    curve = json.loads(result.stdout)["curve"]

    identity = json.loads((out / "trackers" / WANDB_IDENTITY).read_text())
    assert identity["name"] == "cell-a" and identity["group"] == "sweep-study" and identity["id"]
    runs = sorted((out / "trackers" / "wandb").glob("offline-run-*"))
    assert len(runs) == 3 and all(run.name.endswith(identity["id"]) for run in runs)  # one W&B run, thrice started
    records = [dict(line) for line in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    expected = {record["step"]: sigma_bins(record["loss_per_level"]) for record in records}
    logged, points = {}, []
    for run in runs:
        started = [record.run for kind, record in wandb_records(next(run.glob("run-*.wandb"))) if kind == "run"]
        assert [(r.run_id, r.display_name, r.run_group) for r in started][:1] == [(identity["id"], "cell-a",
                                                                                   "sweep-study")]
        for kind, record in wandb_records(next(run.glob("run-*.wandb"))):
            if kind == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                assert not any(key.startswith("loss_per_level") for key in items)
                if "loss_by_sigma/q0" in items:
                    logged[items["_step"]] = [items.get(f"loss_by_sigma/q{part}") for part in range(SIGMA_BINS)]
                if "fid_over_training/fid" in items:  # on its own x axis: W&B's steps only grow
                    points.append((items["fid_over_training/step"], items["fid_over_training/fid"]))
    assert sorted(logged) == [2, 4, 6]
    assert [point["step"] for point in curve] == [3, 4, 6]  # every 3 steps and each training's last
    assert points == [(point["step"], pytest.approx(point["fid"], rel=1e-9)) for point in curve]
    for step, bins in logged.items():
        assert bins == pytest.approx(expected[step], rel=1e-6)
