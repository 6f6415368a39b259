"""Noise planning: NCSNv2's techniques 1, 2 and 4 as calculators.

Song & Ermon, "Improved Techniques for Training Score-Based Generative Models"
(NeurIPS 2020). Given a data set (or only its dimension D) these choose σ_1, the
ladder ratio γ and length L, and the Langevin step constant ε for T steps per level.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .audit import audit
from .schedules import gamma_for_levels, geometric_sigmas, step_lr_for, step_lr_objective

__all__ = [
    "NoisePlan",
    "gamma_for_dimension",
    "gamma_for_levels",
    "level_overlap",
    "max_pairwise_distance",
    "num_levels_for_gamma",
    "plan_noise",
    "step_lr_for",
    "step_lr_objective",
]


def max_pairwise_distance(
    points: torch.Tensor, *, exact_limit: int = 20_000, num_anchors: int = 512, seed: int = 0, block: int = 1024
) -> tuple[float, str]:
    """Technique 1: σ_1 ≈ max_{i,j} ‖x_i − x_j‖₂ over the training set.

    Exact (all pairs, in blocks) when N ≤ `exact_limit`. Above it, an estimate:
    the maximum distance from a set of anchors to all N points, where the anchors
    are `num_anchors` random points plus the ends of repeated farthest-point
    sweeps. Every value it reports is a real pairwise distance, so the estimate is
    a lower bound on the true maximum. Returns (distance, method description).
    """
    if points.ndim < 2 or points.shape[0] < 2:
        raise ValueError(f"need at least 2 points shaped (N, ...), got shape {tuple(points.shape)}")
    x = points.flatten(1).to(torch.float64)
    n = x.shape[0]
    if n <= exact_limit:
        return _max_distance_to(x, x, block), f"exact over all {n * (n - 1) // 2} pairs of {n} points"
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.randperm(n, generator=generator)[:num_anchors]
    best = _max_distance_to(x[anchors], x, block)
    current = int(anchors[0])
    for _ in range(4):
        distances = torch.cdist(x[current : current + 1], x).squeeze(0)
        current = int(distances.argmax())
        best = max(best, float(distances.max()))
    return best, (
        f"estimate (a lower bound) over {n} points: max distance from {num_anchors} random anchors "
        f"and 4 farthest-point sweeps to every point"
    )


def _max_distance_to(queries: torch.Tensor, points: torch.Tensor, block: int) -> float:
    best = 0.0
    for start in range(0, queries.shape[0], block):
        distances = torch.cdist(queries[start : start + block], points)
        best = max(best, float(distances.max()))
    return best


def _normal_cdf(value: float) -> float:
    return 0.5 * math.erfc(-value / math.sqrt(2.0))


def level_overlap(gamma: float, dim: int) -> float:
    """Technique 2's overlap of neighbouring noise shells for ratio γ = σ_{i−1}/σ_i in D dimensions.

    Φ(√(2D)(γ − 1) + 3γ) − Φ(√(2D)(γ − 1) − 3γ), Φ the standard normal CDF;
    NCSNv2 asks for ≈ 0.5.
    """
    u = math.sqrt(2.0 * dim) * (gamma - 1.0)
    return _normal_cdf(u + 3.0 * gamma) - _normal_cdf(u - 3.0 * gamma)


def gamma_for_dimension(dim: int, target: float = 0.5) -> float:
    """Technique 2: the ratio γ > 1 whose `level_overlap` equals `target`, by bisection.

    The overlap falls from Φ(3) − Φ(−3) ≈ 0.997 at γ = 1 towards 0 only when
    √(2D) > 3; in fewer dimensions no γ reaches 0.5 and this raises.
    """
    if dim < 1:
        raise ValueError(f"data dimension D must be >= 1, got {dim}")
    high = 2.0
    while level_overlap(high, dim) > target:
        high *= 2.0
        if high > 1e6:
            raise ValueError(
                f"technique 2 has no solution in D={dim} dimensions (needs √(2D) > 3, i.e. D >= 5); "
                "choose the number of levels directly"
            )
    low = 1.0
    for _ in range(200):
        mid = 0.5 * (low + high)
        if level_overlap(mid, dim) > target:
            low = mid
        else:
            high = mid
    return 0.5 * (low + high)


def num_levels_for_gamma(sigma_max: float, sigma_min: float, gamma: float) -> int:
    """L such that a geometric ladder from σ_1 to σ_L has ratio at most γ: 1 + ⌈log(σ_1/σ_L)/log γ⌉."""
    return 1 + math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma) - 1e-9)


@dataclass(frozen=True)
class NoisePlan:
    dim: int
    sigma_max: float
    sigma_max_method: str
    sigma_min: float
    gamma: float
    gamma_method: str
    overlap: float
    num_levels: int
    steps_per_level: int
    step_lr: float
    objective: float
    snr_equivalent: float
    snr_note: str
    snr_r_min: float
    chain_end_noise: dict
    network_evaluations: int

    def to_dict(self) -> dict:
        return asdict(self)


def plan_noise(
    *,
    dim: int,
    sigma_max: float,
    sigma_min: float,
    steps_per_level: int,
    num_levels: int | None = None,
    sigma_max_method: str = "given",
) -> NoisePlan:
    """The full NCSNv2 noise plan for data of dimension D.

    γ and L come from technique 2 unless `num_levels` fixes L (then γ follows from
    σ_1, σ_L and L); ε from technique 4. `snr_equivalent` is the r of the SNR rule
    that matches ε at the last level, r = sqrt(ε/2)/σ_L (since ‖s‖ ≈ ‖z‖/σ there),
    but never below what the sampler audit (hpc_ncsn.audit) needs: where that r is
    smaller, it is the smallest r whose chain settles in D dimensions (≥ `snr_r_min`,
    rounded up to 3 decimals) and `snr_note` says so. `chain_end_noise` is the audit's
    chain noise at the end, in σ_L, for the ncsn rule at ε and the snr rule at that r.
    """
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    if num_levels is None:
        target_gamma = gamma_for_dimension(dim)
        num_levels = num_levels_for_gamma(sigma_max, sigma_min, target_gamma)
        gamma_method = f"technique 2: overlap 0.5 in D={dim} gives γ={target_gamma:.6f}, L rounded up"
    else:
        if num_levels < 2:
            raise ValueError(f"num_levels (L) must be at least 2, got {num_levels}")
        gamma_method = f"from the given L={num_levels}"
    gamma = gamma_for_levels(sigma_max, sigma_min, num_levels)
    step_lr = step_lr_for(gamma, steps_per_level, sigma_min)
    sigmas = geometric_sigmas(sigma_max, sigma_min, num_levels).tolist()
    ncsn = audit(sigmas, step_rule="ncsn", steps=steps_per_level, step_lr=step_lr, dim=dim)
    matching = math.sqrt(step_lr / 2.0) / sigma_min
    snr, note = matching, ""
    checked = audit(sigmas, step_rule="snr", steps=steps_per_level, snr=matching, dim=dim)
    if checked.r_needed is not None and matching < checked.r_needed:
        snr = math.ceil(checked.r_needed * 1000 - 1e-9) / 1000
        note = (f"the r matching ε at σ_L ({matching:.3f}) leaves the chain at {checked.end_noise:.3g} σ_L; "
                f"this is the smallest r (3 decimals) whose chain settles, r_min = {checked.r_min:.4f}")
        checked = audit(sigmas, step_rule="snr", steps=steps_per_level, snr=snr, dim=dim)
    return NoisePlan(
        dim=dim,
        sigma_max=sigma_max,
        sigma_max_method=sigma_max_method,
        sigma_min=sigma_min,
        gamma=gamma,
        gamma_method=gamma_method,
        overlap=level_overlap(gamma, dim),
        num_levels=num_levels,
        steps_per_level=steps_per_level,
        step_lr=step_lr,
        objective=step_lr_objective(step_lr, gamma, steps_per_level, sigma_min),
        snr_equivalent=snr,
        snr_note=note,
        snr_r_min=checked.r_min,
        chain_end_noise={"ncsn": ncsn.end_noise, "snr": checked.end_noise},
        network_evaluations=num_levels * steps_per_level,
    )
