"""Fidelity and diversity apart, and FID without its small-sample bias, from the features the FID uses.

Nearest-neighbour manifolds (Kynkäänniemi et al. 2019): around each real feature x_i a
ball of radius r_k(x_i), the distance to its k-th nearest other real feature; likewise
around each generated feature y_j with radius r_k(y_j) among the generated ones.

    precision = (1/M) Σ_j 1[∃ i: ‖y_j − x_i‖ ≤ r_k(x_i)]     generated samples that look real
    recall    = (1/N) Σ_i 1[∃ j: ‖x_i − y_j‖ ≤ r_k(y_j)]     real samples the generator covers

with k = 3 (the paper's choice). Density and coverage (Naeem et al. 2020) use the real
balls only (k = 5, their choice), which makes them robust to generated outliers:

    density  = 1/(kM) Σ_j Σ_i 1[‖y_j − x_i‖ < r_k(x_i)]       ≈ 1 when both sets share a distribution
    coverage = (1/N) Σ_i 1[∃ j: ‖y_j − x_i‖ < r_k(x_i)]

(≤ and < as in each paper's code). Distances are exact, in float64, computed in chunks
of rows so that memory stays at `chunk_entries` distances whatever N and M.

FID∞ (Chong and Forsyth 2020): FID is biased upward at finite N, by about a constant
over N. Computing FID(N) for generated subsets of `num_points` sizes from N/5 to N
(against the full reference statistics), fitting FID(N) = FID∞ + c/N by least squares
and reading the fit at 1/N = 0 removes that bias; the subsets are seeded.

Pure functions on (N, d) tensors; the Fréchet distance and the feature statistics are
hpc_ncsn.evaluate.scores's (`frechet_distances`: one reference, many subsets).
`fidelity_entries` is what the evaluator's report adds, as the evaluate section asks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import EvaluateConfig
from .scores import FeatureStats, frechet_distance_to_rows, frechet_distances

__all__ = ["FIDInfinity", "fid_infinity", "fidelity_diversity", "fidelity_entries", "neighbour_distances"]

CHUNK_ENTRIES = 1 << 24  # distances held at once (128 MiB of float64)
TIE_RTOL = 1e-9  # squared distances this close to a radius are ties (round-off of the norm expansion is ~1e-15)


def _features(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be (N, d) features with N >= 2, got shape {tuple(x.shape)}")
    return x.to(torch.float64)


def _squared_distances(a: torch.Tensor, b: torch.Tensor, b_norms: torch.Tensor) -> torch.Tensor:
    """‖a_i − b_j‖² for all pairs, float64, ≥ 0."""
    return ((a * a).sum(1, keepdim=True) + b_norms[None] - 2 * a @ b.T).clamp_(min=0)


def _row_chunks(rows: int, columns: int, chunk_entries: int):
    step = max(1, chunk_entries // max(columns, 1))
    return range(0, rows, step), step


def neighbour_distances(x, k: int, *, chunk_entries: int = CHUNK_ENTRIES) -> torch.Tensor:
    """Squared distances of each row of x to its k nearest other rows, nearest first (float64 (N, k))."""
    x = _features(x, "features")
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"k nearest neighbours need 1 <= k < N, got k={k} for N={x.shape[0]}")
    norms = (x * x).sum(1)
    nearest = torch.empty(x.shape[0], k, dtype=torch.float64, device=x.device)
    starts, step = _row_chunks(x.shape[0], x.shape[0], chunk_entries)
    for start in starts:
        block = _squared_distances(x[start:start + step], x, norms)
        rows = torch.arange(start, min(start + step, x.shape[0]), device=x.device)
        block[rows - start, rows] = float("inf")  # not its own neighbour
        nearest[start:start + step] = block.topk(k, dim=1, largest=False).values
    return nearest


def fidelity_diversity(real, fake, *, k_pr: int = 3, k_dc: int = 5,
                       chunk_entries: int = CHUNK_ENTRIES) -> dict[str, float]:
    """{'precision', 'recall', 'density', 'coverage'} of generated features `fake` (M, d) against real features
    `real` (N, d) (module docstring); tensors or arrays, on any device (computed in float64 there).

    Both sets are first centred on the real mean (distances do not change; round-off of ‖a‖² + ‖b‖² − 2a·b does).
    Distances within TIE_RTOL of a radius count as ties, resolved as each paper's code resolves an exact tie
    (≤: inside for precision and recall; <: outside for density and coverage), so that identical sets give
    exactly 1 whatever the order of summation."""
    real = _features(real, "real features")
    fake = _features(fake, "generated features").to(real.device)
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and generated features differ in length: {real.shape[1]} and {fake.shape[1]}")
    centre = real.mean(0)
    real, fake = real - centre, fake - centre
    real_nearest = neighbour_distances(real, max(k_pr, k_dc), chunk_entries=chunk_entries)
    real_pr = real_nearest[:, k_pr - 1] * (1 + TIE_RTOL)
    real_dc = real_nearest[:, k_dc - 1] * (1 - TIE_RTOL)
    fake_pr = neighbour_distances(fake, k_pr, chunk_entries=chunk_entries)[:, k_pr - 1] * (1 + TIE_RTOL)
    real_norms = (real * real).sum(1)
    precise, density_count = 0, 0
    recalled = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    covered = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    starts, step = _row_chunks(fake.shape[0], real.shape[0], chunk_entries)
    for start in starts:
        block = _squared_distances(fake[start:start + step], real, real_norms)  # (chunk of generated, real)
        precise += int((block <= real_pr[None]).any(dim=1).sum())
        recalled |= (block <= fake_pr[start:start + step, None]).any(dim=0)
        inside = block < real_dc[None]
        density_count += int(inside.sum())
        covered |= inside.any(dim=0)
    return {"precision": precise / fake.shape[0], "recall": float(recalled.double().mean()),
            "density": density_count / (k_dc * fake.shape[0]), "coverage": float(covered.double().mean())}


@dataclass(frozen=True)
class FIDInfinity:
    """FID∞ (the fit's value at 1/N = 0), the fit's slope c, and the subset sizes and FIDs it was fitted to."""

    value: float
    slope: float
    sizes: tuple[int, ...]
    fids: tuple[float, ...]

    def to_dict(self) -> dict:
        return {"fid_infinity": self.value, "slope": self.slope, "sizes": list(self.sizes), "fids": list(self.fids)}


def fid_infinity(features, reference_mu, reference_sigma, *, num_points: int = 15, min_size: int | None = None,
                 seed: int = 0) -> FIDInfinity:
    """FID∞ of generated `features` (N, d) against reference statistics (μ, Σ) (Chong and Forsyth 2020).

    FID of `num_points` subsets, sizes evenly spaced from `min_size` (default N//5) to N, each the first n rows of
    one seeded permutation (numpy default_rng(seed)), so the statistics are gathered in one pass (a subset of
    n <= d rows: its n × n form, scores.frechet_distance_to_rows); least-squares line FID = FID∞ + c/n."""
    x = _features(features, "generated features")
    n = x.shape[0]
    min_size = max(2, n // 5) if min_size is None else min_size
    if not 2 <= min_size < n or num_points < 2:
        raise ValueError(f"FID∞ needs 2 <= min_size < N and num_points >= 2, got min_size={min_size}, N={n}, "
                         f"num_points={num_points}; generate more samples")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n)).to(x.device)
    sizes = tuple(int(size) for size in np.linspace(min_size, n, num_points).round())
    dim = x.shape[1]
    small = [size for size in sizes if size <= dim]  # rank-deficient subsets: their n × n form is cheaper

    def subset_statistics():  # nested prefixes: each subset's statistics grow from the previous one's
        stats, done = FeatureStats.empty(dim, device=x.device), 0
        for size in sizes[len(small):]:
            stats.update(x[order[done:size]])
            done = size
            yield stats.to_numpy()

    fids = [frechet_distance_to_rows(reference_mu, reference_sigma, x[order[:size]].cpu().numpy()) for size in small]
    fids += frechet_distances(reference_mu, reference_sigma, subset_statistics())  # the reference's √Σ once
    slope, value = np.polyfit(1.0 / np.asarray(sizes, dtype=np.float64), np.asarray(fids), 1)
    return FIDInfinity(float(value), float(slope), sizes, tuple(fids))


FIDELITY_KEYS = ("precision", "recall", "density", "coverage")
SUBSET_SEED = 0  # the seeded subsets of samples and reference features that precision … coverage compare


def _seeded_rows(x: torch.Tensor, size: int) -> torch.Tensor:
    """`size` rows of x drawn without replacement by SUBSET_SEED (all of them, in order, when size >= len(x))."""
    if size >= x.shape[0]:
        return x
    chosen = np.sort(np.random.default_rng(SUBSET_SEED).permutation(x.shape[0])[:size])
    return x[torch.from_numpy(chosen).to(x.device)]


def fidelity_entries(features: torch.Tensor, reference_features, reference_mu, reference_sigma,
                     settings: EvaluateConfig, device="cpu") -> dict:
    """The report's precision, recall, density, coverage (with the rows per side, `fidelity_n`) and FID∞ (with
    its fit) of generated `features` (N, d) against the reference's features (None: μ/Σ only) and (μ, Σ).

    Each entry is None, with a `…_unavailable` reason, when switched off in `settings` or not computable."""
    entries: dict = dict.fromkeys(FIDELITY_KEYS)
    entries.update(fidelity_n=None, fidelity_unavailable=None, fid_infinity=None, fid_infinity_fit=None,
                   fid_infinity_unavailable=None)
    k = max(settings.precision_k, settings.density_k)
    rows = min(settings.fidelity_size, features.shape[0],
               reference_features.shape[0] if reference_features is not None else features.shape[0])
    if not settings.fidelity:
        entries["fidelity_unavailable"] = "switched off (evaluate.fidelity: false)"
    elif reference_features is None:
        entries["fidelity_unavailable"] = ("the reference is μ/Σ from an .npz; precision … coverage need its feature "
                                           "vectors: evaluate against the data set")
    elif rows <= k:
        entries["fidelity_unavailable"] = f"{rows} rows per side; the {k}-th nearest neighbour needs more"
    else:
        fake = _seeded_rows(features, rows).to(device)
        real = _seeded_rows(torch.as_tensor(reference_features), rows).to(device)
        entries.update(fidelity_diversity(real, fake, k_pr=settings.precision_k, k_dc=settings.density_k),
                       fidelity_n=rows)
    if not settings.fid_infinity:
        entries["fid_infinity_unavailable"] = "switched off (evaluate.fid_infinity: false)"
    elif features.shape[0] < 3:
        entries["fid_infinity_unavailable"] = f"{features.shape[0]} samples; FID at two subset sizes needs 3 or more"
    else:
        fit = fid_infinity(features.to(device), reference_mu, reference_sigma,
                           num_points=settings.fid_infinity_points).to_dict()
        entries["fid_infinity"] = fit.pop("fid_infinity")
        entries["fid_infinity_fit"] = fit
    return entries
