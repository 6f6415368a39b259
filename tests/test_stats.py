"""Paired and unpaired comparisons over seeds (hpc_ncsn.stats): t quantiles against the printed table,
coverage of the intervals over many synthetic repetitions, verdicts, power, bootstrap against enumeration."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hpc_ncsn.stats import (BETTER, NO_DIFFERENCE, TOO_FEW, WORSE, bootstrap_interval, compare_to_baseline,
                            minimal_detectable,
                            paired_comparison, paired_interval, seeds_to_see, t_quantile, welch_comparison,
                            welch_interval)

NO_DIFFERENCE_95 = NO_DIFFERENCE.format(percent="95 %")


def binomial_tolerance(p: float, trials: int, sds: float = 4.0) -> float:
    """sds binomial standard deviations of a rate p estimated from `trials` independent repetitions."""
    return sds * math.sqrt(p * (1 - p) / trials)


@pytest.mark.parametrize("probability, dof, table", [
    (0.975, 1, 12.706), (0.975, 2, 4.303), (0.975, 3, 3.182), (0.975, 4, 2.776), (0.975, 5, 2.571),
    (0.975, 9, 2.262), (0.975, 29, 2.045), (0.975, math.inf, 1.960), (0.95, 10, 1.812), (0.995, 4, 4.604)])
def test_t_quantiles_match_the_printed_table(probability, dof, table):
    assert t_quantile(probability, dof) == pytest.approx(table, abs=5e-4)  # the table rounds to 3 decimals


def synthetic_cells(rng, repetitions: int, seeds: int, difference: float):
    """FID-like cells: a large seed effect shared by both arms (network, data order, noise) and a small
    cell-level noise; the arm's true mean exceeds the baseline's by `difference`."""
    shared = 100 + 40 * rng.standard_normal((repetitions, seeds))
    baseline = shared + 3 * rng.standard_normal((repetitions, seeds))
    arm = shared + difference + 3 * rng.standard_normal((repetitions, seeds))
    return baseline, arm


def test_the_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    repetitions, difference = 4000, 5.0
    baseline, arm = synthetic_cells(rng, repetitions, 3, difference)
    covered, paired_widths, unpaired_widths = 0, [], []
    for base, other in zip(baseline, arm):
        _, _, (low, high) = paired_interval(list(other - base))
        covered += low <= difference <= high
        paired_widths.append(high - low)
        _, _, _, (low, high) = welch_interval(list(base), list(other))
        unpaired_widths.append(high - low)
    # 4 binomial SDs of 4,000 repetitions: ±0.014.
    assert abs(covered / repetitions - 0.95) < binomial_tolerance(0.95, repetitions)
    # The shared seed effect (sd 40) cancels in the differences (sd 3·√2), not in the unpaired interval.
    assert np.median(unpaired_widths) > 5 * np.median(paired_widths)


def test_welchs_interval_covers_the_true_difference_with_unequal_spreads_and_sizes():
    rng = np.random.default_rng(2)
    repetitions, difference = 4000, 2.0
    covered = 0
    for _ in range(repetitions):
        base = rng.normal(10.0, 1.0, size=4)
        other = rng.normal(10.0 + difference, 3.0, size=9)
        _, _, _, (low, high) = welch_interval(list(base), list(other))
        covered += low <= difference <= high
    # Welch's ν is an approximation (its coverage is within ~0.5 % of nominal at these sizes): 4 binomial SDs + 0.01.
    assert abs(covered / repetitions - 0.95) < binomial_tolerance(0.95, repetitions) + 0.01


def test_intervals_agree_with_scipys_t_tests():
    rng = np.random.default_rng(3)
    for _ in range(20):
        base, other = rng.normal(0, 1, 5), rng.normal(0.8, 2, 7)
        paired = paired_comparison(dict(enumerate(base)), dict(enumerate(other[:5])), resamples=100)
        t_rel = scipy_stats.ttest_rel(other[:5], base)
        assert paired.mean / (paired.sd / math.sqrt(5)) == pytest.approx(t_rel.statistic, rel=1e-10)
        assert (paired.verdict != NO_DIFFERENCE_95) == (t_rel.pvalue < 0.05)
        welch = welch_comparison(list(base), list(other), resamples=100)
        t_ind = scipy_stats.ttest_ind(other, base, equal_var=False)
        assert welch.mean / welch.sd == pytest.approx(t_ind.statistic, rel=1e-10)
        assert (welch.verdict != NO_DIFFERENCE_95) == (t_ind.pvalue < 0.05)


@pytest.mark.parametrize("difference, lower_is_better, expected", [
    (30.0, True, WORSE), (-30.0, True, BETTER), (30.0, False, BETTER), (-30.0, False, WORSE)])
def test_verdicts_follow_a_clear_difference_in_the_metrics_direction(difference, lower_is_better, expected):
    rng = np.random.default_rng(4)
    baseline, arm = synthetic_cells(rng, 200, 5, difference)
    verdicts = [paired_comparison(dict(enumerate(base)), dict(enumerate(other)), lower_is_better=lower_is_better,
                                  resamples=50).verdict for base, other in zip(baseline, arm)]
    # A difference of 30 with differences' sd 3·√2 at 5 seeds: the test's power is 1 − 1e-9 or so.
    assert verdicts.count(expected) == len(verdicts)


def test_without_a_difference_the_verdict_is_wrong_5_percent_of_the_time():
    rng = np.random.default_rng(5)
    repetitions = 2000
    baseline, arm = synthetic_cells(rng, repetitions, 3, 0.0)
    verdicts = [paired_comparison(dict(enumerate(base)), dict(enumerate(other)), resamples=20).verdict
                for base, other in zip(baseline, arm)]
    assert set(verdicts) <= {BETTER, WORSE, NO_DIFFERENCE_95}
    assert abs(verdicts.count(NO_DIFFERENCE_95) / repetitions - 0.95) < binomial_tolerance(0.95, repetitions)


@pytest.mark.parametrize("seeds", [3, 8])
def test_a_true_difference_at_the_minimal_detectable_size_is_seen_80_percent_of_the_time(seeds):
    rng = np.random.default_rng(6)
    repetitions, sd = 3000, 3 * math.sqrt(2)  # the sd of one difference in synthetic_cells
    difference = minimal_detectable(sd / math.sqrt(seeds), seeds - 1)
    baseline, arm = synthetic_cells(rng, repetitions, seeds, difference)
    seen = 0
    for base, other in zip(baseline, arm):
        _, _, (low, high) = paired_interval(list(other - base))
        seen += low > 0 or high < 0
    assert abs(seen / repetitions - 0.8) < binomial_tolerance(0.8, repetitions)


def test_the_minimal_detectable_difference_matches_the_normal_formula_at_large_dof():
    # z_{0.975} + z_{0.8} = 1.95996 + 0.84162 standard errors when the t test becomes a z test.
    assert minimal_detectable(2.0, 1e7) == pytest.approx(2 * (1.959964 + 0.841621), rel=1e-4)
    assert minimal_detectable(1.0, 2) > minimal_detectable(1.0, 9) > minimal_detectable(1.0, 1e7)


def simulated_power(rng, difference: float, sd: float, seeds: int, paired: bool, repetitions: int = 20_000) -> float:
    """The share of `repetitions` simulated studies of `seeds` seeds (per arm, unpaired) whose two-sided 95 % test
    sees a true difference `difference`: paired, the one-sample t test on differences of sd `sd`; unpaired,
    Welch's test on two arms whose values have sd `sd`."""
    if paired:
        differences = difference + sd * rng.standard_normal((repetitions, seeds))
        p_values = scipy_stats.ttest_1samp(differences, 0.0, axis=1).pvalue
    else:
        baseline = sd * rng.standard_normal((repetitions, seeds))
        arm = difference + sd * rng.standard_normal((repetitions, seeds))
        p_values = scipy_stats.ttest_ind(arm, baseline, axis=1, equal_var=False).pvalue
    return float(np.mean(p_values < 0.05))


def test_the_seeds_to_see_a_difference_give_80_percent_power_in_simulation_and_one_seed_fewer_do_not():
    rng = np.random.default_rng(21)
    tolerance = binomial_tolerance(0.8, 20_000)
    needed = seeds_to_see(1.0, 1.2)  # paired: differences of sd 1.2 around a true mean of 1
    assert 8 < needed < 20
    assert simulated_power(rng, 1.0, 1.2, needed, paired=True) > 0.8 - tolerance
    assert simulated_power(rng, 1.0, 1.2, needed - 1, paired=True) < 0.8 + tolerance
    # Unpaired: a standard error of 2 observed with 3 values per arm is values of sd 2·√(3/2) per arm.
    needed = seeds_to_see(-3.0, 2.0, paired=False, observed=3)
    assert 4 < needed < 30
    value_sd = 2.0 * math.sqrt(3 / 2)
    assert simulated_power(rng, 3.0, value_sd, needed, paired=False) > 0.8 - 2 * tolerance
    assert simulated_power(rng, 3.0, value_sd, needed - 1, paired=False) < 0.8 + 2 * tolerance


def test_the_seeds_to_see_a_small_difference_follow_the_normal_formula():
    # n ≈ ((z_{0.975} + z_{0.8}) · s_d / d)² when n is large enough for t to be z.
    normal = ((1.959964 + 0.841621) / 0.05) ** 2
    assert seeds_to_see(0.05, 1.0) == pytest.approx(normal, rel=0.002)
    assert seeds_to_see(0.001, 1.0) is None and seeds_to_see(0.0, 1.0) is None


def test_the_bootstrap_interval_matches_the_enumerated_bootstrap_distribution():
    values = [3.1, -0.4, 2.2, 5.0, 1.3, 0.7]
    # All 6^6 resamples are equally likely under the bootstrap: their means' exact distribution.
    exact = np.sort(np.array([np.mean(draw) for draw in itertools.product(values, repeat=len(values))]))
    resamples = 40_000
    low, high = bootstrap_interval(values, resamples=resamples, seed=11)
    def share_below(x: float, strict: bool) -> float:
        return np.searchsorted(exact, x - 1e-12 if strict else x + 1e-12, side="left") / exact.size

    tolerance = binomial_tolerance(0.025, resamples)
    # The exact distribution has atoms: the 2.5 % quantile lies where P(mean < q) ≤ 0.025 ≤ P(mean ≤ q).
    assert share_below(low, strict=True) < 0.025 + tolerance and share_below(low, strict=False) > 0.025 - tolerance
    assert share_below(high, strict=True) < 0.975 + tolerance and share_below(high, strict=False) > 0.975 - tolerance
    assert bootstrap_interval(values, resamples=resamples, seed=11) == (low, high)  # seeded: deterministic
    assert bootstrap_interval(values, resamples=30, seed=11) != bootstrap_interval(values, resamples=30, seed=12)


def test_seeds_are_matched_and_missing_values_left_out():
    baseline = {0: 10.0, 1: 12.0, 2: 11.0, 3: None, 4: 9.0}
    arm = {0: 11.0, 1: 14.5, 2: float("nan"), 3: 20.0, 5: 30.0}
    comparison = paired_comparison(baseline, arm, names=("geometric", "snr"), resamples=100)
    assert comparison.seeds == (0, 1) and comparison.differences == (1.0, 2.5) and comparison.n == 2
    record = comparison.to_dict()
    assert record["seeds"] == [0, 1] and record["arm"] == "snr" and record["interval"][0] < 1.75 < record["interval"][1]
    assert "with 2 seeds" in record["power_line"] and "snr vs geometric (paired)" in record["power_line"]
    one = paired_comparison({0: 1.0, 1: 2.0}, {1: 3.0})
    assert one.verdict == TOO_FEW and one.interval is None and one.mean == 1.0 and "no interval" in one.power_line()
    assert welch_comparison([1.0], [2.0, 3.0]).verdict == TOO_FEW


def test_arms_sharing_the_baselines_networks_are_paired_and_the_others_not():
    # The Fashion-MNIST study's per-seed FIDs pattern: snr shares geometric's networks, linear trains its own.
    values = {"geometric": {0: 80.0, 1: 120.0, 2: 95.0}, "snr": {0: 140.7, 1: 167.3, 2: 142.6},
              "linear": {0: 300.0, 1: 260.0, 2: 350.0}}
    snr, linear = compare_to_baseline(values, "geometric", shares_networks=lambda arm: arm == "snr", resamples=100)
    assert (snr.arm, snr.paired, snr.differences) == ("snr", True, pytest.approx((60.7, 47.3, 47.6)))
    assert snr.verdict == WORSE and "paired" in snr.power_line() and "would take" not in snr.power_line()
    unseen = paired_comparison({0: 10.0, 1: 12.0, 2: 11.0}, {0: 11.0, 1: 11.5, 2: 12.5}, resamples=100)
    assert unseen.verdict == NO_DIFFERENCE_95
    assert unseen.seeds_needed == seeds_to_see(unseen.mean, unseen.sd, observed=3)
    assert f"would take about {unseen.seeds_needed} seeds" in unseen.power_line()
    assert (linear.arm, linear.paired, linear.differences) == ("linear", False, ())
    assert linear.mean == pytest.approx(np.mean([300, 260, 350]) - np.mean([80, 120, 95]))
    assert "unpaired (no shared networks)" in linear.power_line()
    assert linear.verdict == WORSE and linear.seeds_needed is None
    with pytest.raises(ValueError, match="baseline arm 'edm'"):
        compare_to_baseline(values, "edm", shares_networks=lambda arm: True)
