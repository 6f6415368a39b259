"""Annealed Langevin dynamics as plain functions, with per-sample seeded noise.

Every random number a sample uses is a function of (run seed, sample index, step,
position) only, through the Philox-4x32-10 counter-based generator (Salmon et al.,
SC 2011) evaluated with tensor ops on the sample's device. So sample k is the same
whatever the batch it sits in or the number of processes that drew it (up to the
floating-point behaviour of the score network's kernels).

Update rule (NCSNv2 Algorithm 1; see hpc_ncsn.schedules): at level σ_i, T times,
    x ← x + α·s_θ(x, σ_i) + sqrt(2α)·z,
then optionally the final denoising step x ← x + σ_L²·s_θ(x, σ_L).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .schedules import ARMS, ladder, ncsn_step_sizes, snr_step_size

__all__ = [
    "ScoreFn",
    "SamplerPlan",
    "annealed_langevin",
    "initial_state",
    "langevin",
    "philox4x32",
    "sample_normal",
    "sample_uniform",
]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_MASK32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)
STREAM_STEP, STREAM_INIT = 0, 1


def _mulhilo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a·b for uint32 values held in int64, without overflow."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    low = a_lo * b_lo
    mid = a_hi * b_lo + a_lo * b_hi
    lo_full = low + ((mid & 0xFFFF) << 16)
    hi = a_hi * b_hi + (mid >> 16) + (lo_full >> 32)
    return hi & _MASK32, lo_full & _MASK32


def philox4x32(counter: list[torch.Tensor], key: list[torch.Tensor], rounds: int = 10) -> list[torch.Tensor]:
    """Philox-4x32-`rounds` on int64 tensors holding uint32 words (broadcastable).

    counter: 4 words, key: 2 words. Returns 4 words of uniformly distributed bits.
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_index in range(rounds):
        if round_index:
            k0 = (k0 + _PHILOX_W[0]) & _MASK32
            k1 = (k1 + _PHILOX_W[1]) & _MASK32
        hi0, lo0 = _mulhilo(c0, _PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, _PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def _random_words(seed: int, indices: torch.Tensor, step: int, stream: int, numel: int) -> torch.Tensor:
    """(N, 4·⌈numel/4⌉) int64 tensor of random uint32 words for samples `indices`."""
    device = indices.device
    blocks = torch.arange((numel + 3) // 4, device=device, dtype=torch.int64)[None, :]
    key = [indices.to(torch.int64)[:, None] & _MASK32, torch.full_like(indices, seed, dtype=torch.int64)[:, None]]
    zeros = torch.zeros_like(blocks)
    counter = [blocks, zeros + (step & _MASK32), zeros + stream, zeros + (step >> 32)]
    words = philox4x32(counter, key)
    return torch.stack(words, dim=-1).reshape(indices.shape[0], -1)


def _check_seed(seed: int, indices: torch.Tensor) -> None:
    if not 0 <= seed <= _MASK32:
        raise ValueError(f"sampler seed must be in [0, 2**32), got {seed}")
    if indices.ndim != 1:
        raise ValueError(f"sample indices must be a 1-D tensor, got shape {tuple(indices.shape)}")


def sample_uniform(seed: int, indices: torch.Tensor, shape: tuple[int, ...], *, step: int = 0,
                   stream: int = STREAM_INIT, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U(0, 1) values of shape (N, *shape) for sample `indices` of run `seed` (24-bit resolution)."""
    _check_seed(seed, indices)
    numel = math.prod(shape)
    words = _random_words(seed, indices, step, stream, numel)[:, :numel]
    return ((words >> 8).to(dtype) + 0.5).mul_(2.0**-24).reshape(indices.shape[0], *shape)


def sample_normal(seed: int, indices: torch.Tensor, shape: tuple[int, ...], *, step: int,
                  stream: int = STREAM_STEP, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, 1) values of shape (N, *shape) for sample `indices` at Langevin `step` (Box–Muller)."""
    _check_seed(seed, indices)
    numel = math.prod(shape)
    half = (numel + 1) // 2
    words = _random_words(seed, indices, step, stream, 2 * half)[:, : 2 * half]
    uniform = ((words >> 8).to(dtype) + 0.5).mul_(2.0**-24)
    u1, u2 = uniform[:, :half], uniform[:, half:]
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    normal = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)[:, :numel]
    return normal.reshape(indices.shape[0], *shape)


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
    def for_arm(cls, schedule: str, *, sigma_max: float, sigma_min: float, num_levels: int,
                steps_per_level: int, step_lr: float, snr: float, final_denoise: bool = True) -> "SamplerPlan":
        """The plan for a named ablation arm (`hpc_ncsn.schedules.ARMS`)."""
        sigmas = ladder(schedule, sigma_max, sigma_min, num_levels)
        return cls(sigmas, ARMS[schedule].step_rule, steps_per_level, step_lr, snr, final_denoise)

    @classmethod
    def from_config(cls, noise) -> "SamplerPlan":
        """The plan of a `NoiseConfig`."""
        return cls.for_arm(noise.schedule, sigma_max=noise.sigma_max, sigma_min=noise.sigma_min,
                           num_levels=noise.num_levels, steps_per_level=noise.steps_per_level,
                           step_lr=noise.step_lr, snr=noise.snr, final_denoise=noise.final_denoise)

    def __post_init__(self):
        if self.step_rule not in ("ncsn", "snr"):
            raise ValueError(f"unknown step rule {self.step_rule!r}; choose 'ncsn' or 'snr'")
        if self.steps_per_level < 1:
            raise ValueError(f"steps_per_level (T) must be >= 1, got {self.steps_per_level}")

    @property
    def network_evaluations(self) -> int:
        return len(self.sigmas) * self.steps_per_level + int(self.final_denoise)


def langevin(score_fn: ScoreFn, x: torch.Tensor, *, sigma: float, step_size: float, steps: int, seed: int,
             indices: torch.Tensor, first_step: int = 0) -> torch.Tensor:
    """Plain Langevin dynamics at one fixed level: `steps` updates of x + α·s(x, σ) + sqrt(2α)·z."""
    sigma_batch = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    for t in range(steps):
        z = sample_normal(seed, indices, tuple(x.shape[1:]), step=first_step + t, dtype=x.dtype)
        x = x + step_size * score_fn(x, sigma_batch) + math.sqrt(2.0 * step_size) * z
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
        z = sample_normal(seed, indices, shape, step=0, stream=STREAM_INIT, dtype=dtype)
        return 0.5 * (low + high) + sigma_max * z
    raise ValueError(f"unknown init {init!r}; choose 'uniform' or 'gaussian'")
