"""Comparing two arms over seeds: paired differences, their intervals, a verdict and what could not be seen.

An arm of the sweep is run once per seed, and cells that share a seed share the data
order, the sampling noise and (where training is identical) the network. So the
per-seed difference d_s = arm_s − baseline_s cancels everything the two cells share,
and the comparison is a one-sample problem on d_1 … d_n (the paired t interval):

    d̄ ± t_{1−α/2, n−1} · s_d / √n,   s_d² = Σ (d_s − d̄)² / (n − 1).

Arms that do not share networks share less; their comparison uses Welch's unpaired
interval (`welch_comparison`), difference of means ± t_{1−α/2, ν} · √(s_a²/n_a + s_b²/n_b)
with the Welch–Satterthwaite ν.

Beside the t interval: a percentile bootstrap over seeds (resample the n seeds with
replacement B times, the α/2 and 1−α/2 quantiles of the resampled means; seeded, so
deterministic; at n ≤ 5 it can take only a handful of values and is narrower than the
t interval, so the verdict follows the t interval). The verdict is "better" or "worse"
when the t interval excludes 0, in the direction the metric prefers (lower FID is
better), else "no difference seen at 95 %".

The power line: the minimal detectable difference (MDD) is the true difference that a
two-sided test at level α would find with probability 80 % (`power`) when the spread of
the differences is the one observed: the δ with P(|T| > t_{1−α/2, ν}) = 0.8, T noncentral
t with ν degrees of freedom and noncentrality δ/SE (SE = s_d/√n paired, the Welch SE
unpaired). "With n seeds and this spread, a difference below MDD cannot be seen."

Where no difference is seen, how many seeds would see the one observed: the smallest n
whose MDD is at most |d̄| when the spread stays as observed (`seeds_to_see`): paired,
SE_n = s_d/√n with n − 1 degrees of freedom; unpaired, n per arm with SE_n = SE·√(n₀/n)
(n₀ the smaller arm's count) and 2n − 2 degrees of freedom. At large n this is the normal
formula n ≈ ((z_{1−α/2} + z_power)·s_d/d̄)².

scipy (a dependency for these quantiles) and numpy only; no torch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = ["BETTER", "Comparison", "compare_to_baseline", "NO_DIFFERENCE", "TOO_FEW", "WORSE", "bootstrap_interval", "minimal_detectable",
           "paired_comparison", "paired_interval", "seeds_to_see", "t_quantile", "verdict", "welch_comparison",
           "welch_interval"]

BETTER, WORSE, TOO_FEW = "better", "worse", "too few seeds"
NO_DIFFERENCE = "no difference seen at {percent}"


def _percent(level: float) -> str:
    return f"{100 * level:g} %"


@functools.lru_cache(maxsize=1024)
def t_quantile(probability: float, dof: float) -> float:
    """The `probability` quantile of Student's t with `dof` degrees of freedom (dof = inf: the normal); each pair is
    computed once (scipy's ppf takes a millisecond, and a table of a thousand rows asks for the same few)."""
    from scipy.stats import norm, t

    if not 0 < probability < 1 or not dof > 0:
        raise ValueError(f"t quantile needs 0 < probability < 1 and dof > 0, got {probability}, {dof}")
    return float(norm.ppf(probability) if math.isinf(dof) else t.ppf(probability, dof))


def _power(shift: float, critical: float, dof: float) -> float:
    """P(|T| > critical), T = (Z + shift)/√(V/dof), Z ~ N(0, 1), V ~ χ²(dof): the two-sided t test's power at
    noncentrality `shift`, as ∫ [Φ(shift − c√(v/dof)) + Φ(−shift − c√(v/dof))] χ²_dof(v) dv (scipy's nct gives
    NaN at small dof and large shifts)."""
    from scipy.integrate import quad
    from scipy.special import chdtri, ndtr

    if math.isinf(dof):
        return float(ndtr(shift - critical) + ndtr(-critical - shift))
    log_norm = -(dof / 2) * math.log(2) - math.lgamma(dof / 2)

    def integrand(v: float) -> float:
        scaled = critical * math.sqrt(v / dof)
        density = math.exp(log_norm + (dof / 2 - 1) * math.log(v) - v / 2)
        return float(ndtr(shift - scaled) + ndtr(-shift - scaled)) * density

    low, high = chdtri(dof, 1 - 1e-12), chdtri(dof, 1e-12)  # χ² quantiles 1e-12 and 1 − 1e-12
    return quad(integrand, low, high, points=[dof], limit=200, epsabs=1e-11)[0]


def minimal_detectable(standard_error: float, dof: float, *, level: float = 0.95, power: float = 0.8) -> float:
    """The true difference δ a two-sided t test at `level` detects with probability `power`:
    P(|T| > t_{(1+level)/2, dof}) = power with T ~ noncentral t(dof, δ/standard_error) (`_power`, solved for δ
    by brentq); 0 when standard_error is 0."""
    return 0.0 if standard_error == 0 else _detectable_shift(float(dof), level, power) * standard_error


@functools.lru_cache(maxsize=256)
def _detectable_shift(dof: float, level: float, power: float) -> float:
    """The noncentrality at which the two-sided t test at `level` has `power` (minimal_detectable / SE)."""
    from scipy.optimize import brentq

    critical = t_quantile((1 + level) / 2, dof)
    high = 2 * critical + 10
    while _power(high, critical, dof) < power:
        high *= 2
    return brentq(lambda shift: _power(shift, critical, dof) - power, 0.0, high, xtol=1e-9)


SEEDS_CAP = 10_000  # seeds_to_see answers "more than this" beyond it


def seeds_to_see(difference: float, spread: float, *, paired: bool = True, observed: int = 2, level: float = 0.95,
                 power: float = 0.8) -> int | None:
    """The smallest number of seeds (per arm, unpaired) at which a true difference of `difference` is seen with
    probability `power` by the two-sided t test at `level`, the spread staying as observed: paired, `spread` is
    s_d and SE_n = s_d/√n (n − 1 degrees of freedom); unpaired, `spread` is the standard error observed with
    `observed` values per arm and SE_n = spread·√(observed/n) (2n − 2 degrees of freedom). None when even
    SEEDS_CAP seeds would not (or the difference is 0)."""

    def detectable(n: int) -> float:
        se = spread / math.sqrt(n) if paired else spread * math.sqrt(observed / n)
        return minimal_detectable(se, n - 1 if paired else 2 * n - 2, level=level, power=power)

    target = abs(difference)
    if target == 0 or detectable(SEEDS_CAP) > target:
        return None
    # The z test's answer is a floor (the t test needs more); search upwards from it, then bisect.
    shift = _detectable_shift(math.inf, level, power)
    floor = (shift * spread / target) ** 2 * (1 if paired else observed)
    low = min(max(1, math.ceil(floor) - 1), SEEDS_CAP - 1)  # below the answer (n >= 2)
    high = min(low + 2, SEEDS_CAP)
    while detectable(high) > target:
        low, high = high, min(2 * high, SEEDS_CAP)
    while high - low > 1:
        middle = (low + high) // 2
        if detectable(middle) <= target:
            high = middle
        else:
            low = middle
    return high


def paired_interval(differences: Sequence[float], *, level: float = 0.95) -> tuple[float, float, tuple[float, float]]:
    """(mean d̄, sd s_d, the paired t interval d̄ ± t_{(1+level)/2, n−1} s_d/√n) of n ≥ 2 differences."""
    n = len(differences)
    if n < 2:
        raise ValueError(f"a paired interval needs at least 2 differences, got {n}")
    mean = math.fsum(differences) / n
    sd = math.sqrt(math.fsum((d - mean) ** 2 for d in differences) / (n - 1))
    half = t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return mean, sd, (mean - half, mean + half)


def welch_interval(baseline: Sequence[float], arm: Sequence[float], *,
                   level: float = 0.95) -> tuple[float, float, float, tuple[float, float]]:
    """(difference of means arm − baseline, its standard error √(s_a²/n_a + s_b²/n_b), the Welch–Satterthwaite
    degrees of freedom ν, the interval ± t_{(1+level)/2, ν}·SE), at least 2 values per side."""
    if min(len(baseline), len(arm)) < 2:
        raise ValueError(f"Welch's interval needs 2 values per side, got {len(baseline)} and {len(arm)}")
    va, vb = np.var(baseline, ddof=1) / len(baseline), np.var(arm, ddof=1) / len(arm)
    se = math.sqrt(va + vb)
    if se > 0:
        dof = (va + vb) ** 2 / (va**2 / (len(baseline) - 1) + vb**2 / (len(arm) - 1))
    else:
        dof = float(len(baseline) + len(arm) - 2)
    mean = float(np.mean(arm) - np.mean(baseline))
    half = t_quantile((1 + level) / 2, dof) * se
    return mean, se, float(dof), (mean - half, mean + half)


def bootstrap_interval(values: Sequence[float], *, level: float = 0.95, resamples: int = 10_000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: `resamples` resamples of the values with replacement
    drawn by numpy's default_rng(seed), the (1−level)/2 and (1+level)/2 quantiles of their means."""
    data = np.asarray(values, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, data.size, size=(resamples, data.size))
    means = data[draws].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def verdict(interval: tuple[float, float] | None, *, lower_is_better: bool, level: float = 0.95) -> str:
    """"better"/"worse" when the interval of (arm − baseline) excludes 0, in the metric's preferred direction;
    "no difference seen at 95 %" when it holds 0; "too few seeds" without an interval."""
    if interval is None:
        return TOO_FEW
    low, high = interval
    if low > 0:
        return WORSE if lower_is_better else BETTER
    if high < 0:
        return BETTER if lower_is_better else WORSE
    return NO_DIFFERENCE.format(percent=_percent(level))


@dataclass(frozen=True)
class Comparison:
    """One arm against the baseline on one metric; differences are arm − baseline.

    paired: per-seed differences (seeds, differences set) or Welch's unpaired interval (both empty; `sd` then
    holds the standard error of the difference of means).
    interval: the t interval (paired t, or Welch), None with fewer than 2 seeds (per side, unpaired).
    detectable: the MDD at 80 % power (module docstring); half_width: half the t interval.
    seeds_needed: where no difference is seen, the seeds that would see the observed mean at 80 % power
    (`seeds_to_see`; None beyond SEEDS_CAP or when a difference is seen).
    """

    arm: str
    baseline: str
    metric: str
    lower_is_better: bool
    paired: bool
    n: int
    seeds: tuple
    differences: tuple
    mean: float | None
    sd: float | None
    dof: float | None
    interval: tuple[float, float] | None
    bootstrap: tuple[float, float] | None
    verdict: str
    detectable: float | None
    level: float = 0.95
    seeds_needed: int | None = None

    @property
    def half_width(self) -> float | None:
        return None if self.interval is None else (self.interval[1] - self.interval[0]) / 2

    def power_line(self) -> str:
        """One sentence for the table under the comparison."""
        if self.interval is None:
            return f"{self.arm} vs {self.baseline}: {self.n} seed(s) give no interval; run at least 2 seeds per arm"
        spread = f"sd of the differences {self.sd:.3g}" if self.paired else f"standard error {self.sd:.3g}"
        kind = "paired" if self.paired else "unpaired (no shared networks)"
        line = (f"{self.arm} vs {self.baseline} ({kind}): with {self.n} seeds and this spread ({spread}), "
                f"a {self.metric} difference below {self.detectable:.3g} cannot be seen (80 % power at "
                f"{_percent(self.level)}; the {_percent(self.level)} interval's half-width is {self.half_width:.3g})")
        if self.verdict in (BETTER, WORSE) or not self.mean:
            return line
        per = "" if self.paired else " per arm"
        need = (f"about {self.seeds_needed} seeds{per}" if self.seeds_needed is not None
                else f"more than {SEEDS_CAP:,} seeds{per}")
        return (f"{line}; seeing the observed difference {self.mean:+.3g} would take {need} at this spread "
                "(80 % power)")

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists, plus the half-width and the power line."""
        record = asdict(self)
        record.update(seeds=list(self.seeds), differences=list(self.differences), half_width=self.half_width,
                      power_line=self.power_line())
        for key in ("interval", "bootstrap"):
            record[key] = None if record[key] is None else list(record[key])
        return record


def _finite(values: Mapping) -> dict:
    return {key: float(value) for key, value in values.items() if value is not None and math.isfinite(value)}


def _needed(interval: tuple[float, float], mean: float, spread: float, *, paired: bool, observed: int,
            level: float) -> int | None:
    """seeds_to_see where the interval holds 0 (no difference seen), else None."""
    if not interval[0] <= 0 <= interval[1]:
        return None
    return seeds_to_see(mean, spread, paired=paired, observed=observed, level=level)


def paired_comparison(baseline: Mapping[int, float], arm: Mapping[int, float], *, metric: str = "fid",
                      lower_is_better: bool = True, names: tuple[str, str] = ("baseline", "arm"),
                      level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Comparison:
    """Paired comparison of `arm` against `baseline`, each {seed: value}; seeds present (with a finite value)
    in both are matched, the others left out. Differences arm − baseline, the paired t interval with n − 1
    degrees of freedom, the bootstrap interval over seeds (`bootstrap_interval`), verdict and MDD."""
    base, other = _finite(baseline), _finite(arm)
    seeds = tuple(sorted(set(base) & set(other)))
    differences = tuple(other[s] - base[s] for s in seeds)
    n = len(seeds)
    common = dict(arm=names[1], baseline=names[0], metric=metric, lower_is_better=lower_is_better, paired=True,
                  n=n, seeds=seeds, differences=differences, level=level)
    if n < 2:
        return Comparison(**common, mean=differences[0] if n else None, sd=None, dof=None, interval=None,
                          bootstrap=None, verdict=TOO_FEW, detectable=None)
    mean, sd, interval = paired_interval(differences, level=level)
    return Comparison(**common, mean=mean, sd=sd, dof=float(n - 1), interval=interval,
                      bootstrap=bootstrap_interval(differences, level=level, resamples=resamples, seed=seed),
                      verdict=verdict(interval, lower_is_better=lower_is_better, level=level),
                      detectable=minimal_detectable(sd / math.sqrt(n), n - 1, level=level),
                      seeds_needed=_needed(interval, mean, sd, paired=True, observed=n, level=level))


def welch_comparison(baseline: Sequence[float], arm: Sequence[float], *, metric: str = "fid",
                     lower_is_better: bool = True, names: tuple[str, str] = ("baseline", "arm"),
                     level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> Comparison:
    """Unpaired comparison (arms that share no networks): difference of means arm − baseline, Welch's t interval
    with the Welch–Satterthwaite degrees of freedom, a bootstrap resampling each arm on its own, verdict and MDD.
    `sd` holds the standard error of the difference; n is the smaller arm's count."""
    a = [float(v) for v in baseline if v is not None and math.isfinite(v)]
    b = [float(v) for v in arm if v is not None and math.isfinite(v)]
    common = dict(arm=names[1], baseline=names[0], metric=metric, lower_is_better=lower_is_better, paired=False,
                  n=min(len(a), len(b)), seeds=(), differences=(), level=level)
    if min(len(a), len(b)) < 2:
        mean = float(np.mean(b) - np.mean(a)) if a and b else None
        return Comparison(**common, mean=mean, sd=None, dof=None, interval=None, bootstrap=None, verdict=TOO_FEW,
                          detectable=None)
    mean, se, dof, interval = welch_interval(a, b, level=level)
    rng = np.random.default_rng(seed)
    means_a = np.asarray(a)[rng.integers(0, len(a), size=(resamples, len(a)))].mean(axis=1)
    means_b = np.asarray(b)[rng.integers(0, len(b), size=(resamples, len(b)))].mean(axis=1)
    low, high = np.quantile(means_b - means_a, [(1 - level) / 2, (1 + level) / 2])
    return Comparison(**common, mean=mean, sd=se, dof=float(dof), interval=interval,
                      bootstrap=(float(low), float(high)),
                      verdict=verdict(interval, lower_is_better=lower_is_better, level=level),
                      detectable=minimal_detectable(se, dof, level=level),
                      seeds_needed=_needed(interval, mean, se, paired=False, observed=min(len(a), len(b)),
                                           level=level))


def compare_to_baseline(values: Mapping[str, Mapping[int, float]], baseline: str, *, shares_networks: Callable[[str], bool],
                        metric: str = "fid", lower_is_better: bool = True, level: float = 0.95,
                        resamples: int = 10_000, seed: int = 0) -> list[Comparison]:
    """Every arm of `values` ({arm: {seed: value}}, in the table's order) against `baseline`: paired by seed when
    `shares_networks(arm)` says the arm's cells share the baseline's networks, else Welch's unpaired interval."""
    if baseline not in values:
        raise ValueError(f"baseline arm {baseline!r} has no values; arms: {', '.join(values)}")
    comparisons = []
    for arm, by_seed in values.items():
        if arm == baseline:
            continue
        options = dict(metric=metric, lower_is_better=lower_is_better, names=(baseline, arm), level=level,
                       resamples=resamples, seed=seed)
        if shares_networks(arm):
            comparisons.append(paired_comparison(values[baseline], by_seed, **options))
        else:
            comparisons.append(welch_comparison(list(values[baseline].values()), list(by_seed.values()), **options))
    return comparisons
