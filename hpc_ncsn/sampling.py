"""Annealed Langevin dynamics as plain functions, with per-sample seeded noise; `sample` runs any sampler.

Every random number a sample uses is a function of (run seed, sample index, step,
position) only (hpc_ncsn.rng's Philox streams), so sample k is the same whatever the
batch it sits in or the number of processes that drew it (up to the floating-point
behaviour of the score network's kernels).

Update rule (NCSNv2 Algorithm 1; see hpc_ncsn.schedules): at level σ_i, T times,
    x ← x + α·s_θ(x, σ_i) + sqrt(2α)·z,
then optionally the final denoising step x ← x + σ_L²·s_θ(x, σ_L).

`SamplerPlan` is what a sampler runs: its kind (langevin here; ancestral, ode and edm in
hpc_ncsn.solvers), its ladder (`sampling_ladder`: the training ladder, or another within the
trained σ range) and its constants; `sample` dispatches on the kind and `network_evaluations`
counts the network evaluations (NFE) per sample. Which sampler keys each path never reads is declared
beside the keys, `SamplerConfig.ignored_keys` (hpc_ncsn.config: torch-free, so that a sweep's plan stays light).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .config import NoiseConfig, SamplerConfig, check_sampling_range
from .rng import LANGEVIN_INIT, sample_normal, sample_uniform
from .schedules import STEP_RULES, ladder, ncsn_step_sizes, planned_step_lr, snr_step_size
from .solvers import ancestral, ancestral_evaluations, probability_flow, probability_flow_evaluations

__all__ = ["KINDS", "ScoreFn", "SamplerPlan", "annealed_langevin", "draw", "initial_state", "langevin", "sample",
           "sampling_ladder"]

KINDS = ("langevin", "ancestral", "ode", "edm")  # sampler.kind

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sampling_ladder(noise: NoiseConfig, sampler: SamplerConfig) -> torch.Tensor:
    """The σ ladder a sampler runs (float64, decreasing): the training ladder of `noise` when
    sampler.ladder is 'train' (the default), else sampler.ladder's shape with sampler.num_levels
    levels (0: noise.num_levels) from sampler.sigma_max to sampler.sigma_min (0: the trained ends).
    A ladder outside the trained range [noise.sigma_min, noise.sigma_max] is refused (ConfigError)."""
    check_sampling_range(noise, sampler)
    if sampler.ladder == "train":
        return ladder(noise.ladder, noise.sigma_max, noise.sigma_min, noise.num_levels)
    return ladder(sampler.ladder, sampler.sigma_max or noise.sigma_max, sampler.sigma_min or noise.sigma_min,
                  sampler.num_levels or noise.num_levels, rho=sampler.rho)


@dataclass(frozen=True)
class SamplerPlan:
    """What a sampler runs: the ladder, the Langevin step rule and its constants, the kind of sampler
    (`KINDS`) and, for the ancestral one, its Langevin corrector steps per level."""

    sigmas: torch.Tensor
    step_rule: str
    steps_per_level: int
    step_lr: float = 0.0
    snr: float = 0.0
    final_denoise: bool = True
    kind: str = "langevin"
    corrector_steps: int = 0

    @classmethod
    def from_config(cls, noise: NoiseConfig, sampler: SamplerConfig) -> "SamplerPlan":
        """The plan of a config's training ladder (`noise`) and sampler (`sampler`, `sampling_ladder`)."""
        sigmas = sampling_ladder(noise, sampler)
        step_lr = sampler.step_lr or planned_step_lr(sigmas.tolist(), sampler.steps_per_level)
        return cls(sigmas, sampler.step_rule, sampler.steps_per_level, step_lr,
                   sampler.snr, sampler.final_denoise, sampler.kind, sampler.corrector_steps)

    def __post_init__(self):
        if self.step_rule not in STEP_RULES:
            raise ValueError(f"unknown step rule {self.step_rule!r}; choose one of {', '.join(STEP_RULES)}")
        if self.steps_per_level < 1:
            raise ValueError(f"steps_per_level (T) must be >= 1, got {self.steps_per_level}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown sampler kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.corrector_steps and self.kind != "ancestral":
            raise ValueError(f"corrector_steps is for the ancestral sampler, not {self.kind!r}")

    @property
    def network_evaluations(self) -> int:
        """Network evaluations (NFE) per sample."""
        levels = len(self.sigmas)
        if self.kind == "langevin":
            return levels * self.steps_per_level + int(self.final_denoise)
        if self.kind == "ancestral":
            return ancestral_evaluations(levels, self.corrector_steps, self.final_denoise)
        return probability_flow_evaluations(levels, self.kind == "edm", self.final_denoise)


def sample(score_fn: ScoreFn, x: torch.Tensor, plan: SamplerPlan, *, seed: int, indices: torch.Tensor,
           callback: Callable[[int, float, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run `plan`'s sampler from the initial state `x` (see `annealed_langevin` for the arguments)."""
    if plan.kind == "langevin":
        return annealed_langevin(score_fn, x, plan, seed=seed, indices=indices, callback=callback)
    if plan.kind == "ancestral":
        sigmas = plan.sigmas.to(device=x.device, dtype=x.dtype)
        corrector = _langevin_update(score_fn, plan, sigmas, seed, indices, x)
        return ancestral(score_fn, x, plan.sigmas, seed=seed, indices=indices, final_denoise=plan.final_denoise,
                         corrector=corrector, corrector_steps=plan.corrector_steps, callback=callback)
    return probability_flow(score_fn, x, plan.sigmas, heun=plan.kind == "edm", final_denoise=plan.final_denoise,
                            callback=callback)


def draw(score_fn: ScoreFn, plan: SamplerPlan, *, seed: int, indices: torch.Tensor, shape: tuple[int, ...],
         init: str, device: torch.device | str = "cpu",
         callback: Callable[[int, float, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Samples `indices` of shape `shape`: the initial state `init` (`initial_state`, at σ_1 of the plan's
    ladder) on `device`, then `sample`."""
    x = initial_state(seed, indices, shape, init=init, sigma_max=float(plan.sigmas[0]))
    return sample(score_fn, x.to(device), plan, seed=seed, indices=indices, callback=callback)


def _langevin_update(score_fn: ScoreFn, plan: SamplerPlan, sigmas: torch.Tensor, seed: int, indices: torch.Tensor,
                     x: torch.Tensor) -> Callable[[torch.Tensor, int, int], torch.Tensor]:
    """update(x, level, step): one Langevin step at sigmas[level] with `plan`'s step rule and the noise of `step`."""
    step_sizes = ncsn_step_sizes(plan.sigmas, plan.step_lr).tolist() if plan.step_rule == "ncsn" else None
    shape = tuple(x.shape[1:])
    view = (-1,) + (1,) * len(shape)

    def update(x: torch.Tensor, level: int, step: int) -> torch.Tensor:
        score = score_fn(x, sigmas[level].expand(x.shape[0]))
        z = sample_normal(seed, indices, shape, step=step, dtype=x.dtype)
        if step_sizes is None:
            alpha = snr_step_size(score, z, plan.snr).reshape(view)
            return x + alpha * score + torch.sqrt(2.0 * alpha) * z
        alpha = step_sizes[level]
        return x + alpha * score + math.sqrt(2.0 * alpha) * z

    return update


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
    update = _langevin_update(score_fn, plan, sigmas, seed, indices, x)
    step = 0
    for level, sigma in enumerate(sigmas_host):
        for _ in range(plan.steps_per_level):
            x = update(x, level, step)
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
