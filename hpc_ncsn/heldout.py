"""Comparing networks without samples: the DSM loss on held-out data, on one σ grid for every network.

NCSN trains by denoising score matching; on data the network never saw, the same loss
measures how well it learned the score at each noise level, in minutes and without a
sampler (NCSN §4.2; Song and Ermon 2019 use it to compare models). Per σ of the grid,

    ℓ(σ) = E_x E_z ½‖σ·s_θ(x + σz, σ) + z‖²,      (λ(σ) = σ², hpc_ncsn.loss.dsm_loss)

and the summary is the mean of ℓ over the grid: the training objective with the grid
as the ladder. The grid is `GRID_SIZE` log-spaced σ across the widest trained range of
the networks compared (`common_grid`), so a network is also scored outside the σ it was
trained on (`in_trained_range` marks which σ it knew). For a Gaussian data set N(μ, s²I)
in D dimensions the exact score gives ℓ(σ) = ½·D·s²/(s² + σ²), the minimum over all
score functions (`tests/test_heldout.py`).

Held-out data: the test split where the data set has one (the first `limit` images of a
fixed permutation of it); otherwise `HOLDOUT_FRACTION` of the training set, chosen by a
fixed permutation and left out of training (`hpc_ncsn.data.training_rows`, used by
`load_training_data`); for the 2-D toy, fresh draws from the mixture. The noise z of
held-out example k at grid index j is Philox noise keyed by (`HELDOUT_SEED`, k, j), the
same for every network, batch size and process count.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import rng
from .config import Config, NoiseConfig
from .data import (HELDOUT_SEED, HOLDOUT_FRACTION, WITHOUT_TEST_SPLIT, holdout_split, load_images, to_model_scale,
                   toy_mixture, training_rows)
from .files import atomic_write
from .loss import dsm_loss

__all__ = ["GRID_SIZE", "HELDOUT_FILE", "HELDOUT_SEED", "HOLDOUT_FRACTION", "HeldoutLoss", "common_grid",
           "configured_grid", "heldout_data", "heldout_dsm", "heldout_record", "holdout_split", "is_current",
           "read_heldout_dsm", "sigma_grid", "training_rows", "write_heldout_dsm"]

HELDOUT_FILE = "heldout_dsm.json"
GRID_SIZE = 20


def sigma_grid(sigma_max: float, sigma_min: float, count: int = GRID_SIZE) -> torch.Tensor:
    """`count` log-spaced σ from sigma_max down to sigma_min (float64; the ends exact)."""
    if not 0 < sigma_min < sigma_max or count < 2:
        raise ValueError(f"a σ grid needs 0 < sigma_min < sigma_max and count >= 2, got {sigma_min}, {sigma_max}, "
                         f"{count}")
    grid = sigma_max * (sigma_min / sigma_max) ** torch.linspace(0.0, 1.0, count, dtype=torch.float64)
    grid[0], grid[-1] = sigma_max, sigma_min
    return grid


def common_grid(noises: list[NoiseConfig], count: int = GRID_SIZE) -> torch.Tensor:
    """The σ grid across the widest trained range of several networks (their `noise` sections)."""
    return sigma_grid(max(noise.sigma_max for noise in noises), min(noise.sigma_min for noise in noises), count)


def heldout_data(config: Config, limit: int = 1000) -> tuple[torch.Tensor, str]:
    """(held-out examples at model scale, where they come from), at most `limit` of them (module docstring)."""
    data = config.data
    if data.name == "toy2d":
        mixture = toy_mixture(data.toy_means, data.toy_weights, data.toy_std)
        fresh = rng.generator(HELDOUT_SEED, rng.HELDOUT_NOISE, 1)
        return mixture.sample(limit, fresh).float(), f"{limit} fresh draws from the toy mixture"
    if data.name in WITHOUT_TEST_SPLIT:
        images = load_images(data, "train")
        rows = holdout_split(images.shape[0])[1][:limit]
        return to_model_scale(images[rows]), (f"{len(rows)} held-out training images of {data.name} "
                                              f"({HOLDOUT_FRACTION:.0%} of its {images.shape[0]}, never trained on)")
    images = load_images(data, "test")
    order = torch.randperm(images.shape[0], generator=rng.generator(HELDOUT_SEED, rng.HELDOUT_NOISE, 2))[:limit]
    return to_model_scale(images[order.sort().values]), (f"{len(order)} of the {images.shape[0]} images of "
                                                         f"{data.name}'s test split")


@dataclass(frozen=True)
class HeldoutLoss:
    """Per σ of the grid: the mean σ²-weighted DSM loss over the held-out examples and its standard error;
    `mean` is their average over the grid, `mean_se` its standard error over examples."""

    sigmas: torch.Tensor
    per_sigma: torch.Tensor
    per_sigma_se: torch.Tensor
    mean: float
    mean_se: float


@torch.no_grad()
def heldout_dsm(score_fn, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int = HELDOUT_SEED,
                batch_size: int = 256) -> HeldoutLoss:
    """σ²-weighted DSM loss of `score_fn(x̃, σ)` on the examples x (N, ...) at every σ of the grid, with the
    noise of example k at grid index j = rng.sample_normal(seed, [k], x.shape[1:], step=j, HELDOUT_NOISE)."""
    losses = torch.empty(x.shape[0], len(sigmas), dtype=torch.float64)
    grid = sigmas.to(device=x.device, dtype=x.dtype)
    for j in range(len(sigmas)):
        for start in range(0, x.shape[0], batch_size):
            rows = torch.arange(start, min(start + batch_size, x.shape[0]), device=x.device)
            noise = rng.sample_normal(seed, rows, tuple(x.shape[1:]), step=j, stream=rng.HELDOUT_NOISE, dtype=x.dtype)
            levels = torch.full((len(rows),), j, dtype=torch.int64, device=x.device)
            result = dsm_loss(score_fn, x[rows], grid, levels=levels, noise=noise)
            losses[start:start + len(rows), j] = result.per_example.to("cpu", torch.float64)
    per_example_mean = losses.mean(dim=1, keepdim=True)
    return HeldoutLoss(sigmas.to(torch.float64).cpu(), losses.mean(dim=0), _standard_error(losses),
                       float(per_example_mean.mean()), float(_standard_error(per_example_mean)[0]))


def _standard_error(values: torch.Tensor) -> torch.Tensor:
    """Standard error of each column's mean over the rows (NaN with one row)."""
    if values.shape[0] < 2:
        return torch.full((values.shape[1],), math.nan, dtype=values.dtype)
    return values.std(dim=0) / math.sqrt(values.shape[0])


def heldout_record(model: torch.nn.Module, config: Config, device: torch.device | str, *,
                   grid: torch.Tensor | None = None, limit: int = 1000, batch_size: int = 256,
                   score_fn: Callable | None = None) -> dict:
    """The held-out DSM loss of `model` (an nn.Module called as model(x, σ), e.g. the EMA network) as a JSON-ready
    record; `grid` defaults to the network's own trained range (pass `common_grid` of the sweep to compare
    networks). The model runs in eval mode and is put back in the mode it was in; it is called in fp32 eager
    unless `score_fn` (e.g. hpc_ncsn.network.score_function(model, speed): compiled, bf16) says otherwise, which
    must then be the same for every network compared."""
    grid = sigma_grid(config.noise.sigma_max, config.noise.sigma_min) if grid is None else grid
    x, source = heldout_data(config, limit)
    was_training = model.training
    model.eval()
    try:
        loss = heldout_dsm(score_fn or model, x.to(device), grid, batch_size=batch_size)
    finally:
        model.train(was_training)
    low, high = config.noise.sigma_min, config.noise.sigma_max
    return {
        "sigmas": loss.sigmas.tolist(), "per_sigma": loss.per_sigma.tolist(), "per_sigma_se": loss.per_sigma_se.tolist(),
        "in_trained_range": [low * (1 - 1e-9) <= s <= high * (1 + 1e-9) for s in loss.sigmas.tolist()],
        "mean": loss.mean, "mean_se": loss.mean_se, "trained_range": [low, high],
        "weighting": "lambda(sigma) = sigma^2 per sigma; mean = average over the grid",
        "data": source, "num_examples": int(x.shape[0]), "dim": int(x[0].numel()), "seed": HELDOUT_SEED,
    }


def write_heldout_dsm(model: torch.nn.Module, config: Config, device: torch.device | str, folder: Path, *,
                      grid: torch.Tensor | None = None, limit: int = 1000, batch_size: int = 256,
                      score_fn: Callable | None = None, extra: dict | None = None) -> Path:
    """`heldout_record` (with the fields of `extra`, e.g. the step) written atomically as folder/HELDOUT_FILE;
    returns its path. Cheap enough for the end of a training task: limit × len(grid) network evaluations (20,000
    by default)."""
    record = heldout_record(model, config, device, grid=grid, limit=limit, batch_size=batch_size, score_fn=score_fn)
    record.update({"limit": limit, **(extra or {})})
    return atomic_write(Path(folder) / HELDOUT_FILE, json.dumps(record, indent=1) + "\n")


def read_heldout_dsm(path: Path) -> dict:
    """The record `write_heldout_dsm` wrote."""
    return json.loads(Path(path).read_text())


def configured_grid(config: Config) -> torch.Tensor:
    """The grid the run config asks for: train.heldout_sigma_max .. heldout_sigma_min, 0 meaning the network's own
    trained end (a sweep sets both to its widest range: one grid for all its networks)."""
    train, noise = config.train, config.noise
    return sigma_grid(train.heldout_sigma_max or noise.sigma_max, train.heldout_sigma_min or noise.sigma_min)


def is_current(folder: Path, grid: torch.Tensor, limit: int, step: int, precision: str) -> bool:
    """Whether folder/HELDOUT_FILE already scores these weights (`step`) on `grid` with `limit` examples at
    `precision`, every value finite: then it need not be computed again."""
    try:
        record = read_heldout_dsm(Path(folder) / HELDOUT_FILE)
        return (record.get("step") == step and record.get("limit") == limit
                and record.get("precision") == precision and len(record["sigmas"]) == len(grid)
                and torch.allclose(torch.tensor(record["sigmas"], dtype=torch.float64), grid.cpu(), rtol=1e-12)
                and all(math.isfinite(value) for value in record["per_sigma"]))
    except (OSError, ValueError, KeyError, TypeError):  # absent, torn or of another format: compute it again
        return False
