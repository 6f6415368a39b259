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
