"""FID over training of one run, outside a sweep (`hpc-ncsn curve`): every snapshot sampled and scored, the curve
written and sent to the run's TensorBoard."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import HANG_GUARD_S, TINY_TRAINING

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], env: dict) -> str:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.slow  # a training, two snapshots sampled and scored
def test_curve_scores_every_snapshot_and_reaches_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed: pip install -e '.[tracking]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    env = {**os.environ, "PYTHONPATH": str(ROOT), "HPC_NCSN_CACHE": str(tmp_path / "cache")}
    out = tmp_path / "run"
    run([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/debug.yaml"), *TINY_TRAINING,
         "train.steps=4", "train.eval_every=2", "train.eval_samples=10", "train.log_every=2",
         "train.checkpoint_every=4", "train.sample_every=100", "train.heldout_examples=0",
         "train.log_with=tensorboard", f"train.out_dir={out}"], env)
    planned = json.loads(run([sys.executable, "-m", "hpc_ncsn", "curve", "--run-dir", str(out), "--dry-run"], env))
    assert planned["snapshots"] == [2, 4] and planned["num_samples"] == 10 and planned["trackers"] == "tensorboard"

    printed = json.loads(run([sys.executable, "-m", "hpc_ncsn", "curve", "--run-dir", str(out)], env))
    curve = json.loads((out / "over_training" / "fid_vs_step.json").read_text())
    assert printed["curve"] == curve and printed["trackers"] == ["tensorboard"]
    assert [point["step"] for point in curve] == [2, 4] and all(point["n"] == 10 for point in curve)
    for point in curve:  # each point is its snapshot's own report
        report = json.loads((out / "over_training" / f"step-{point['step']:08d}" / "metrics.json").read_text())
        assert point["fid"] == report["fid"] > 0 and report["checkpoint_step"] == point["step"]

    events = EventAccumulator(str(out / "trackers" / "hpc_ncsn"), size_guidance={"scalars": 0})
    events.Reload()
    logged = events.Scalars("fid_over_training/fid")
    assert [(e.step, e.value) for e in logged] == [(p["step"], pytest.approx(p["fid"], rel=1e-6)) for p in curve]
    assert [e.step for e in events.Scalars("loss")] == [2, 4]  # the training's own series are still there
