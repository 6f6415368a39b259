"""Every training ends by scoring its EMA weights on held-out data (heldout_dsm.json), once; `hpc-ncsn heldout`
scores a snapshot the same way."""

import math
import os

import pytest
import torch

from hpc_ncsn import checkpoint as ckpt
from hpc_ncsn.cli import main
from hpc_ncsn.config import load_config
from hpc_ncsn.heldout import HELDOUT_FILE, heldout_record, read_heldout_dsm, sigma_grid
from hpc_ncsn.train import train

from helpers import TINY_TRAINING
from test_heldout import ROOT

# A grid wider than the network's trained 8.5 … 0.01, as a sweep's widest range would be; fp32 for exact checks.
GRID = ["train.heldout_sigma_max=20", "train.heldout_sigma_min=0.005", "train.heldout_examples=12"]
RUN = [*TINY_TRAINING, "train.steps=2", "train.checkpoint_every=2", "train.eval_every=2", "train.mixed_precision=no",
       *GRID]


def trained(tmp_path, *extra: str):
    config = load_config(ROOT / "configs/debug.yaml", [*RUN, f"train.out_dir={tmp_path / 'run'}", *extra])
    return config, train(config)


def test_a_training_ends_with_the_held_out_loss_of_its_ema_weights_once(tmp_path):
    config, run = trained(tmp_path)
    path = run / HELDOUT_FILE
    record = read_heldout_dsm(path)
    assert record["sigmas"] == pytest.approx(sigma_grid(20.0, 0.005).tolist(), rel=1e-12)
    assert record["step"] == 2 and record["num_examples"] == 12 and record["precision"] == "fp32"
    assert record["in_trained_range"][0] is False and record["in_trained_range"][-1] is False
    assert all(math.isfinite(value) and value > 0 for value in record["per_sigma"])
    # The EMA weights of the last checkpoint, scored directly, give the same figures.
    model, _, step = ckpt.load_ema_model(ckpt.resolve_checkpoint(run))
    direct = heldout_record(model, config, "cpu", grid=sigma_grid(20.0, 0.005), limit=12)
    assert step == 2 and record["per_sigma"] == pytest.approx(direct["per_sigma"], rel=1e-5)

    # Rerunning the finished run leaves the file as it was.
    before = os.stat(path)
    trained(tmp_path)
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # A torn file (a run stopped while writing it under an older version) or another grid is computed again.
    path.write_text(path.read_text()[:40])
    trained(tmp_path)
    assert read_heldout_dsm(path)["per_sigma"] == pytest.approx(record["per_sigma"], rel=1e-9)
    trained(tmp_path, "train.heldout_sigma_max=8.5", "train.heldout_sigma_min=0.01")
    assert all(read_heldout_dsm(path)["in_trained_range"])


def test_heldout_examples_zero_writes_nothing(tmp_path):
    _, run = trained(tmp_path, "train.heldout_examples=0")
    assert (run / "checkpoints").is_dir() and not (run / HELDOUT_FILE).exists()


def test_the_command_scores_a_snapshot_like_the_training_scored_its_end(tmp_path, capsys):
    _, run = trained(tmp_path)
    [(step, snapshot)] = ckpt.snapshots(run)
    assert main(["heldout", "--run-dir", str(snapshot)]) == 0  # the grid and examples the run's config names
    scored = read_heldout_dsm(snapshot / HELDOUT_FILE)
    assert scored["step"] == step == 2
    assert scored["per_sigma"] == pytest.approx(read_heldout_dsm(run / HELDOUT_FILE)["per_sigma"], rel=1e-5)
    assert main(["heldout", "--run-dir", str(snapshot), "--sigma-max", "4", "--sigma-min", "0.1",
                 "--examples", "5"]) == 0
    narrower = read_heldout_dsm(snapshot / HELDOUT_FILE)
    assert narrower["sigmas"][0] == 4 and narrower["sigmas"][-1] == pytest.approx(0.1)
    assert narrower["num_examples"] == 5 and all(narrower["in_trained_range"])
    capsys.readouterr()
    assert main(["heldout", "--run-dir", str(snapshot), "--sigma-min", "30"]) == 2
    assert "train.heldout_sigma_min: must be below" in capsys.readouterr().err
    assert torch.isfinite(torch.tensor(narrower["per_sigma"])).all()
