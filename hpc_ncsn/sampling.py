"""Annealed Langevin dynamics as plain functions, with per-sample seeded noise.

Every random number a sample uses is a function of (run seed, sample index, step,
position) only (hpc_ncsn.rng's Philox streams), so sample k is the same whatever the
batch it sits in or the number of processes that drew it (up to the floating-point
behaviour of the score network's kernels).

Update rule (NCSNv2 Algorithm 1; see hpc_ncsn.schedules): at level σ_i, T times,
    x ← x + α·s_θ(x, σ_i) + sqrt(2α)·z,
then optionally the final denoising step x ← x + σ_L²·s_θ(x, σ_L).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .config import NoiseConfig, SamplerConfig
from .rng import LANGEVIN_INIT, sample_normal, sample_uniform
from .schedules import STEP_RULES, ladder, ncsn_step_sizes, snr_step_size

__all__ = ["ScoreFn", "SamplerPlan", "annealed_langevin", "initial_state", "langevin"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerPlan:
    """What annealed Langevin runs: the ladder, the step rule and its constants."""

    sigmas: torch.Tensor
    step_rule: str
    steps_per_level: int
    step_lr: float = 0.0
    snr: float = 0.0
    final_denoise: bool = True

    @classmethod
    def from_config(cls, noise: NoiseConfig, sampler: SamplerConfig) -> "SamplerPlan":
        """The plan of a config's ladder (`noise`) and step rule (`sampler`)."""
        sigmas = ladder(noise.ladder, noise.sigma_max, noise.sigma_min, noise.num_levels)
        return cls(sigmas, sampler.step_rule, sampler.steps_per_level, sampler.step_lr, sampler.snr,
                   sampler.final_denoise)

    def __post_init__(self):
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"unknown step rule {self.step_rule!r}; choose one of {', '.join(STEP_RULES)}")
        if self.steps_per_level < 1:
            raise ValueError(f"steps_per_level (T) must be >= 1, got {self.steps_per_level}")

    @property
    def network_evaluations(self) -> int:
        return len(self.sigmas) * self.steps_per_level + int(self.final_denoise)


def langevin(score_fn: ScoreFn, x: torch.Tensor, *, sigma: float, step_size: float, steps: int, seed: int,
             indices: torch.Tensor, first_step: int = 0,
             callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """Plain Langevin dynamics at one fixed level: `steps` updates of x + α·s(x, σ) + sqrt(2α)·z;
    `callback(t)` after update t, for progress reports."""
    sigma_batch = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    for t in range(steps):
        z = sample_normal(seed, indices, tuple(x.shape[1:]), step=first_step + t, dtype=x.dtype)
        x = x + step_size * score_fn(x, sigma_batch) + math.sqrt(2.0 * step_size) * z
        if callback is not None:
            callback(t)
    return x


def annealed_langevin(score_fn: ScoreFn, x: torch.Tensor, plan: SamplerPlan, *, seed: int,
                      indices: torch.Tensor,
                      callback: Callable[[int, float, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Annealed Langevin dynamics (NCSN Algorithm 1), from the initial state `x`.

    `indices` (N,) are the samples' global indices: with `seed` they fix every noise
    draw. `callback(level, sigma, x)` runs after each level, for progress reports.
    """
    sigmas = plan.sigmas.to(device=x.device, dtype=x.dtype)
    sigmas_host = plan.sigmas.tolist()
    step_sizes = ncsn_step_sizes(plan.sigmas, plan.step_lr).tolist() if plan.step_rule == "ncsn" else None
    shape = tuple(x.shape[1:])
    view = (-1,) + (1,) * len(shape)
    step = 0
    for level, sigma in enumerate(sigmas_host):
        sigma_batch = sigmas[level].expand(x.shape[0])
        for _ in range(plan.steps_per_level):
            score = score_fn(x, sigma_batch)
            z = sample_normal(seed, indices, shape, step=step, dtype=x.dtype)
            if step_sizes is None:
                alpha = snr_step_size(score, z, plan.snr).reshape(view)
                x = x + alpha * score + torch.sqrt(2.0 * alpha) * z
            else:
                alpha = step_sizes[level]
                x = x + alpha * score + math.sqrt(2.0 * alpha) * z
            step += 1
        if callback is not None:
            callback(level, sigma, x)
    if plan.final_denoise:
        x = x + sigmas_host[-1] ** 2 * score_fn(x, sigmas[-1].expand(x.shape[0]))
    return x


def initial_state(seed: int, indices: torch.Tensor, shape: tuple[int, ...], *, init: str, sigma_max: float,
                  low: float | torch.Tensor = 0.0, high: float | torch.Tensor = 1.0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The chains' starting points for samples `indices`.

    'uniform': U(low, high) per coordinate (NCSN/NCSNv2 start from U(0, 1));
    'gaussian': N((low+high)/2, σ_1²I), the level-1 prior of the score SDE.
    """
    if init == "uniform":
        u = sample_uniform(seed, indices, shape, dtype=dtype)
        return low + (high - low) * u
    if init == "gaussian":
        z = sample_normal(seed, indices, shape, step=0, stream=LANGEVIN_INIT, dtype=dtype)
        return 0.5 * (low + high) + sigma_max * z
    raise ValueError(f"unknown init {init!r}; choose 'uniform' or 'gaussian'")
