"""The held-out DSM loss (hpc_ncsn.heldout): the closed-form optimum of a Gaussian data set, the same noise for
every network, the held-out rows never trained on, and the record a training task writes."""

import math
from pathlib import Path

import pytest
import torch

from hpc_ncsn.config import load_config
from hpc_ncsn.data import load_images
from hpc_ncsn.heldout import (HELDOUT_FILE, HOLDOUT_FRACTION, common_grid, heldout_data, heldout_dsm,
                              heldout_record, holdout_split, read_heldout_dsm, sigma_grid, write_heldout_dsm)
from hpc_ncsn.model import build_score_model
from hpc_ncsn.data import load_training_data

from helpers import TINY

ROOT = Path(__file__).resolve().parent.parent

# A Gaussian data set N(μ, s²I) in D dimensions: its noise-perturbed score is exact.
D, S, N = 6, 0.7, 20_000
MU = torch.linspace(-1.0, 2.0, D, dtype=torch.float64)


def gaussian_data(n: int = N) -> torch.Tensor:
    return MU + S * torch.randn(n, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def exact_score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """∇ log N(x; μ, (s² + σ²)I) = −(x − μ)/(s² + σ²)."""
    return -(x - MU) / (S**2 + sigma[:, None] ** 2)


def test_the_exact_score_attains_the_closed_form_minimum_at_every_sigma():
    # With x − μ = s·u and the exact score, σ·s* + z = (s²z − σ s u)/(s² + σ²): per coordinate N(0, v), v = s²/(s² + σ²).
    # So ℓ(σ) = ½ v χ²_D: mean ½·D·v, standard deviation v·√(D/2) per example.
    grid = sigma_grid(5.0, 0.01, 12)
    loss = heldout_dsm(exact_score, gaussian_data(), grid, batch_size=4096)
    v = S**2 / (S**2 + grid**2)
    expected, se = 0.5 * D * v, v * math.sqrt(D / 2) / math.sqrt(N)
    assert torch.all((loss.per_sigma - expected).abs() < 5 * se), (loss.per_sigma, expected)
    assert torch.allclose(loss.per_sigma_se, se, rtol=0.05)
    assert loss.mean == pytest.approx(float(expected.mean()), abs=5 * float(se.max()))


def test_a_perturbed_score_does_worse_by_the_closed_form_amount():
    # s = s* + δ adds σ δ·(σ s* + z) + ½σ²‖δ‖² per example: on average ½σ²‖δ‖² (the cross term has mean 0 and,
    # with the same noise for both scores, standard deviation σ‖δ‖√v per example).
    grid = sigma_grid(5.0, 0.01, 12)
    delta = torch.full((D,), 0.05, dtype=torch.float64)
    exact = heldout_dsm(exact_score, gaussian_data(), grid, batch_size=4096)
    perturbed = heldout_dsm(lambda x, sigma: exact_score(x, sigma) + delta, gaussian_data(), grid, batch_size=4096)
    excess = perturbed.per_sigma - exact.per_sigma
    v = S**2 / (S**2 + grid**2)
    expected, se = 0.5 * grid**2 * delta.pow(2).sum(), grid * delta.norm() * v.sqrt() / math.sqrt(N)
    assert torch.all((excess - expected).abs() < 5 * se + 1e-12)
    assert perturbed.mean > exact.mean


def test_the_noise_is_the_same_whatever_the_batch():
    x, grid = gaussian_data(300), sigma_grid(2.0, 0.1, 5)
    one, other = heldout_dsm(exact_score, x, grid, batch_size=300), heldout_dsm(exact_score, x, grid, batch_size=7)
    assert torch.equal(one.per_sigma, other.per_sigma) and one.mean == other.mean


def test_the_common_grid_spans_the_widest_trained_range():
    configs = [load_config(ROOT / "configs/debug.yaml", [f"noise.sigma_max={high}", f"noise.sigma_min={low}"])
               for high, low in ((8.5, 0.01), (20.0, 0.05))]
    grid = common_grid([config.noise for config in configs])
    assert len(grid) == 20 and grid[0] == 20.0 and grid[-1] == 0.01
    ratios = grid[:-1] / grid[1:]
    assert torch.allclose(ratios, torch.full_like(ratios, (20.0 / 0.01) ** (1 / 19)))


def test_a_data_set_without_a_test_split_holds_out_rows_training_never_reads():
    config = load_config(ROOT / "configs/debug.yaml", TINY)
    images = load_images(config.data)
    training, held = holdout_split(images.shape[0])
    assert len(held) == math.ceil(HOLDOUT_FRACTION * images.shape[0])
    assert set(training.tolist()).isdisjoint(held.tolist()) and len(training) + len(held) == images.shape[0]
    assert torch.equal(load_training_data(config), images[training])
    x, source = heldout_data(config, limit=50)
    assert torch.equal(x, images[held[:50]].float() / 255) and "never trained on" in source


def test_the_toy_is_scored_on_fresh_draws_not_the_training_points():
    config = load_config(ROOT / "configs/toy2d.yaml", ["data.toy_size=500"])
    x, source = heldout_data(config, limit=500)
    training = load_training_data(config)
    assert x.shape == training.shape and torch.cdist(x, training).min() > 0 and "fresh" in source


def test_a_training_task_writes_the_record_of_its_network(tmp_path):
    config = load_config(ROOT / "configs/debug.yaml", TINY)
    torch.manual_seed(0)
    model = build_score_model(config.model, config.data).train()
    grid = sigma_grid(20.0, 0.005, 6)  # wider than the network's 8.5 … 0.01
    path = write_heldout_dsm(model, config, "cpu", tmp_path, grid=grid, limit=12, batch_size=5)
    assert path == tmp_path / HELDOUT_FILE and model.training
    record = read_heldout_dsm(path)
    again = heldout_record(model, config, "cpu", grid=grid, limit=12)  # another batch size: equal up to round-off
    assert record["per_sigma"] == pytest.approx(again["per_sigma"], rel=1e-5) and record["sigmas"] == again["sigmas"]
    assert record["in_trained_range"] == [False, True, True, True, True, False]
    assert record["num_examples"] == 12 and record["dim"] == 64 and len(record["per_sigma"]) == 6
    assert record["mean"] == pytest.approx(sum(record["per_sigma"]) / 6)
    assert all(math.isfinite(value) and value > 0 for value in record["per_sigma"])
