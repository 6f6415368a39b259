"""Noise ladders and Langevin step-size rules: the arms of the noise-schedule ablation.

Convention (NCSNv2, Algorithm 1): one Langevin step at level σ_i is

    x ← x + α·s_θ(x, σ_i) + sqrt(2α)·z,   z ~ N(0, I).

NCSN (2019) writes the same update as (α'/2)·s + sqrt(α')·z with α' = 2α; the
published ε values (2e-5 for NCSN, 6.2e-6 for NCSNv2) are in the α convention
above, as in both papers' code. Ladders are ordered σ_1 > σ_2 > … > σ_L.

Published schedules are added to, never changed: a changed formula would silently
change every experiment that names it.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "LADDERS",
    "STEP_RULES",
    "edm_sigmas",
    "gamma_for_levels",
    "geometric_sigmas",
    "ladder",
    "linear_sigmas",
    "ncsn_step_sizes",
    "planned_step_lr",
    "snr_step_size",
    "step_lr_for",
    "step_lr_objective",
]


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> torch.Tensor:
    """Geometric ladder (NCSN §4.2, NCSNv2 technique 2), float64, decreasing.

    σ_i = σ_1 · γ^{-(i-1)},  γ = (σ_1/σ_L)^{1/(L-1)},  i = 1..L,
    so σ_{i-1}/σ_i = γ is constant and σ_L is hit exactly.
    """
    _check_ladder(sigma_max, sigma_min, num_levels)
    exponents = torch.linspace(0.0, 1.0, num_levels, dtype=torch.float64)
    sigmas = sigma_max * (sigma_min / sigma_max) ** exponents
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas


def linear_sigmas(sigma_max: float, sigma_min: float, num_levels: int) -> torch.Tensor:
    """Linear ladder (the ablation's 'linear' arm), float64, decreasing.

    σ_i = σ_1 − (i−1)·(σ_1 − σ_L)/(L−1),  i = 1..L: constant differences, so
    neighbouring high-σ levels barely overlap in relative terms.
    """
    _check_ladder(sigma_max, sigma_min, num_levels)
    return torch.linspace(sigma_max, sigma_min, num_levels, dtype=torch.float64)


def edm_sigmas(sigma_max: float, sigma_min: float, num_levels: int, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022, eq. 5) ladder, float64, decreasing: uniform in σ^{1/ρ}.

    σ_i = (σ_1^{1/ρ} + (i−1)/(N−1)·(σ_N^{1/ρ} − σ_1^{1/ρ}))^ρ,  i = 1..N,
    ρ = 7 by default (their choice: steps crowd towards σ_min). ρ = 1 is the linear
    ladder; ρ → ∞ tends to the geometric one. Both ends are hit exactly.
    """
    _check_ladder(sigma_max, sigma_min, num_levels)
    if not rho > 0:
        raise ValueError(f"rho (ρ) must be > 0, got {rho}")
    fraction = torch.linspace(0.0, 1.0, num_levels, dtype=torch.float64)
    top, bottom = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    sigmas = (top + fraction * (bottom - top)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min
    return sigmas


def ncsn_step_sizes(sigmas: torch.Tensor, step_lr: float) -> torch.Tensor:
    """Per-level Langevin step (NCSN Algorithm 1, NCSNv2 technique 4).

    α_i = ε · σ_i² / σ_L²,  with ε = `step_lr` and σ_L the smallest level.
    """
    if step_lr <= 0:
        raise ValueError(f"step_lr (ε) must be > 0, got {step_lr}")
    return step_lr * (sigmas / sigmas[-1]) ** 2


def snr_step_size(score: torch.Tensor, noise: torch.Tensor, snr: float) -> torch.Tensor:
    """Per-sample Langevin step from a target signal-to-noise ratio r.

    α = 2·(r·‖z‖ / ‖s‖)², norms over all non-batch dimensions (Song et al. 2021,
    the score SDE's Langevin corrector). Returns shape (N,) on the input's device,
    without a host synchronization.
    """
    score_norm = score.flatten(1).norm(dim=1)
    noise_norm = noise.flatten(1).norm(dim=1)
    tiny = torch.finfo(score_norm.dtype).tiny
    return 2.0 * (snr * noise_norm / score_norm.clamp_min(tiny)) ** 2


def gamma_for_levels(sigma_max: float, sigma_min: float, num_levels: int) -> float:
    """The ratio of a geometric ladder with L levels: γ = (σ_1/σ_L)^{1/(L−1)}."""
    return (sigma_max / sigma_min) ** (1.0 / (num_levels - 1))


def step_lr_objective(step_lr: float, gamma: float, steps: int, sigma_min: float) -> float:
    """Technique 4's expression, which should be maximally close to 1.

    (1 − ε/σ_L²)^{2T}·(γ² − 2ε/(σ_L² − σ_L²(1 − ε/σ_L²)²)) + 2ε/(σ_L² − σ_L²(1 − ε/σ_L²)²)
    """
    s2 = sigma_min**2
    ratio = step_lr / s2
    tail = 2.0 * step_lr / (s2 - s2 * (1.0 - ratio) ** 2)
    return (1.0 - ratio) ** (2 * steps) * (gamma**2 - tail) + tail


def step_lr_for(gamma: float, steps: int, sigma_min: float) -> float:
    """Technique 4: ε in (0, σ_L²) minimizing |objective − 1|.

    A log-spaced scan over ε/σ_L² ∈ [1e-8, 1) finds the best bracket, then golden-
    section search refines it (the objective is smooth inside a bracket).
    """
    if steps < 1:
        raise ValueError(f"steps per level (T) must be >= 1, got {steps}")

    def distance(log_ratio: float) -> float:
        return abs(step_lr_objective(math.exp(log_ratio) * sigma_min**2, gamma, steps, sigma_min) - 1.0)

    grid = [math.log(1e-8) + i * (math.log(1 - 1e-9) - math.log(1e-8)) / 4000 for i in range(4001)]
    values = [distance(g) for g in grid]
    k = min(range(len(grid)), key=values.__getitem__)
    low, high = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    inv_phi = (math.sqrt(5) - 1) / 2
    for _ in range(200):
        a = high - inv_phi * (high - low)
        b = low + inv_phi * (high - low)
        if distance(a) < distance(b):
            high = b
        else:
            low = a
    return math.exp(0.5 * (low + high)) * sigma_min**2


def planned_step_lr(sigmas, steps: int) -> float:
    """Technique 4's ε for T = `steps` Langevin steps per level on the ladder `sigmas` (σ_1 > … > σ_L).

    γ is the ratio of the geometric ladder with the same ends and length, (σ_1/σ_L)^{1/(L−1)}: exactly
    the ladder's own ratio when it is geometric, and the ε a geometric ladder would use otherwise (the
    linear arms' shared ε). What sampler.step_lr = 0 resolves to.
    """
    values = [float(value) for value in sigmas]
    return step_lr_for(gamma_for_levels(values[0], values[-1], len(values)), steps, values[-1])


LADDERS = {"geometric": geometric_sigmas, "linear": linear_sigmas, "edm": edm_sigmas}
STEP_RULES = ("ncsn", "snr")  # ncsn_step_sizes (per level) and snr_step_size (per sample and step)


def ladder(name: str, sigma_max: float, sigma_min: float, num_levels: int, *, rho: float = 7.0) -> torch.Tensor:
    """The σ ladder named `name` in `LADDERS` (noise.ladder, sampler.ladder; `rho` for 'edm' only);
    the ablation's arms are in hpc_ncsn.config.ARMS."""
    if name not in LADDERS:
        raise ValueError(f"unknown ladder {name!r}; choose one of {', '.join(LADDERS)}")
    if name == "edm":
        return edm_sigmas(sigma_max, sigma_min, num_levels, rho)
    return LADDERS[name](sigma_max, sigma_min, num_levels)


def _check_ladder(sigma_max: float, sigma_min: float, num_levels: int) -> None:
    if not (0 < sigma_min < sigma_max) or not math.isfinite(sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    if num_levels < 2:
        raise ValueError(f"num_levels (L) must be at least 2, got {num_levels}")
