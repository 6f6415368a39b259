"""Reverse-time samplers of the variance-exploding SDE along a σ ladder, as plain functions.

The forward process adds Gaussian noise, x_σ = x_0 + σ·z, so p_σ = p_data * N(0, σ²I)
(the marginal the network's score s_θ(x, σ) ≈ ∇ log p_σ(x) is trained on). On a ladder
σ_1 > … > σ_L each sampler carries x ~ p_{σ_1} to x ~ p_{σ_L}:

- `ancestral`: the reverse-diffusion predictor of the VE SDE (Song et al. 2021, score SDE,
  their ReverseDiffusionPredictor on the discretised SDE), from σ_i to σ_{i+1}:
      x ← x + (σ_i² − σ_{i+1}²)·s(x, σ_i) + sqrt(σ_i² − σ_{i+1}²)·z,
  optionally with `corrector_steps` Langevin steps at each level (their predictor-corrector
  sampler; the Langevin update is injected by the caller, hpc_ncsn.sampling).
- `probability_flow`: the probability-flow ODE dx/dσ = −σ·s(x, σ) (Karras et al. 2022, eq. 4 with
  σ(t) = t), stepped from σ_i to σ_{i+1} by Euler or by Heun's second-order rule (their Algorithm 1,
  the EDM sampler). With the denoiser D(x; σ) = x + σ²·s(x, σ), the slope is (x − D(x; σ))/σ.

`final_denoise` adds the step from σ_L to σ = 0; for every sampler here it is the same update,
x + σ_L²·s(x, σ_L) = D(x; σ_L) (Euler's step of the ODE to 0; the ancestral step to 0 without its
noise, as score SDE returns; the Tweedie denoiser of Jolicoeur-Martineau et al. 2021). Noise draws
are seeded per sample (hpc_ncsn.rng), so a sample does not depend on its batch.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .rng import sample_normal

__all__ = ["Corrector", "ancestral", "ancestral_evaluations", "denoise", "probability_flow",
           "probability_flow_evaluations"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# corrector(x, level, step): one Langevin update at sigmas[level] drawing the noise of counter `step`.
Corrector = Callable[[torch.Tensor, int, int], torch.Tensor]
Callback = Callable[[int, float, torch.Tensor], None]


def ancestral(score_fn: ScoreFn, x: torch.Tensor, sigmas: torch.Tensor, *, seed: int, indices: torch.Tensor,
              final_denoise: bool = True, corrector: Corrector | None = None, corrector_steps: int = 0,
              callback: Callback | None = None) -> torch.Tensor:
    """Reverse diffusion of the VE SDE along `sigmas` from x ~ p_{σ_1}; `corrector_steps` calls of
    `corrector` at each level after arriving there (predictor-corrector). `callback(level, σ, x)` after each level.

    NFE per sample: `ancestral_evaluations`.
    """
    if corrector_steps and corrector is None:
        raise ValueError("corrector_steps > 0 needs a corrector")
    sigmas_host = [float(sigma) for sigma in sigmas]
    shape = tuple(x.shape[1:])
    step = 0
    for level, sigma in enumerate(sigmas_host):
        if level > 0:
            above = sigmas_host[level - 1]
            variance = above**2 - sigma**2
            score = score_fn(x, _batch(above, x))
            z = sample_normal(seed, indices, shape, step=step, dtype=x.dtype)
            x = x + variance * score + math.sqrt(variance) * z
            step += 1
        for _ in range(corrector_steps):
            x = corrector(x, level, step)
            step += 1
        if callback is not None:
            callback(level, sigma, x)
    return denoise(score_fn, x, sigmas_host[-1]) if final_denoise else x


def ancestral_evaluations(num_levels: int, corrector_steps: int, final_denoise: bool) -> int:
    """Network evaluations per sample of `ancestral`: L − 1 predictor steps, L·C corrector steps, the final step."""
    return num_levels - 1 + num_levels * corrector_steps + int(final_denoise)


def probability_flow(score_fn: ScoreFn, x: torch.Tensor, sigmas: torch.Tensor, *, heun: bool,
                     final_denoise: bool = True, callback: Callback | None = None) -> torch.Tensor:
    """The probability-flow ODE dx/dσ = −σ·s(x, σ) integrated along `sigmas` from x ~ p_{σ_1}.

    Heun (`heun=True`, Karras et al. 2022 Algorithm 1 with S_churn = 0), for each step σ_i → σ_{i+1}:
        d_i = (x − D(x; σ_i))/σ_i = −σ_i·s(x, σ_i),   x' = x + (σ_{i+1} − σ_i)·d_i,
        x ← x + (σ_{i+1} − σ_i)·(d_i + d'_{i+1})/2,   d'_{i+1} = −σ_{i+1}·s(x', σ_{i+1});
    Euler (`heun=False`) keeps x'. The step to σ = 0 (`final_denoise`) is Euler's in both, as in the paper.
    NFE per sample: `probability_flow_evaluations`.
    """
    sigmas_host = [float(sigma) for sigma in sigmas]
    if callback is not None:
        callback(0, sigmas_host[0], x)
    for level in range(1, len(sigmas_host)):
        now, nxt = sigmas_host[level - 1], sigmas_host[level]
        slope = -now * score_fn(x, _batch(now, x))
        euler = x + (nxt - now) * slope
        if heun:
            slope_next = -nxt * score_fn(euler, _batch(nxt, x))
            x = x + (nxt - now) * 0.5 * (slope + slope_next)
        else:
            x = euler
        if callback is not None:
            callback(level, nxt, x)
    return denoise(score_fn, x, sigmas_host[-1]) if final_denoise else x


def probability_flow_evaluations(num_levels: int, heun: bool, final_denoise: bool) -> int:
    """Network evaluations per sample of `probability_flow`: (L − 1)·(2 for Heun, 1 for Euler), the final step.
    EDM's default, 18 levels with Heun and the step to 0: 17·2 + 1 = 35."""
    return (num_levels - 1) * (2 if heun else 1) + int(final_denoise)


def denoise(score_fn: ScoreFn, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The step from σ to 0: D(x; σ) = x + σ²·s(x, σ), Tweedie's estimate of the clean x."""
    return x + sigma**2 * score_fn(x, _batch(sigma, x))


def _batch(sigma: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
