"""Precision/recall, density/coverage and FID∞ (hpc_ncsn.evaluate.fidelity) against limits, closed forms and a
brute-force transcription of the papers' definitions; and in the evaluator's report, on real digit shards."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_ncsn.config import EvaluateConfig
from hpc_ncsn.evaluate.evaluator import evaluate
from hpc_ncsn.evaluate.extractors import DIGITS_EXTRACTOR
from hpc_ncsn.evaluate.fidelity import fid_infinity, fidelity_diversity, fidelity_entries, neighbour_distances
from hpc_ncsn.evaluate.scores import frechet_distance, frechet_distances
from hpc_ncsn.samples.real import write_real_shards
from helpers import HANG_GUARD_S, DIGITS


def normal(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return shift + torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def uniform(n: int, seed: int, low: float) -> torch.Tensor:
    return low + torch.rand(n, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def coverage_of_one_distribution(n: int, m: int, k: int) -> float:
    """E[coverage] when real (n) and generated (m) features share a continuous distribution: the real ball of
    x_i holds probability U ~ Beta(k, n − k) (its k-th neighbour among the n − 1 others on the boundary), and no
    generated point falls inside with probability E[(1 − U)^m] = B(k, n − k + m)/B(k, n − k)."""
    log_miss = math.lgamma(n) - math.lgamma(n - k) + math.lgamma(n - k + m) - math.lgamma(n + m)
    return 1 - math.exp(log_miss)


def brute_force(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int) -> dict:
    """The four definitions transcribed literally, one point at a time."""
    def radius(points, i, k):
        return np.sort([np.linalg.norm(points[i] - points[j]) for j in range(len(points)) if j != i])[k - 1]

    real_pr = [radius(real, i, k_pr) for i in range(len(real))]
    real_dc = [radius(real, i, k_dc) for i in range(len(real))]
    fake_pr = [radius(fake, j, k_pr) for j in range(len(fake))]
    dist = np.array([[np.linalg.norm(y - x) for x in real] for y in fake])
    precision = np.mean([any(dist[j, i] <= real_pr[i] for i in range(len(real))) for j in range(len(fake))])
    recall = np.mean([any(dist[j, i] <= fake_pr[j] for j in range(len(fake))) for i in range(len(real))])
    density = sum(dist[j, i] < real_dc[i] for j in range(len(fake)) for i in range(len(real))) / (k_dc * len(fake))
    coverage = np.mean([any(dist[j, i] < real_dc[i] for j in range(len(fake))) for i in range(len(real))])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_identical_sets_are_fully_precise_recalled_dense_and_covered():
    x = normal(500, 6, 0)
    # Density: each real ball holds its centre and k − 1 neighbours strictly inside (the k-th is on its edge).
    assert fidelity_diversity(x, x.clone()) == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}


def test_disjoint_supports_give_zero():
    result = fidelity_diversity(normal(400, 4, 0), normal(300, 4, 1, shift=100.0))
    assert result == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


@pytest.mark.parametrize("chunk_entries", [1, 7 * 60, 1 << 24])
def test_chunked_computation_equals_the_definitions_transcribed_literally(chunk_entries):
    real, fake = normal(60, 3, 2), normal(45, 3, 3, shift=0.7)
    expected = brute_force(real.numpy(), fake.numpy(), k_pr=3, k_dc=5)
    result = fidelity_diversity(real, fake, chunk_entries=chunk_entries)
    assert result == pytest.approx(expected, abs=1e-12)
    assert 0 < result["precision"] < 1 and 0 < result["recall"] < 1  # the shifted case exercises both outcomes


def test_neighbour_distances_of_points_on_a_line():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert neighbour_distances(x, 2).tolist() == [[1.0, 9.0], [1.0, 4.0], [4.0, 9.0], [16.0, 36.0]]  # squared


def test_one_distribution_gives_density_one_and_the_beta_coverage():
    n, repetitions = 1000, 5
    runs = [fidelity_diversity(normal(n, 8, 10 + r), normal(n, 8, 20 + r)) for r in range(repetitions)]
    density = np.mean([run["density"] for run in runs])
    coverage = np.mean([run["coverage"] for run in runs])
    # One run's spread (measured: density sd 0.015, coverage sd 0.008): the mean of 5 within ~5 of its sds.
    assert density == pytest.approx(1.0, abs=0.035)
    assert coverage == pytest.approx(coverage_of_one_distribution(n, n, 5), abs=0.02)


def test_a_shifted_uniform_follows_its_overlap():
    # Real U[0, 1], generated U[0.3, 1.3]: 70 % of each lies in the other's support, where the two densities are
    # equal. Density → 0.7 · 1, coverage → 0.7 · the one-distribution value (edge effects are O(k/N) = 1e-3).
    n, overlap = 5000, 0.7
    result = fidelity_diversity(uniform(n, 0, 0.0), uniform(n, 1, 0.3))
    sd = math.sqrt(overlap * (1 - overlap) / n)  # the binomial spread of which points fall in the overlap: 0.0065
    assert result["density"] == pytest.approx(overlap, abs=5 * sd + 0.01)
    assert result["coverage"] == pytest.approx(overlap * coverage_of_one_distribution(n, n, 5), abs=5 * sd)
    # Precision and recall lose a few percent inside the overlap too (a generated point can fall in a gap between
    # real balls), never more than the overlap.
    assert overlap - 0.05 < result["precision"] <= overlap + 5 * sd
    assert overlap - 0.05 < result["recall"] <= overlap + 5 * sd


def test_generated_outliers_lower_precision_in_proportion():
    real, n = normal(2000, 4, 30), 2000
    same = fidelity_diversity(real, normal(n, 4, 31))
    mixed = fidelity_diversity(real, torch.cat([normal(n // 2, 4, 31), normal(n // 2, 4, 32, shift=50.0)]))
    # Half the generated points are far away: they add nothing to precision or density.
    sd = math.sqrt(0.25 / n)
    assert mixed["precision"] == pytest.approx(same["precision"] / 2, abs=5 * sd)
    assert mixed["density"] == pytest.approx(same["density"] / 2, abs=0.05)


def test_fid_infinity_removes_the_small_sample_bias():
    d, size, repetitions = 16, 4000, 20
    variances = np.linspace(0.5, 2.0, d)
    mu_r, sigma_r = np.zeros(d), np.diag(variances)
    mu_g = np.zeros(d)
    mu_g[0] = 0.5
    # Diagonal covariances commute: FID = ‖μ_r − μ_g‖² + Σ (√a_i − √b_i)².
    true = 0.25 + np.sum((np.sqrt(variances) - np.sqrt(1.3 * variances)) ** 2)
    estimates, smallest = [], []
    for r in range(repetitions):
        features = torch.from_numpy(np.random.default_rng(r).normal(size=(size, d)) * np.sqrt(1.3 * variances) + mu_g)
        fit = fid_infinity(features, mu_r, sigma_r, min_size=400, seed=r)
        assert fit.sizes[0] == 400 and fit.sizes[-1] == size and len(fit.fids) == 15 and fit.slope > 0
        estimates.append(fit.value)
        smallest.append(fit.fids[0])
    standard_error = np.std(estimates, ddof=1) / math.sqrt(repetitions)
    assert abs(np.mean(estimates) - true) < 4 * standard_error
    # FID at N = 400 is biased up by far more than that.
    assert np.mean(smallest) - true > 20 * standard_error


def test_distances_to_one_reference_equal_the_fid_of_each_pair():
    rng = np.random.default_rng(7)
    mu_r, sigma_r = rng.normal(size=5), np.cov(rng.normal(size=(50, 5)), rowvar=False)
    others = [(rng.normal(size=5), np.cov(rng.normal(size=(n, 5)), rowvar=False)) for n in (3, 10, 40)]  # n=3: rank 2
    assert frechet_distances(mu_r, sigma_r, iter(others)) == [frechet_distance(mu_r, sigma_r, *other)
                                                              for other in others]


# --- In the evaluator's report --------------------------------------------------------------------------------

def test_evaluate_reports_fidelity_and_fid_infinity_in_metrics_json_and_its_printout(digits_cache, tmp_path):
    samples = write_real_shards(DIGITS, tmp_path / "samples", 60, 25, split="train", seed=1)
    done = subprocess.run([sys.executable, "-m", "hpc_ncsn", "evaluate", "--samples", str(samples)],
                          capture_output=True, text=True, timeout=HANG_GUARD_S,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    report = json.loads((samples / "metrics.json").read_text())
    assert printed == report and report["extractor"] == "digits-classifier"
    points = EvaluateConfig().fid_infinity_points
    # 60 real training digits against all 1,797: 60 rows per side, each of the four a fraction (density: a ratio).
    assert report["fidelity_n"] == 60 and report["fidelity_unavailable"] is None
    assert all(0 < report[key] <= 1 for key in ("precision", "recall", "coverage")) and report["density"] > 0
    fit = report["fid_infinity_fit"]
    assert len(fit["sizes"]) == len(fit["fids"]) == points and fit["sizes"][0] == 12 and fit["sizes"][-1] == 60
    assert fit["fids"][-1] == pytest.approx(report["fid"], rel=1e-9)  # the largest subset is all samples
    assert math.isfinite(report["fid_infinity"]) and report["fid_infinity_unavailable"] is None
    # A line through the fitted points: its value at 1/N = 0 and its slope reproduce the fit.
    slope, value = np.polyfit(1 / np.array(fit["sizes"]), fit["fids"], 1)
    assert (report["fid_infinity"], fit["slope"]) == pytest.approx((value, slope), rel=1e-9)


def test_identical_image_sets_are_fully_precise_and_recalled(digits_cache, tmp_path):
    """The samples are exactly the reference: the 300 training digits that reference_size=300 draws (seed 0)."""
    samples = write_real_shards(DIGITS, tmp_path / "samples", 300, 100, split="train", seed=0)
    settings = EvaluateConfig(extractor=DIGITS_EXTRACTOR, reference_size=300, kid_subsets=5, kid_subset_size=20)
    report = evaluate(samples, DIGITS, settings, cache_dir=tmp_path / "reference")
    assert report["n"] == report["n_reference"] == report["fidelity_n"] == 300
    assert report["precision"] == 1.0 and report["recall"] == 1.0 and report["coverage"] == 1.0
    assert report["fid"] < 1e-6


def test_switched_off_or_without_reference_features_the_entries_say_why(digits_cache, tmp_path):
    samples = write_real_shards(DIGITS, tmp_path / "samples", 40, 40, split="train", seed=2)
    off = EvaluateConfig(extractor=DIGITS_EXTRACTOR, kid_subsets=5, kid_subset_size=20, fidelity=False,
                         fid_infinity=False)
    report = evaluate(samples, DIGITS, off, cache_dir=tmp_path / "reference", save_stats=tmp_path / "stats.npz")
    assert all(report[key] is None for key in ("precision", "recall", "density", "coverage", "fid_infinity"))
    assert "evaluate.fidelity: false" in report["fidelity_unavailable"]
    assert "evaluate.fid_infinity: false" in report["fid_infinity_unavailable"]
    # Against μ/Σ of an .npz (here the samples' own): FID∞ needs only those, precision … coverage the vectors.
    on = EvaluateConfig(extractor=DIGITS_EXTRACTOR, kid_subsets=5, kid_subset_size=20)
    report = evaluate(samples, DIGITS, on, cache_dir=tmp_path / "reference", reference_npz=tmp_path / "stats.npz")
    assert report["precision"] is None and ".npz" in report["fidelity_unavailable"]
    assert report["fid_infinity_fit"]["fids"][-1] < 1e-6 and math.isfinite(report["fid_infinity"])


def test_report_entries_draw_equal_subsets_and_say_why_when_too_few_rows():
    x = normal(50, 4, 7)
    mu, sigma = x.mean(0).numpy(), np.cov(x.numpy(), rowvar=False)
    entries = fidelity_entries(x, x.clone(), mu, sigma, EvaluateConfig(fidelity_size=20))
    # The same seeded 20 rows of two identical sets: identical subsets.
    assert entries["fidelity_n"] == 20 and entries["precision"] == entries["recall"] == 1.0
    assert entries["fid_infinity_fit"]["sizes"] == [10, 20, 30, 40, 50]
    few = fidelity_entries(x[:5], x, mu, sigma, EvaluateConfig())
    assert few["precision"] is None and "the 5-th nearest neighbour needs more" in few["fidelity_unavailable"]
    two = fidelity_entries(x[:2], x, mu, sigma, EvaluateConfig())
    assert two["fid_infinity"] is None and "needs 3 or more" in two["fid_infinity_unavailable"]
