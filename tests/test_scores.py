"""FID/KID/IS: closed forms, rank-deficient inputs, agreement with torch-fidelity, exact
statistics across batches and across 2 real gloo processes, and the input checks."""

import datetime
import time

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hpc_ncsn.evaluate.extractors import check_images
from helpers import HANG_GUARD_S, free_port
from hpc_ncsn.evaluate.scores import (
    FeatureStats,
    frechet_distance,
    frechet_distance_to_rows,
    inception_score,
    kernel_inception_distance,
    polynomial_kernel,
    small_sample_warning,
    unbiased_mmd2,
)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def random_orthogonal(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return q * np.sign(np.diag(r))


def features(n: int, dim: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=g, dtype=torch.float64) / dim**0.5
    return (torch.randn(n, dim, generator=g, dtype=torch.float64) @ mixing + shift).relu()


def stats_of(x: torch.Tensor) -> FeatureStats:
    return FeatureStats.empty(x.shape[1]).update(x)


# --- Fréchet distance -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("zeros", [0, 5])
def test_frechet_distance_matches_the_closed_form_for_commuting_covariances(zeros):
    rng = np.random.default_rng(0)
    dim = 16
    q = random_orthogonal(dim, rng)
    lam1, lam2 = rng.uniform(0.1, 3.0, dim), rng.uniform(0.1, 3.0, dim)
    lam1[:zeros] = 0.0  # rank-deficient: zero eigenvalues, still exact
    lam2[dim - zeros:] = 0.0
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(lam1) - np.sqrt(lam2)) ** 2)
    assert frechet_distance(mu1, np.diag(lam1), mu2, np.diag(lam2)) == pytest.approx(expected, rel=1e-10)
    sigma1, sigma2 = q @ np.diag(lam1) @ q.T, q @ np.diag(lam2) @ q.T
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n", [3, 20, 40])
def test_the_distance_to_rows_through_their_n_by_n_form_is_the_frechet_distance_of_their_statistics(n):
    """n < D (rank-deficient Σ2, the case it exists for) and n > D; the reference Σ1 itself rank-deficient."""
    dim = 24
    reference = features(15, dim, seed=5)  # 15 rows: Σ1 of rank 14
    rows = features(n, dim, seed=6, shift=0.3)
    mu1, sigma1 = stats_of(reference).to_numpy()
    expected = frechet_distance(mu1, sigma1, *stats_of(rows).to_numpy())
    assert frechet_distance_to_rows(mu1, sigma1, rows) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_to_rows(*stats_of(rows).to_numpy(), rows) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_on_well_conditioned_matrices():
    rng = np.random.default_rng(1)
    dim = 32
    b1, b2 = rng.standard_normal((dim, dim)), rng.standard_normal((dim, dim))
    sigma1, sigma2 = b1 @ b1.T / dim + np.eye(dim), b2 @ b2.T / dim + 0.5 * np.eye(dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean).real
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-8)
    torch_args = [torch.from_numpy(a).float() for a in (mu1, sigma1, mu2, sigma2)]
    assert frechet_distance(*torch_args) == pytest.approx(expected, rel=1e-5)  # float32 copies of the inputs


def test_rank_deficient_covariances_give_a_finite_real_non_negative_distance():
    mu1, sigma1 = stats_of(features(10, 64, seed=2)).to_numpy()  # N=10 samples in D=64: rank 9
    mu2, sigma2 = stats_of(features(10, 64, seed=3, shift=0.2)).to_numpy()
    assert np.linalg.matrix_rank(sigma1) == 9
    distance = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert isinstance(distance, float) and np.isfinite(distance) and distance > 0
    assert frechet_distance(mu1, sigma1, mu1, sigma1) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(mu2, sigma2, mu2, sigma2) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("change, match", [
    (lambda a: {**a, "mu1": np.full(4, np.nan)}, "mu1 has NaN"),
    (lambda a: {**a, "sigma2": np.where(np.eye(4) > 0, np.inf, 0.0)}, "sigma2 has NaN or inf"),
    (lambda a: {**a, "mu2": np.zeros(5)}, "one length"),
    (lambda a: {**a, "sigma1": np.eye(4)[:3]}, "square"),
    (lambda a: {**a, "sigma2": np.eye(4) + np.triu(np.ones((4, 4)), 1)}, "not symmetric"),
    (lambda a: {**a, "sigma1": np.diag([1.0, 1.0, 1.0, -0.5])}, "not positive semi-definite"),
])
def test_frechet_distance_refuses_bad_inputs(change, match):
    args = {"mu1": np.zeros(4), "sigma1": np.eye(4), "mu2": np.ones(4), "sigma2": np.eye(4)}
    with pytest.raises(ValueError, match=match):
        frechet_distance(**change(args))


def high_precision_fid(x1: torch.Tensor, x2: torch.Tensor) -> float:
    """The same route (A = Σ1^{1/2}, eigenvalues of A Σ2 A) in 40-digit arithmetic from the raw features."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40

    def moments(x):
        rows = mp.matrix(x.tolist())
        n, dim = rows.rows, rows.cols
        mu = [mp.fsum(rows[i, j] for i in range(n)) / n for j in range(dim)]
        cov = mp.matrix(dim, dim)
        for a in range(dim):
            for b in range(a, dim):
                cov[a, b] = cov[b, a] = mp.fsum((rows[i, a] - mu[a]) * (rows[i, b] - mu[b]) for i in range(n)) / (n - 1)
        return mu, cov

    (mu1, cov1), (mu2, cov2) = moments(x1), moments(x2)
    tiny = mp.mpf(10) ** -30
    w, v = mp.eigsy(cov1)
    a = v * mp.diag([mp.sqrt(e) if e > tiny else 0 for e in w]) * v.T
    trace_sqrt = mp.fsum(mp.sqrt(e) for e in mp.eigsy(a * cov2 * a, eigvals_only=True) if e > tiny)
    dim = len(mu1)
    return float(mp.fsum((p - q) ** 2 for p, q in zip(mu1, mu2)) + mp.fsum(cov1[i, i] + cov2[i, i] for i in range(dim))
                 - 2 * trace_sqrt)


def test_rank_deficient_fid_matches_a_40_digit_computation():
    x1, x2 = features(6, 16, seed=18), features(6, 16, seed=19, shift=0.2)  # ranks 5 and 5 in D=16
    expected = high_precision_fid(x1, x2)
    assert frechet_distance(*stats_of(x1).to_numpy(), *stats_of(x2).to_numpy()) == pytest.approx(expected, rel=1e-12)


# --- agreement with torch-fidelity ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-6), (torch.float64, 1e-9)])
def test_fid_agrees_with_torch_fidelity(dtype, rel):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    f1, f2 = features(200, 64, seed=4).to(dtype), features(200, 64, seed=5, shift=0.1).to(dtype)
    reference = fid_statistics_to_metric(fid_features_to_statistics(f1), fid_features_to_statistics(f2),
                                         verbose=False)["frechet_inception_distance"]
    ours = frechet_distance(*stats_of(f1).to_numpy(), *stats_of(f2).to_numpy())
    assert ours == pytest.approx(reference, rel=rel)


def test_kid_agrees_with_torch_fidelity():
    from torch_fidelity.metric_kid import kid_features_to_metric

    f1, f2 = features(200, 64, seed=6), features(180, 64, seed=7, shift=0.05)
    for kwargs, ours_kwargs in [
        ({"kid_subsets": 20, "kid_subset_size": 50, "rng_seed": 123}, {"subsets": 20, "subset_size": 50, "seed": 123}),
        ({"kid_subsets": 10, "kid_subset_size": 180, "kid_kernel_poly_degree": 2, "kid_kernel_poly_gamma": 0.05,
          "kid_kernel_poly_coef0": 0.5}, {"subsets": 10, "subset_size": 1000, "degree": 2, "gamma": 0.05,
                                          "coef0": 0.5}),  # subset_size capped at 180; default seed 2020
    ]:
        reference = kid_features_to_metric(f1, f2, verbose=False, **kwargs)
        mean, std = kernel_inception_distance(f1, f2, **ours_kwargs)
        assert mean == pytest.approx(reference["kernel_inception_distance_mean"], rel=1e-6)
        assert std == pytest.approx(reference["kernel_inception_distance_std"], rel=1e-6)


def test_kid_read_off_the_whole_kernel_matrices_equals_kid_per_subset(monkeypatch):
    """Small N: every subset's sums come from the kernels of all rows (numpy on a CPU, torch on a GPU);
    large N: three kernels per subset. One answer either way, to float64 summation order."""
    from hpc_ncsn.evaluate import scores

    f1, f2 = features(300, 32, seed=12), features(250, 32, seed=13, shift=0.05)
    whole = kernel_inception_distance(f1, f2, subsets=15, subset_size=100)
    monkeypatch.setattr(scores, "KID_WHOLE_KERNEL_ENTRIES", 0)
    per_subset = kernel_inception_distance(f1, f2, subsets=15, subset_size=100)
    assert whole == pytest.approx(per_subset, rel=1e-12) and whole[0] > 0
    x, y = f1.double().numpy(), f2.double().numpy()
    rng = np.random.RandomState(2020)
    draws = [(rng.choice(300, 100, replace=False), rng.choice(250, 100, replace=False)) for _ in range(15)]
    kernels = [polynomial_kernel(a, b, 3, 1 / 32, 1.0) for a, b in ((x, x), (y, y), (x, y))]
    with_numpy = scores._mmds_from_whole_kernels(*kernels, draws, 100)
    with_torch = scores._mmds_from_whole_kernels(*(torch.from_numpy(k) for k in kernels), draws, 100)
    assert np.mean(with_numpy) == pytest.approx(whole[0], rel=1e-12)
    assert with_torch.numpy() == pytest.approx(with_numpy, rel=1e-12)


def test_inception_score_agrees_with_torch_fidelity():
    from torch_fidelity.metric_isc import isc_features_to_metric

    logits = 3 * torch.randn(200, 10, generator=torch.Generator().manual_seed(8))
    for splits, seed in [(10, 2020), (7, 99), (3, None)]:
        reference = isc_features_to_metric(logits, splits=splits, shuffle=seed is not None,
                                           rng_seed=seed if seed is not None else 0)
        mean, std = inception_score(logits, splits=splits, seed=seed)
        assert mean == pytest.approx(reference["inception_score_mean"], rel=1e-6)
        assert std == pytest.approx(reference["inception_score_std"], rel=1e-6)


def test_inception_score_limits():
    classes = 10
    confident = 50.0 * torch.eye(classes).repeat(20, 1)  # every class equally often, each prediction certain
    assert inception_score(confident, splits=2, seed=None)[0] == pytest.approx(classes, rel=1e-9)
    assert inception_score(torch.zeros(40, classes), splits=2) == pytest.approx((1.0, 0.0))
    with pytest.raises(ValueError, match="splits"):
        inception_score(torch.zeros(5, classes), splits=10)


def test_kid_is_small_for_one_distribution_and_large_for_two():
    x, y = features(800, 16, seed=9).chunk(2)  # two independent samples of one distribution
    same, same_std = kernel_inception_distance(x, y, subsets=20, subset_size=200)
    other, _ = kernel_inception_distance(x, y + 0.5, subsets=20, subset_size=200)
    assert abs(same) < 3 * same_std and other > 100 * abs(same)


# --- FeatureStats ----------------------------------------------------------------------------------------------


def test_chunked_updates_and_merged_halves_equal_one_update():
    x = features(301, 32, seed=11)
    whole = stats_of(x)
    chunked = FeatureStats.empty(32)
    for chunk in x.split(37):
        chunked.update(chunk)
    merged = stats_of(x[:150]).merge(stats_of(x[150:]))
    for stats in (chunked, merged):
        assert stats.n == 301
        assert rel_err(stats.mean(), whole.mean()) < 1e-12
        assert rel_err(stats.covariance(), whole.covariance()) < 1e-12
    mu, sigma = whole.to_numpy()
    assert rel_err(mu, x.numpy().mean(axis=0)) < 1e-12
    assert rel_err(sigma, np.cov(x.numpy(), rowvar=False)) < 1e-12


def test_shuffled_order_gives_the_same_fid():
    x, y = features(500, 32, seed=12), features(500, 32, seed=13, shift=0.1)
    reference = stats_of(y).to_numpy()
    fid = frechet_distance(*stats_of(x).to_numpy(), *reference)
    shuffled = FeatureStats.empty(32)
    for chunk in x[torch.randperm(500, generator=torch.Generator().manual_seed(0))].split(64):
        shuffled.update(chunk)
    assert frechet_distance(*shuffled.to_numpy(), *reference) == pytest.approx(fid, rel=1e-9)


def test_to_dict_round_trips_through_torch_save(tmp_path):
    stats = stats_of(features(50, 8, seed=14))
    torch.save(stats.to_dict(), tmp_path / "stats.pt")
    loaded = FeatureStats.from_dict(torch.load(tmp_path / "stats.pt", weights_only=True))
    assert loaded.n == 50
    assert torch.equal(loaded.total, stats.total) and torch.equal(loaded.outer, stats.outer)


def test_all_reduce_without_torch_distributed_is_a_no_op():
    assert not dist.is_initialized()
    stats = stats_of(features(20, 4, seed=15))
    before = stats.to_dict()
    stats.all_reduce()
    assert stats.n == 20 and torch.equal(stats.total, before["total"]) and torch.equal(stats.outer, before["outer"])


def test_too_few_samples_and_non_finite_features_are_refused():
    stats = FeatureStats.empty(4).update(torch.ones(1, 4))
    with pytest.raises(ValueError, match="FID needs at least 2 samples, got 1"):
        stats.covariance()
    for bad in (float("nan"), float("inf")):
        x = torch.zeros(3, 4)
        x[1, 2] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            FeatureStats.empty(4).update(x)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        FeatureStats.empty(4).update(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="dim 4"):
        FeatureStats.empty(4).merge(FeatureStats.empty(5))


def _gloo_rank(rank: int, world_size: int, port: int, x: torch.Tensor, out: str) -> None:
    """One rank of the 2-process test: statistics of its share of x, all-reduced; rank 0 saves them."""
    import os

    from hpc_ncsn.distributed import match_threads

    os.environ["LOCAL_WORLD_SIZE"] = str(world_size)  # what torchrun exports; the product splits the CPUs by it
    match_threads()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        stats = FeatureStats.empty(x.shape[1]).update(x.tensor_split(world_size)[rank]).all_reduce()
        if rank == 0:
            torch.save({"n": stats.n, "mean": stats.mean(), "cov": stats.covariance()}, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_statistics(tmp_path):
    x, y = features(301, 32, seed=16), features(256, 32, seed=17, shift=0.1)  # 301: unequal shares 151 + 150
    out = tmp_path / "rank0.pt"
    context = mp.start_processes(_gloo_rank, args=(2, free_port(), x, str(out)), nprocs=2, join=False,
                                 start_method="spawn")
    deadline = time.monotonic() + HANG_GUARD_S
    try:
        while not context.join(timeout=1):
            assert time.monotonic() < deadline, f"the 2-process gloo test did not finish in {HANG_GUARD_S} s (a hang)"
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
    reduced = torch.load(out, weights_only=True)
    single = stats_of(x)
    assert reduced["n"] == 301
    assert rel_err(reduced["mean"], single.mean()) < 1e-12
    assert rel_err(reduced["cov"], single.covariance()) < 1e-12
    reference = stats_of(y).to_numpy()
    fid_single = frechet_distance(*single.to_numpy(), *reference)
    assert frechet_distance(reduced["mean"], reduced["cov"], *reference) == pytest.approx(fid_single, rel=1e-9)


# --- image checks and the small-N warning ---------------------------------------------------------------------


@pytest.mark.parametrize("images, match", [
    ([[0, 1]], "torch.Tensor or numpy.ndarray"),
    (torch.rand(4, 3, 8, 8), "convert with hpc_ncsn.data.to_uint8"),
    (np.full((4, 3, 8, 8), np.nan, dtype=np.float32), "NaN"),
    (torch.full((4, 3, 8, 8), float("nan")), "NaN"),
    (np.zeros((3, 8, 8), dtype=np.uint8), "4-D"),
    (torch.zeros(4, 2, 8, 8, dtype=torch.uint8), "1 or 3 channels"),
    (np.zeros((4, 8, 8, 4), dtype=np.uint8), "1 or 3 channels"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "FID/KID need at least 2 samples"),
    (torch.full((4, 3, 8, 8), 300, dtype=torch.int16), "out of range 0..255"),
    (np.full((4, 3, 8, 8), -1, dtype=np.int32), "out of range 0..255"),
    (torch.full((4, 3, 8, 8), 200, dtype=torch.int16), r"cast with \.to\(torch\.uint8\)"),
    (torch.zeros(4, 3, 8, 8, dtype=torch.bool), "expected uint8"),
])
def test_check_images_refuses_with_the_reason(images, match):
    with pytest.raises(ValueError, match=match):
        check_images(images)


def test_check_images_accepts_uint8_nchw_and_nhwc():
    check_images(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    check_images(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    check_images(np.zeros((2, 8, 8, 3), dtype=np.uint8))
    check_images(np.zeros((2, 3, 8, 3), dtype=np.uint8))  # ambiguous: taken as NCHW


def test_small_sample_warning():
    assert small_sample_warning(50_000) is None
    message = small_sample_warning(10_000)
    assert "N=10,000" in message and "biased upward" in message and "50,000" in message


def test_kid_kernels_agree_on_torch_tensors_and_numpy_arrays():
    """KID runs its kernel matrices in torch on a GPU and in numpy on the CPU: one formula, both types."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(50, 16)), rng.normal(size=(50, 16)) + 0.2
    kernels = lambda a, b: [polynomial_kernel(p, q, 3, 1 / 16, 1.0) for p, q in ((a, a), (b, b), (a, b))]  # noqa: E731
    with_numpy = unbiased_mmd2(*kernels(x, y))
    with_torch = unbiased_mmd2(*kernels(torch.from_numpy(x), torch.from_numpy(y)))
    assert isinstance(with_torch, torch.Tensor) and with_torch.dtype == torch.float64
    assert float(with_torch) == pytest.approx(float(with_numpy), rel=1e-12) and float(with_numpy) > 0
