"""The sampler audit against direct simulation: the project's own annealed_langevin with the exact score
of a one-point data set (−(x − μ)/σ²) and of a Gaussian data set (−(x − μ)/(s² + σ²)), D = 1024."""

import json
import math

import pytest
import torch

from hpc_ncsn.audit import (
    OVERRIDE_FLAG,
    UnstableSampler,
    audit,
    audit_arms,
    audit_config,
    chain_noise,
    check,
    r_min,
)
from hpc_ncsn.cli import main
from hpc_ncsn.config import arm_overrides, load_config
from hpc_ncsn.errors import UserError
from hpc_ncsn.sampling import SamplerPlan, initial_state, sample
from hpc_ncsn.schedules import edm_sigmas, geometric_sigmas, linear_sigmas

DIM, CHAINS, MU = 1024, 100, 0.5
FASHION = dict(sigma_max=22.4, sigma_min=0.01, num_levels=114)  # the Fashion-MNIST study's ladder, γ ≈ 1.0706


def simulate(sigmas, *, rule, steps, step_lr=0.0, snr=0.0, data_variance=0.0, chains=CHAINS, seed=0, dim=DIM,
             kind="langevin", corrector_steps=0):
    """Per-level chain variance per coordinate over τ_i² = s² + σ_i² (the mean over chains of w), by simulation
    with the project's own sampler of that kind."""
    indices = torch.arange(chains)
    plan = SamplerPlan(sigmas, rule, steps, step_lr=step_lr, snr=snr, final_denoise=False, kind=kind,
                       corrector_steps=corrector_steps)
    start = initial_state(seed, indices, (dim,), init="gaussian", sigma_max=float(sigmas[0]), dtype=torch.float64)
    trace = []

    def score(x, sigma):
        return -(x - MU) / (data_variance + sigma.reshape(-1, 1) ** 2)

    def record(level, sigma, x):
        trace.append(float(((x - MU) ** 2).mean()) / (data_variance + sigma**2))

    sample(score, start, plan, seed=seed, indices=indices, callback=record)
    return trace


def predicted(sigmas, *, rule, steps, step_lr=0.0, snr=0.0, data_variance=0.0, dim=DIM, kind="langevin"):
    start = float(sigmas[0]) ** 2 / (data_variance + float(sigmas[0]) ** 2)  # chains start at N(μ, σ_1²I)
    return chain_noise(sigmas.tolist(), step_rule=rule, steps=steps, step_lr=step_lr, snr=snr, dim=dim,
                       data_variance=data_variance, initial=(start, 2.0 * start**2 / dim), kind=kind)


def test_snr_map_is_the_issue_map_in_the_large_d_limit():
    r, u = 0.27, 1.7
    one_step = chain_noise([1.0, 0.5], step_rule="snr", steps=1, snr=r, initial=(u, 0.0))
    assert one_step[0] == pytest.approx(u - 4 * r * r + 4 * r * r * (1 + r * r) / u, rel=1e-12)
    assert one_step[1] == pytest.approx(4.0 * one_step[0] - 4 * r * r + 4 * r * r * (1 + r * r) / (4.0 * one_step[0]))


# Tolerance: 4 % on every level's variance ratio u (2 % in noise). Sampling error of 100 chains × 1024
# coordinates is below 1 %; the large-D map alone misses the r = 0.24 chain by 9 % in noise (19 % in u).
@pytest.mark.parametrize("r", [0.24, 0.30])
def test_snr_recursion_matches_simulation_on_one_point(r):
    sigmas = geometric_sigmas(**FASHION)
    simulated = simulate(sigmas, rule="snr", steps=2, snr=r)
    expected = predicted(sigmas, rule="snr", steps=2, snr=r)
    assert expected == pytest.approx(simulated, rel=0.04)
    if r == 0.24:  # the Fashion study's snr arm: its chain never settles
        assert math.sqrt(simulated[-1]) > 150


@pytest.mark.parametrize("ladder", [geometric_sigmas, linear_sigmas])
def test_ncsn_recursion_matches_simulation_on_a_gaussian_data_set(ladder):
    sigmas = ladder(8.54, 0.01, 49)
    simulated = simulate(sigmas, rule="ncsn", steps=3, step_lr=1.94e-5, data_variance=0.02)
    expected = predicted(sigmas, rule="ncsn", steps=3, step_lr=1.94e-5, data_variance=0.02)
    assert expected == pytest.approx(simulated, rel=0.04)


def test_snr_recursion_matches_simulation_on_a_gaussian_data_set():
    sigmas = geometric_sigmas(**FASHION)
    simulated = simulate(sigmas, rule="snr", steps=2, snr=0.30, data_variance=0.01)
    expected = predicted(sigmas, rule="snr", steps=2, snr=0.30, data_variance=0.01)
    assert expected == pytest.approx(simulated, rel=0.04)


def test_small_dimensions_follow_the_spread_of_the_chains():
    """The toy ladder (σ 20 → 0.1, L = 20) at T = 20, r = 0.25: in D = 16 the first-order-in-1/D map matches the
    simulation within 3 % in noise (the D → ∞ map settles lower); in D = 2 single chains escape and both the
    simulation and the audit refuse, where the D → ∞ map would pass."""
    sigmas = geometric_sigmas(20.0, 0.1, 20)
    kwargs = dict(step_rule="snr", steps=20, snr=0.25)
    simulated = math.sqrt(simulate(sigmas, rule="snr", steps=20, snr=0.25, chains=500, dim=16)[-1])
    assert audit(sigmas.tolist(), dim=16, **kwargs).end_noise == pytest.approx(simulated, rel=0.03)
    assert audit(sigmas.tolist(), **kwargs).end_noise < simulated / 1.08
    simulated = math.sqrt(simulate(sigmas, rule="snr", steps=20, snr=0.25, chains=500, dim=2)[-1])
    assert simulated > 3.0 and not audit(sigmas.tolist(), dim=2, **kwargs).stable
    assert audit(sigmas.tolist(), **kwargs).stable


def test_r_min_of_the_fashion_ladder_and_its_t_dependence():
    gamma = (22.4 / 0.01) ** (1 / 113)
    assert r_min(gamma, 2) == pytest.approx(0.266, abs=0.002)
    assert r_min(gamma, 3) == pytest.approx(0.216, abs=0.002)
    assert r_min(gamma, 5) == pytest.approx(0.167, abs=0.002)


@pytest.mark.slow
def test_r_min_against_bisection_on_the_simulation():
    """A 300-level ladder of constant ratio γ = 1.0706 (so a chain below the edge has time to diverge),
    T = 2, D = 1024, 50 chains: bisection on the simulation for the r at which the end noise crosses 3 σ_L.
    The D → ∞ edge r_min lies below it by at most 0.008 (finite D lets single chains escape, which moves the
    edge up); the audit's r_needed, bisection on its first-order-in-1/D map, within 0.004 of it."""
    gamma, steps = 1.0706517, 2
    sigmas = 0.01 * gamma ** torch.arange(299, -1, -1, dtype=torch.float64)
    bound = r_min(gamma, steps)
    needed = audit(sigmas.tolist(), step_rule="snr", steps=steps, snr=0.24, dim=DIM).r_needed

    def settles(r):
        return math.sqrt(simulate(sigmas, rule="snr", steps=steps, snr=r, chains=50)[-1]) <= 3.0

    low, high = bound - 0.002, bound + 0.010
    assert settles(high) and not settles(low)
    while high - low > 0.001:
        middle = 0.5 * (low + high)
        low, high = (low, middle) if settles(middle) else (middle, high)
    simulated = 0.5 * (low + high)
    assert bound <= simulated <= bound + 0.008
    assert needed == pytest.approx(simulated, abs=0.004)


def test_fashion_snr_arm_is_refused_in_one_line_and_the_override_is_recorded():
    config = load_config("configs/fashion.yaml", ["sampler.snr=0.24", *arm_overrides("snr")])  # the first study's r
    record = audit_config(config, 1024)
    assert record.arm == "snr" and not record.stable and record.end_noise > 150
    with pytest.raises(UserError) as refused:
        check(record)
    message = str(refused.value)
    assert isinstance(refused.value, UnstableSampler) and "\n" not in message
    for part in ("arm snr", f"{record.end_noise:.3g} σ_L", "r_min = 0.266", "sampler.snr to >= 0.266",
                 "sampler.steps_per_level to >= 3", OVERRIDE_FLAG):
        assert part in message
    kept = check(record, override=True)
    assert kept.overridden and kept.verdict == "refused, overridden" and kept.to_dict()["overridden"]
    assert check(record, override={"snr"}).overridden
    with pytest.raises(UnstableSampler):
        check(record, override={"linear"})


def test_the_ways_out_the_message_names_do_settle():
    sigmas = geometric_sigmas(**FASHION).tolist()
    record = audit(sigmas, step_rule="snr", steps=2, snr=0.24, dim=DIM)
    assert audit(sigmas, step_rule="snr", steps=2, snr=record.r_needed, dim=DIM).stable
    assert audit(sigmas, step_rule="snr", steps=record.steps_needed, snr=0.24, dim=DIM).stable
    assert not audit(sigmas, step_rule="snr", steps=record.steps_needed - 1, snr=0.24, dim=DIM).stable


def test_plan_reports_r_min_and_never_an_snr_below_it(capsys):
    assert main(["plan", "--dim", "1024", "--sigma-max", "22.4", "--sigma-min", "0.01", "--num-levels", "114",
                 "--steps", "2"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["snr_r_min"] == pytest.approx(0.266, abs=0.002)
    assert plan["snr_equivalent"] >= plan["snr_r_min"]
    assert plan["snr_note"]  # the r matching ε (≈ 0.245) was raised
    assert plan["chain_end_noise"]["snr"] <= 3.0 and plan["chain_end_noise"]["ncsn"] <= 3.0


def test_a_preset_is_audited_on_the_ladder_it_samples():
    fashion = ("sampler.steps_per_level=2", "sampler.step_lr=1.2e-5")  # fashion.yaml's ladder, at T = 2
    records = {arm: audit_config(load_config("configs/fashion.yaml", [*fashion, *arm_overrides(arm)]), arm=arm)
               for arm in ("linear", "linear-sampled", "edm", "pc", "ancestral", "ode")}
    # linear-sampled trains on the geometric ladder but samples the linear one: its chain is the linear arm's
    assert records["linear-sampled"].end_noise == pytest.approx(records["linear"].end_noise, rel=1e-12)
    assert not records["linear-sampled"].stable
    linear = linear_sigmas(22.4, 0.01, 114)
    simulated = simulate(linear, rule="ncsn", steps=2, step_lr=1.2e-5)[-1]
    assert math.sqrt(simulated) == pytest.approx(records["linear-sampled"].end_noise, rel=0.05)
    # The ODE samplers carry a one-point chain exactly (u stays 1); the ancestral predictor lags one level (u → γ²)
    assert records["edm"].end_noise == pytest.approx(1.0, rel=1e-9) and records["edm"].num_levels == 18
    assert records["ode"].end_noise == pytest.approx(1.0, rel=1e-9)
    gamma = (22.4 / 0.01) ** (1 / 113)
    assert records["ancestral"].end_noise == pytest.approx(gamma, rel=1e-3)
    for arm in ("edm", "pc", "ancestral", "ode"):
        assert records[arm].verdict == "settles" and records[arm].kind == arm_overrides_kind(arm)


def arm_overrides_kind(arm):
    return dict(item.split("=", 1) for item in arm_overrides(arm)).get("sampler.kind", "langevin")


# The maps of the other samplers against the project's own samplers (4 % on every level's u, as above).
@pytest.mark.parametrize("kind, rule, corrector, data_variance", [
    ("ancestral", "ncsn", 0, 0.0), ("ancestral", "snr", 1, 0.0), ("ancestral", "ncsn", 2, 0.02),
    ("ode", "ncsn", 0, 0.02), ("edm", "ncsn", 0, 0.02)])
def test_other_samplers_maps_match_simulation(kind, rule, corrector, data_variance):
    sigmas = geometric_sigmas(8.54, 0.01, 49) if kind != "edm" else edm_sigmas(8.54, 0.01, 18)
    constants = dict(step_lr=1.94e-5, snr=0.16)
    simulated = simulate(sigmas, rule=rule, steps=1, data_variance=data_variance, kind=kind,
                         corrector_steps=corrector, **constants)
    expected = predicted(sigmas, rule=rule, steps=corrector, data_variance=data_variance, kind=kind, **constants)
    assert expected == pytest.approx(simulated, rel=0.04)
    if kind in ("ode", "edm"):  # no noise drawn: the map is exact up to the start's sampling error
        assert expected[-1] == pytest.approx(simulated[-1], rel=0.01)


def test_an_ancestral_sampler_on_a_coarse_ladder_ends_a_level_behind_and_the_message_names_a_ladder_that_settles():
    config = load_config(None, [*arm_overrides("ancestral"), "noise.sigma_max=8.5", "noise.sigma_min=0.01",
                                "noise.num_levels=6"])  # γ = 850^(1/5) = 3.85
    record = audit_config(config, arm="ancestral")
    assert record.end_noise == pytest.approx(850 ** 0.2, rel=0.02) and not record.stable
    with pytest.raises(UnstableSampler) as refused:
        check(record)
    message = str(refused.value)
    assert "largest ratio γ = 3.85" in message and "sampler.num_levels >= 9" in message
    finer = load_config(None, [*arm_overrides("ancestral"), "noise.sigma_max=8.5", "noise.sigma_min=0.01",
                               "noise.num_levels=6", "sampler.ladder=geometric", "sampler.num_levels=9"])
    assert audit_config(finer, arm="ancestral").stable  # the way out the message names does settle


def test_an_ancestral_corrector_too_large_is_refused_like_a_langevin_chain():
    config = load_config("configs/fashion.yaml", ["sampler.kind=ancestral", "sampler.corrector_steps=1",
                                                  "sampler.step_lr=2e-4"])  # a = ε/σ_L² = 2 at σ_L: no contraction
    record = audit_config(config, arm="pc")
    assert not record.stable and record.kind == "ancestral"
    with pytest.raises(UnstableSampler, match="arm pc: with the exact score its ancestral chain ends at"):
        check(record)


def test_a_sweep_audit_runs_the_linear_ladder_arms_marked_and_refuses_a_step_rule_set_below_its_threshold():
    def arm(name, *extra):
        return load_config("configs/fashion.yaml", ["sampler.steps_per_level=2", *extra, *arm_overrides(name)])

    records = audit_arms({name: arm(name, "sampler.snr=0.28") for name in ("geometric", "linear", "snr")})
    assert records["geometric"].verdict == "settles" and records["snr"].verdict == "settles"
    linear = records["linear"]
    assert linear.end_noise > 3 and linear.overridden and linear.verdict.startswith("unsettled, run anyway: ")
    with pytest.raises(UnstableSampler, match="arm snr: .*r_min = 0.266"):
        audit_arms({"geometric": arm("geometric"), "snr": arm("snr", "sampler.snr=0.24")})
    kept = audit_arms({"snr": arm("snr", "sampler.snr=0.24")}, override=True)["snr"]
    assert kept.overridden and kept.verdict == f"unsettled, run anyway: {OVERRIDE_FLAG} given"
