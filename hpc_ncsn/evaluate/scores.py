"""Sample-quality metrics on feature vectors: FID, KID, IS, and the checks before them.

The feature extractor (Inception-v3 pool3 / logits) lives elsewhere; this module starts
from its outputs and must be right to the last printed digit:

* `FeatureStats` keeps the exact sufficient statistics of the features (n, Σx, Σxxᵀ) in
  float64. They can be updated batch by batch, merged, summed across ranks with
  torch.distributed and cached with torch.save, and give the mean and the unbiased
  covariance that the Fréchet distance needs.
* `frechet_distance` is FID (Heusel et al. 2017) with a matrix square root that stays
  real when the covariances are rank-deficient.
* `kernel_inception_distance` (Bińkowski et al. 2018) and `inception_score` (Salimans
  et al. 2016) use the same definitions and the same seeded subset/shuffle draws as
  torch-fidelity, so that with the same seed they give the same numbers.
* `small_sample_warning` says when N is below the 50,000 of the standard protocol.

One concept, the metric maths on feature vectors, hence longer than the ~300 lines of a module here.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "FeatureStats",
    "frechet_distance",
    "frechet_distances",
    "frechet_distance_to_rows",
    "inception_score",
    "kernel_inception_distance",
    "polynomial_kernel",
    "small_sample_warning",
    "unbiased_mmd2",
]

# Relative tolerances for covariances given to frechet_distance (_checked_covariance, _checked_psd_eigenvalues).
_SYMMETRY_RTOL = 1e-6
_PSD_RTOL = 1e-6


class FeatureStats:
    """Exact, mergeable sufficient statistics of feature vectors x ∈ R^D, in float64.

    n = number of vectors, total = Σx (D,), outer = Σxxᵀ (D, D). From these,
    mean μ = total / n and the unbiased covariance Σ = (outer − n μμᵀ) / (n − 1), the
    same estimator as numpy.cov(rowvar=False), which torch-fidelity uses.

    Exactness: the sums are kept in float64 whatever the feature dtype, so splitting the
    data into batches, merging partial statistics or all-reducing them over ranks changes
    only the order of summation, i.e. the last bits: 1-process and 2-process results agree
    to ~1e-12 relative. The one-pass covariance Σxxᵀ − nμμᵀ loses about log10(1 + μ_i²/Σ_ii)
    of float64's ~16 digits to cancellation; that stays small unless a feature's mean is
    orders of magnitude above its standard deviation.

    update, merge and all_reduce change the statistics in place and return self.
    """

    def __init__(self, n: int, total: torch.Tensor, outer: torch.Tensor):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"FeatureStats n must be a non-negative int, got {n!r}")
        if total.ndim != 1 or outer.shape != (total.shape[0], total.shape[0]):
            raise ValueError(
                f"FeatureStats needs total of shape (D,) and outer of shape (D, D), got {tuple(total.shape)} "
                f"and {tuple(outer.shape)}; build empty statistics with FeatureStats.empty(dim)"
            )
        if total.dtype != torch.float64 or outer.dtype != torch.float64 or total.device != outer.device:
            raise ValueError(
                f"FeatureStats needs float64 total and outer on one device, got {total.dtype} on {total.device} and "
                f"{outer.dtype} on {outer.device}; convert with .to(torch.float64)"
            )
        self.n = n
        self.total = total
        self.outer = outer

    @classmethod
    def empty(cls, dim: int, device: torch.device | str = "cpu") -> FeatureStats:
        """No samples yet: n = 0 and zero sums of feature dimension `dim` on `device`."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"FeatureStats dim must be a positive int (the feature length), got {dim!r}")
        return cls(0, torch.zeros(dim, dtype=torch.float64, device=device),
                   torch.zeros(dim, dim, dtype=torch.float64, device=device))

    @property
    def dim(self) -> int:
        return self.total.shape[0]

    @property
    def device(self) -> torch.device:
        return self.total.device

    @torch.no_grad()
    def update(self, features: torch.Tensor) -> FeatureStats:
        """Add a batch of features (N, D): n += N, total += Σx, outer += XᵀX, summed in float64."""
        if not isinstance(features, torch.Tensor):
            raise TypeError(f"features must be a torch.Tensor of shape (N, {self.dim}), got {type(features).__name__}")
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(
                f"features must have shape (N, {self.dim}), got {tuple(features.shape)}; flatten each sample's "
                "features to one vector (e.g. features.flatten(1))"
            )
        x = features.detach().to(device=self.device, dtype=torch.float64)
        if not torch.isfinite(x).all():
            raise ValueError(
                "features contain NaN or inf; find the images or the extractor batch that produced them "
                "(non-finite features would make every statistic NaN)"
            )
        self.n += x.shape[0]
        self.total += x.sum(dim=0)
        self.outer.addmm_(x.T, x)
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add the statistics of a disjoint set of features: the result is that of their union."""
        if not isinstance(other, FeatureStats) or other.dim != self.dim:
            got = f"dim {other.dim}" if isinstance(other, FeatureStats) else type(other).__name__
            raise ValueError(f"can merge only FeatureStats of dim {self.dim}, got {got}")
        self.n += other.n
        self.total += other.total.to(self.device)
        self.outer += other.outer.to(self.device)
        return self

    @torch.no_grad()
    def all_reduce(self, group=None) -> FeatureStats:
        """Sum n, total and outer over the ranks of `group` in place, in float64.

        n travels as a float64 tensor (exact for counts below 2^53). Every rank must call this
        with statistics of the same dim, on a device its backend supports (CUDA for NCCL).
        When torch.distributed is not available or not initialized this is a no-op.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        count = torch.tensor([float(self.n)], dtype=torch.float64, device=self.device)
        for tensor in (count, self.total, self.outer):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        self.n = int(count.item())
        return self

    def mean(self) -> torch.Tensor:
        """μ = Σx / n, float64 (D,)."""
        if self.n < 1:
            raise ValueError("the mean needs at least 1 sample, got 0; update the statistics with features first")
        return self.total / self.n

    def covariance(self) -> torch.Tensor:
        """Unbiased Σ = (Σxxᵀ − n μμᵀ) / (n − 1), float64 (D, D), symmetrized against round-off."""
        if self.n < 2:
            raise ValueError(f"FID needs at least 2 samples, got {self.n}; update the statistics with more features")
        mu = self.mean()
        cov = (self.outer - self.n * torch.outer(mu, mu)) / (self.n - 1)
        return (cov + cov.T) / 2

    def to_dict(self) -> dict:
        """{'n': int, 'total': Tensor, 'outer': Tensor} (copies), for torch.save caching."""
        return {"n": self.n, "total": self.total.clone(), "outer": self.outer.clone()}

    @classmethod
    def from_dict(cls, state: dict, device: torch.device | str | None = None) -> FeatureStats:
        """Inverse of to_dict; tensors go to `device` (default: where they are) as float64."""
        missing = {"n", "total", "outer"} - set(state)
        if missing:
            raise ValueError(f"FeatureStats state lacks {sorted(missing)}; it must come from FeatureStats.to_dict()")
        device = state["total"].device if device is None else device
        return cls(int(state["n"]), state["total"].to(device=device, dtype=torch.float64),
                   state["outer"].to(device=device, dtype=torch.float64))

    def to_numpy(self) -> tuple[np.ndarray, np.ndarray]:
        """(μ, Σ) as float64 numpy arrays, the inputs of frechet_distance."""
        return self.mean().cpu().numpy(), self.covariance().cpu().numpy()


def _as_float64_array(x, name: str) -> np.ndarray:
    """numpy array or torch tensor → finite float64 numpy array (ValueError otherwise)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    else:
        x = np.asarray(x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has NaN or inf entries; recompute it from finite features")
    return x


def _checked_covariance(sigma: np.ndarray, name: str, dim: int) -> np.ndarray:
    """Check that sigma is a symmetric (dim, dim) matrix within 1e-6 of its largest entry;
    return its exactly symmetric part."""
    if sigma.shape != (dim, dim):
        raise ValueError(
            f"{name} must be a square ({dim}, {dim}) covariance matching the mean's length {dim}, "
            f"got shape {sigma.shape}"
        )
    if np.abs(sigma - sigma.T).max(initial=0.0) > _SYMMETRY_RTOL * np.abs(sigma).max(initial=0.0):
        raise ValueError(f"{name} is not symmetric; pass a covariance matrix (e.g. FeatureStats.covariance())")
    return (sigma + sigma.T) / 2


def _zero_round_off(eigenvalues: np.ndarray, scale: float) -> np.ndarray:
    """Eigenvalues λ ≤ D·ε·scale → 0 (D = their count, ε = float64 epsilon, scale = the norm of
    the matrix they came from). Below that level a computed λ is round-off of either sign, and
    √λ would turn ~1e-16·scale into ~1e-8·√scale per zero eigenvalue of a rank-deficient matrix."""
    cutoff = eigenvalues.size * np.finfo(np.float64).eps * scale
    return np.where(eigenvalues > cutoff, eigenvalues, 0.0)


def _checked_psd_eigenvalues(eigenvalues: np.ndarray, name: str) -> np.ndarray:
    """Eigenvalues of a covariance: refuse a clearly negative one (< −1e-6 · the largest |λ|, so
    the matrix is no covariance) and zero the round-off ones (_zero_round_off)."""
    scale = float(np.abs(eigenvalues).max(initial=0.0))
    if eigenvalues.min(initial=0.0) < -_PSD_RTOL * scale:
        raise ValueError(
            f"{name} is not positive semi-definite (smallest eigenvalue {eigenvalues.min():.3g}); pass a "
            "covariance matrix (e.g. FeatureStats.covariance())"
        )
    return _zero_round_off(eigenvalues, scale)


def _sqrt_psd(sigma1: np.ndarray) -> tuple[np.ndarray, float]:
    """(A = Σ1^{1/2}, the largest eigenvalue of Σ1): A = V diag(√w) Vᵀ from Σ1 = V diag(w) Vᵀ (eigh), round-off
    eigenvalues w set to 0."""
    w1, v1 = np.linalg.eigh(sigma1)
    w1 = _checked_psd_eigenvalues(w1, "sigma1")
    return (v1 * np.sqrt(w1)) @ v1.T, w1.max(initial=0.0)


def _trace_sqrt_product(a: np.ndarray, largest1: float, sigma2: np.ndarray) -> float:
    """Tr((Σ1Σ2)^{1/2}) = Σ_i √λ_i, λ_i the eigenvalues of the symmetric PSD S = A Σ2 A, A = Σ1^{1/2} (`_sqrt_psd`).

    Σ1Σ2 = A (A Σ2 A) A⁻¹ on the range of A, so Σ1Σ2 and S share their non-zero eigenvalues,
    and S is symmetric PSD: eigvalsh gives real λ, and those at the round-off level of
    ‖Σ1‖·‖Σ2‖ (tiny negatives included) are set to 0 before the square root.
    """
    w2 = _checked_psd_eigenvalues(np.linalg.eigvalsh(sigma2), "sigma2")
    s = a @ sigma2 @ a
    eigenvalues = _zero_round_off(np.linalg.eigvalsh((s + s.T) / 2), largest1 * w2.max(initial=0.0))
    return float(np.sqrt(eigenvalues).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2) (FID; Heusel et al. 2017, eq. 6):

        d² = ‖μ1 − μ2‖² + Tr(Σ1) + Tr(Σ2) − 2 Tr((Σ1Σ2)^{1/2}),

    computed in float64 from numpy arrays or torch tensors.

    Why not scipy.linalg.sqrtm(Σ1Σ2) (TTUR, pytorch-fid): Σ1Σ2 is not symmetric, and when
    the covariances are rank-deficient (N ≤ D samples, or dead features) sqrtm returns
    complex values or NaN, which codes then silently drop with `.real`. Here the trace
    comes from the eigenvalues of the symmetric PSD A Σ2 A (A = Σ1^{1/2}), which are real;
    eigenvalues at round-off level (tiny negatives included) are set to 0, and so is a final
    d² that round-off takes below 0 (d² is a squared Wasserstein-2 distance, ≥ 0). The
    result is always a finite real float; non-finite, non-square, non-symmetric, non-PSD or mismatched inputs raise ValueError.
    """
    return frechet_distances(mu1, sigma1, [(mu2, sigma2)])[0]


def frechet_distances(mu1, sigma1, others) -> list[float]:
    """`frechet_distance` from N(μ1, Σ1) to each N(μ2, Σ2) of the iterable `others` (pairs, read one at a time),
    with Σ1's square root computed once: what FID at several subset sizes against one reference needs."""
    mu1 = _as_float64_array(mu1, "mu1")
    a = largest1 = sigma1_checked = None
    distances = []
    for mu2, sigma2 in others:
        mu2 = _as_float64_array(mu2, "mu2")
        if mu1.ndim != 1 or mu1.shape != mu2.shape:
            raise ValueError(f"mu1 and mu2 must be vectors of one length D, got shapes {mu1.shape} and {mu2.shape}")
        dim = mu1.shape[0]
        if a is None:
            sigma1_checked = _checked_covariance(_as_float64_array(sigma1, "sigma1"), "sigma1", dim)
        sigma2 = _checked_covariance(_as_float64_array(sigma2, "sigma2"), "sigma2", dim)
        if a is None:
            a, largest1 = _sqrt_psd(sigma1_checked)
        diff = mu1 - mu2
        trace_term = _trace_sqrt_product(a, largest1, sigma2)
        distance = diff @ diff + np.trace(sigma1_checked) + np.trace(sigma2) - 2 * trace_term
        distances.append(max(float(distance), 0.0))
    return distances


def frechet_distance_to_rows(mu1, sigma1, rows) -> float:
    """`frechet_distance` from N(μ1, Σ1) to the mean and unbiased covariance of `rows` (n, D), through their
    n × n form: what FID of a subset with n ≤ D costs far less that way (no D × D eigendecomposition).

    With X the centred rows, Σ2 = XᵀX/(n − 1): Tr(Σ2) = ‖X‖²_F/(n − 1), and Σ1Σ2 = (Σ1Xᵀ)(X/(n − 1)) has the
    non-zero eigenvalues of the symmetric PSD n × n matrix X Σ1 Xᵀ/(n − 1) (AB and BA share them), whose
    round-off eigenvalues are set to 0 as in `frechet_distance`."""
    x = _as_float64_matrix(rows, "rows")
    mu1 = _as_float64_array(mu1, "mu1")
    if mu1.ndim != 1 or x.shape[1] != mu1.shape[0] or x.shape[0] < 2:
        raise ValueError(f"rows must be (n >= 2, D) with D the length of mu1 {mu1.shape}, got {x.shape}")
    sigma1 = _checked_covariance(_as_float64_array(sigma1, "sigma1"), "sigma1", mu1.shape[0])
    mu2 = x.mean(axis=0)
    centred = x - mu2
    gram = centred @ sigma1 @ centred.T / (x.shape[0] - 1)
    eigenvalues = np.linalg.eigvalsh((gram + gram.T) / 2)
    eigenvalues = _checked_psd_eigenvalues(eigenvalues, "sigma1 seen through the rows")
    diff = mu1 - mu2
    distance = (diff @ diff + np.trace(sigma1) + np.einsum("ij,ij->", centred, centred) / (x.shape[0] - 1)
                - 2 * np.sqrt(eigenvalues).sum())
    return max(float(distance), 0.0)


def _as_float64_matrix(x, name: str) -> np.ndarray:
    """(N, D) features as a finite float64 numpy array."""
    x = _as_float64_array(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (N, D), got {x.shape}; flatten each sample with .flatten(1)")
    return x


def polynomial_kernel(x, y, degree: int, gamma: float, coef0: float):
    """k(x, y) = (γ x·y + coef0)^degree for all pairs of rows (numpy arrays or torch tensors).

    An integer degree is done as repeated products in place: numpy's power with an integer
    exponent of 3 took 2.3× as long as the matrix product itself.
    """
    base = x @ y.T
    base *= gamma
    base += coef0
    if degree != int(degree) or degree < 1:
        return base**degree
    kernel = base.copy() if isinstance(base, np.ndarray) else base.clone()
    for _ in range(int(degree) - 1):
        kernel *= base
    return kernel


def unbiased_mmd2(k_xx, k_yy, k_xy):
    """Unbiased MMD² (Gretton et al. 2012, eq. 3) with m samples per side (numpy or torch scalar):

    Σ_{i≠j} k(x_i, x_j)/(m(m−1)) + Σ_{i≠j} k(y_i, y_j)/(m(m−1)) − 2 Σ_{i,j} k(x_i, y_j)/m².
    (The cross term keeps its diagonal, as in Bińkowski et al.'s code and torch-fidelity.)
    """
    m = k_xx.shape[0]
    within = (k_xx.sum() - k_xx.trace()) + (k_yy.sum() - k_yy.trace())
    return within / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)


def kernel_inception_distance(features1, features2, *, subsets: int = 100, subset_size: int = 1000,
                              degree: int = 3, gamma: float | None = None, coef0: float = 1.0,
                              seed: int = 2020, device: torch.device | str = "cpu") -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): unbiased MMD² with k(x, y) = (γ x·y + coef0)^degree, γ = 1/D
    by default, averaged over `subsets` random subsets; returns (mean, std) with std = numpy.std (ddof 0).

    Each subset draws `subset_size` rows of features1 and then of features2 without replacement,
    from numpy.random.RandomState(seed) — the draw order and the default seed 2020 of torch-fidelity's
    kid_features_to_metric, so equal seeds give equal subsets. subset_size is capped at the smaller
    set's size (torch-fidelity refuses instead). Computed in float64 whatever the input dtype, on
    `device` (a GPU does the 3 × `subsets` kernel matrices in a fraction of a second).
    """
    x = _as_float64_matrix(features1, "features1")
    y = _as_float64_matrix(features2, "features2")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"features1 and features2 must have one feature length, got {x.shape[1]} and {y.shape[1]}")
    m = min(subset_size, x.shape[0], y.shape[0])
    if m < 2 or subsets < 1:
        raise ValueError(
            f"KID needs subsets >= 1 and at least 2 samples per subset, got subsets={subsets}, subset size {m} "
            f"(from subset_size={subset_size}, N1={x.shape[0]}, N2={y.shape[0]}); pass more features"
        )
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    rng = np.random.RandomState(seed)
    draws = [(rng.choice(x.shape[0], m, replace=False), rng.choice(y.shape[0], m, replace=False))
             for _ in range(subsets)]
    on_host = torch.device(device).type == "cpu"  # there numpy's BLAS multiplies float64 faster than torch's
    x_all, y_all = (x, y) if on_host else (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
    kernel = lambda a, b: polynomial_kernel(a, b, degree, gamma, coef0)  # noqa: E731
    entries = x.shape[0] ** 2 + y.shape[0] ** 2 + x.shape[0] * y.shape[0]
    if entries <= min(KID_WHOLE_KERNEL_ENTRIES, 3 * subsets * m * m):  # fits, and costs less than per subset
        values = _mmds_from_whole_kernels(kernel(x_all, x_all), kernel(y_all, y_all), kernel(x_all, y_all), draws, m)
    else:  # one subset at a time: the whole kernel matrices would not fit, or would cost more
        rows = (lambda drawn: drawn) if on_host else (lambda drawn: torch.from_numpy(drawn).to(device))  # noqa: E731
        mmds = []
        for drawn_x, drawn_y in draws:
            xs, ys = x_all[rows(drawn_x)], y_all[rows(drawn_y)]
            mmds.append(unbiased_mmd2(kernel(xs, xs), kernel(ys, ys), kernel(xs, ys)))
        values = mmds
    values = np.array(values, dtype=np.float64) if on_host else torch.stack(list(values)).cpu().numpy()
    return float(np.mean(values)), float(np.std(values))


# Kernel matrices over all rows, in float64, up to this many entries in all (1 GiB): then each subset's sums
# are read off them instead of recomputing three m×m kernels per subset.
KID_WHOLE_KERNEL_ENTRIES = 1 << 27


def _mmds_from_whole_kernels(k_xx, k_yy, k_xy, draws, m: int):
    """unbiased_mmd2 of every subset from the kernel matrices of all rows.

    With v the 0/1 indicator of a subset's rows, the sum of its kernel block is vᵀKv and the
    trace diag(K)·v; all subsets' indicators side by side (a matrix V) make that two matrix
    products per kernel. Equal to unbiased_mmd2 on the subset's own kernels up to float64
    summation order.
    """
    def indicators(size: int, chosen: list) -> "np.ndarray | torch.Tensor":
        if isinstance(k_xx, np.ndarray):
            v = np.zeros((size, len(chosen)))
            for column, rows in enumerate(chosen):
                v[rows, column] = 1.0
            return v
        v = torch.zeros(size, len(chosen), dtype=k_xx.dtype, device=k_xx.device)
        for column, rows in enumerate(chosen):
            v[torch.from_numpy(rows).to(k_xx.device), column] = 1.0
        return v

    vx = indicators(k_xx.shape[0], [drawn_x for drawn_x, _ in draws])
    vy = indicators(k_yy.shape[0], [drawn_y for _, drawn_y in draws])
    diagonal = np.diagonal if isinstance(k_xx, np.ndarray) else torch.diagonal
    within = ((k_xx @ vx) * vx).sum(0) - diagonal(k_xx) @ vx + ((k_yy @ vy) * vy).sum(0) - diagonal(k_yy) @ vy
    across = ((k_xy @ vy) * vx).sum(0)
    return within / (m * (m - 1)) - 2 * across / (m * m)


def _split_inception_score(log_p: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) ‖ p(y))) on one split, p(y) = mean_x p(y|x), from log p(y|x) (M, C).

    log p(y) = logsumexp_x log p(y|x) − log M, so a class whose probabilities underflow to 0
    gives 0·(finite) instead of 0·(−log 0) = NaN.
    """
    log_marginal = torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])
    kl = (log_p.exp() * (log_p - log_marginal)).sum(dim=1)
    return math.exp(kl.mean().item())


def inception_score(logits: torch.Tensor, *, splits: int = 10, seed: int | None = 2020) -> tuple[float, float]:
    """IS (Salimans et al. 2016) = exp(E_x KL(p(y|x) ‖ p(y))) per split, (mean, std over splits).

    As torch-fidelity's isc_features_to_metric: p(y|x) = softmax(logits) in float64; the rows
    are first shuffled with numpy.random.RandomState(seed).permutation (seed=None keeps their
    order, torch-fidelity's shuffle=False); split i is rows [i·N//splits, (i+1)·N//splits);
    std is numpy.std (ddof 0).
    """
    x = torch.from_numpy(_as_float64_matrix(logits, "logits"))
    n = x.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"inception_score needs 1 <= splits <= N, got splits={splits} for N={n}; lower splits")
    if seed is not None:
        x = x[torch.from_numpy(np.random.RandomState(seed).permutation(n))]
    log_p = torch.log_softmax(x, dim=1)
    scores = [_split_inception_score(log_p[i * n // splits:(i + 1) * n // splits]) for i in range(splits)]
    return float(np.mean(scores)), float(np.std(scores))


def small_sample_warning(n: int, standard: int = 50_000) -> str | None:
    """A warning when n < standard: FID's estimator is biased upward at small N (Bińkowski et al.
    2018, sec. 2.3), so scores are comparable only at equal N; None otherwise."""
    if n >= standard:
        return None
    return (f"FID with N={n:,} samples is biased upward; the standard protocol uses {standard:,} "
            "(compare scores only at equal N)")
