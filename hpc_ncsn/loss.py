"""Denoising score matching with one noise level per example (NCSN §4.2).

For level σ, ℓ(θ; σ) = ½ E‖s_θ(x̃, σ) + (x̃ − x)/σ²‖², x̃ = x + σz. Weighted by
λ(σ) = σ² this is ½ E‖σ·s_θ(x + σz, σ) + z‖², O(1) at every level. Each example
draws its own level uniformly from the ladder, so the batch mean estimates
(1/L) Σ_i λ(σ_i) ℓ(θ; σ_i).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["DSMLoss", "dsm_loss", "per_level_loss"]


@dataclass(frozen=True)
class DSMLoss:
    """The batch loss (scalar, for backward), each example's weighted loss and its level index."""

    loss: torch.Tensor
    per_example: torch.Tensor
    levels: torch.Tensor


def dsm_loss(score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor,
             *, generator: torch.Generator | None = None, levels: torch.Tensor | None = None,
             noise: torch.Tensor | None = None) -> DSMLoss:
    """σ²-weighted DSM loss of `score_fn` on clean data x (N, ...), one random level per example.

    The levels (uniform over the ladder) and the noise z are drawn from `generator`
    unless given explicitly (`levels` (N,) and `noise` shaped like x, both or neither).
    """
    if (levels is None) != (noise is None):
        raise ValueError("pass both levels and noise, or neither")
    if levels is None:
        levels = torch.randint(0, len(sigmas), (x.shape[0],), device=x.device, generator=generator)
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    sigma = sigmas.to(device=x.device, dtype=x.dtype)[levels]
    view = (-1,) + (1,) * (x.ndim - 1)
    noisy = x + sigma.reshape(view) * noise
    residual = sigma.reshape(view) * score_fn(noisy, sigma) + noise
    accumulate = torch.promote_types(residual.dtype, torch.float32)
    per_example = 0.5 * residual.to(accumulate).pow(2).flatten(1).sum(dim=1)
    return DSMLoss(per_example.mean(), per_example.detach(), levels)


def per_level_loss(per_example: torch.Tensor, levels: torch.Tensor, num_levels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts of the weighted loss per level (length L each), for logging.

    Sums and counts (not means) so they can be added across steps and processes
    before dividing; levels with count 0 had no example.
    """
    sums = torch.zeros(num_levels, dtype=torch.float64, device=per_example.device)
    sums.index_add_(0, levels, per_example.to(torch.float64))
    counts = torch.zeros(num_levels, dtype=torch.int64, device=levels.device)
    counts.index_add_(0, levels, torch.ones_like(levels))  # bincount would wait for the GPU to size its output
    return sums, counts
