import math

import pytest
import torch

from hpc_ncsn.planning import (
    gamma_for_dimension,
    gamma_for_levels,
    level_overlap,
    max_pairwise_distance,
    num_levels_for_gamma,
    plan_noise,
    step_lr_for,
    step_lr_objective,
)


def test_reproduces_published_cifar10_step_size():
    plan = plan_noise(dim=3072, sigma_max=50.0, sigma_min=0.01, steps_per_level=5, num_levels=232)
    assert plan.step_lr == pytest.approx(6.2e-6, rel=0.03)
    assert plan.network_evaluations == 1160
    assert plan.snr_equivalent == pytest.approx(0.176, abs=0.002)


def test_reproduces_published_celeba_step_size():
    plan = plan_noise(dim=64 * 64 * 3, sigma_max=90.0, sigma_min=0.01, steps_per_level=5, num_levels=500)
    assert plan.step_lr == pytest.approx(3.3e-6, rel=0.03)


def test_step_lr_is_the_closest_to_one():
    gamma = gamma_for_levels(50.0, 0.01, 232)
    best = step_lr_for(gamma, 5, 0.01)
    distance = lambda eps: abs(step_lr_objective(eps, gamma, 5, 0.01) - 1)  # noqa: E731
    for factor in (0.5, 0.9, 0.99, 1.01, 1.1, 2.0):
        assert distance(best) <= distance(best * factor)


def test_gamma_for_dimension_hits_overlap_one_half():
    for dim in (64, 256, 3072, 12288):
        gamma = gamma_for_dimension(dim)
        assert gamma > 1
        assert level_overlap(gamma, dim) == pytest.approx(0.5, abs=1e-9)
    assert gamma_for_dimension(12288) < gamma_for_dimension(3072) < gamma_for_dimension(256)


def test_technique_two_for_cifar10_gives_a_ladder_close_to_the_published_one():
    plan = plan_noise(dim=3072, sigma_max=50.0, sigma_min=0.01, steps_per_level=5)
    assert 200 <= plan.num_levels <= 232
    assert plan.overlap >= 0.5
    assert gamma_for_levels(50.0, 0.01, plan.num_levels) <= gamma_for_dimension(3072)


def test_technique_two_refuses_dimensions_where_it_has_no_solution():
    with pytest.raises(ValueError, match="D >= 5"):
        gamma_for_dimension(2)


def test_num_levels_is_the_smallest_ladder_within_the_ratio():
    gamma = 1.05
    levels = num_levels_for_gamma(50.0, 0.01, gamma)
    assert gamma_for_levels(50.0, 0.01, levels) <= gamma < gamma_for_levels(50.0, 0.01, levels - 1)


def test_exact_max_pairwise_distance_matches_brute_force():
    points = torch.rand(300, 5, 4, generator=torch.Generator().manual_seed(0))
    flat = points.flatten(1).double()
    brute = max(float((flat[i] - flat[j]).norm()) for i in range(300) for j in range(i))
    value, method = max_pairwise_distance(points, block=64)
    assert value == pytest.approx(brute, rel=1e-12)
    assert method.startswith("exact")


def test_estimated_max_pairwise_distance_is_a_tight_lower_bound():
    generator = torch.Generator().manual_seed(1)
    points = torch.randn(3000, 8, generator=generator)
    points[1234] = 40.0
    points[77] = -40.0
    exact, _ = max_pairwise_distance(points)
    estimate, method = max_pairwise_distance(points, exact_limit=1000, num_anchors=16)
    assert "estimate" in method and "lower bound" in method
    assert estimate <= exact
    assert estimate == pytest.approx(80 * math.sqrt(8), rel=1e-9)


def test_plan_rejects_bad_inputs():
    with pytest.raises(ValueError):
        plan_noise(dim=3072, sigma_max=0.01, sigma_min=50.0, steps_per_level=5)
    with pytest.raises(ValueError):
        max_pairwise_distance(torch.zeros(1, 3))


@pytest.mark.parametrize("steps", [2, 5])
def test_planned_step_lr_brings_the_last_level_to_its_own_noise(steps):
    """sampler.step_lr = 0 means technique 4's ε for this T. Its meaning, simulated directly: a chain
    with the exact score of a point, arriving at σ_L with the previous level's variance γ²σ_L², ends
    T Langevin steps of α = ε later with variance objective·σ_L², the objective technique 4 brings as
    close to 1 as T allows (1.127 at T = 2 and 1.093 at T = 5 on this ladder, γ² = 1.17)."""
    from hpc_ncsn.audit import audit_config
    from hpc_ncsn.config import load_config
    from hpc_ncsn.sampling import SamplerPlan

    config = load_config(None, ["noise.sigma_max=22.4", "noise.sigma_min=0.01", "noise.num_levels=99",
                                f"sampler.steps_per_level={steps}", "sampler.step_lr=0"])
    plan = SamplerPlan.from_config(config.noise, config.sampler)
    sigma_min, gamma = 0.01, (22.4 / 0.01) ** (1 / 98)
    generator = torch.Generator().manual_seed(steps)
    x = gamma * sigma_min * torch.randn(400_000, generator=generator, dtype=torch.float64)
    for _ in range(steps):
        x = x - plan.step_lr * x / sigma_min**2 + math.sqrt(2 * plan.step_lr) * torch.randn(
            x.shape, generator=generator, dtype=torch.float64)
    objective = step_lr_objective(plan.step_lr, gamma, steps, sigma_min)
    assert abs(objective - 1) <= min(abs(step_lr_objective(plan.step_lr * f, gamma, steps, sigma_min) - 1)
                                     for f in (0.8, 0.95, 1.05, 1.25))
    assert abs(objective - 1) < gamma**2 - 1  # closer to σ_L² than the chain arrived
    assert x.var().item() / sigma_min**2 == pytest.approx(objective, abs=0.012)  # MC error ~0.003
    assert audit_config(config).step_lr == plan.step_lr


def test_planned_step_lr_follows_t_and_the_sampling_ladder():
    from hpc_ncsn.config import load_config
    from hpc_ncsn.sampling import SamplerPlan

    def planned(*overrides):
        config = load_config(None, ["noise.sigma_max=22.4", "noise.sigma_min=0.01", "noise.num_levels=99",
                                    "sampler.step_lr=0", *overrides])
        return SamplerPlan.from_config(config.noise, config.sampler).step_lr

    two, five = planned("sampler.steps_per_level=2"), planned("sampler.steps_per_level=5")
    assert five < two  # more steps per level, each one smaller
    # A sampling ladder of half the levels has the larger γ of its own, so a larger ε.
    coarse = planned("sampler.steps_per_level=2", "sampler.ladder=geometric", "sampler.num_levels=50")
    assert coarse > two
    assert planned("sampler.steps_per_level=2", "sampler.step_lr=1e-5") == 1e-5  # a given ε is kept
