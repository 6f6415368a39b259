import math
import typing

import pytest
import torch

from hpc_ncsn.config import ARMS, NoiseConfig, SamplerConfig, arm_overrides, load_config
from hpc_ncsn.sampling import KINDS
from hpc_ncsn.schedules import LADDERS, STEP_RULES, geometric_sigmas, ladder, linear_sigmas, ncsn_step_sizes, snr_step_size


def test_geometric_ladder_has_constant_ratio_and_exact_ends():
    sigmas = geometric_sigmas(50.0, 0.01, 232)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (232,)
    assert sigmas[0].item() == 50.0 and sigmas[-1].item() == 0.01
    ratios = sigmas[:-1] / sigmas[1:]
    gamma = (50.0 / 0.01) ** (1 / 231)
    assert torch.allclose(ratios, torch.full_like(ratios, gamma), rtol=1e-12)
    assert (sigmas[1:] < sigmas[:-1]).all()


def test_linear_ladder_has_constant_differences_and_exact_ends():
    sigmas = linear_sigmas(50.0, 0.01, 11)
    assert sigmas[0].item() == 50.0 and sigmas[-1].item() == pytest.approx(0.01, abs=1e-15)
    differences = sigmas[:-1] - sigmas[1:]
    assert torch.allclose(differences, torch.full_like(differences, (50.0 - 0.01) / 10), rtol=1e-12)
    assert (differences > 0).all()


def test_linear_high_levels_overlap_less_than_geometric():
    geometric, linear = geometric_sigmas(50.0, 0.01, 10), linear_sigmas(50.0, 0.01, 10)
    assert (linear[0] / linear[1]) < (geometric[0] / geometric[1])
    assert (linear[-2] / linear[-1]) > (geometric[-2] / geometric[-1])


@pytest.mark.parametrize("function", [geometric_sigmas, linear_sigmas])
@pytest.mark.parametrize("args", [(0.01, 50.0, 10), (1.0, 1.0, 10), (-1.0, 0.5, 10), (1.0, 0.0, 10), (1.0, 0.1, 1)])
def test_ladders_reject_bad_arguments(function, args):
    with pytest.raises(ValueError):
        function(*args)


def test_ncsn_step_sizes_scale_with_sigma_squared():
    sigmas = geometric_sigmas(1.0, 0.01, 10)
    steps = ncsn_step_sizes(sigmas, 2e-5)
    assert steps[-1].item() == pytest.approx(2e-5)
    assert torch.allclose(steps / steps[-1], (sigmas / sigmas[-1]) ** 2)
    with pytest.raises(ValueError):
        ncsn_step_sizes(sigmas, 0.0)


def test_snr_step_size_sets_the_update_signal_to_noise_ratio():
    generator = torch.Generator().manual_seed(0)
    score = torch.randn(5, 3, 4, 4, generator=generator) * torch.tensor([0.1, 1, 10, 100, 1000]).view(-1, 1, 1, 1)
    noise = torch.randn(5, 3, 4, 4, generator=generator)
    alpha = snr_step_size(score, noise, snr=0.16)
    assert alpha.shape == (5,)
    expected = 2 * (0.16 * noise.flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1)) ** 2
    assert torch.allclose(alpha, expected)
    signal = (alpha.view(-1, 1, 1, 1) * score).flatten(1).norm(dim=1)
    injected = (torch.sqrt(2 * alpha).view(-1, 1, 1, 1) * noise).flatten(1).norm(dim=1)
    assert torch.allclose(signal / injected, torch.full((5,), 0.16), rtol=1e-5)


def test_arms_are_presets_of_the_configurable_ladders_and_step_rules():
    assert set(typing.get_args(typing.get_type_hints(NoiseConfig)["ladder"])) == {"geometric", "linear"}
    assert set(typing.get_args(typing.get_type_hints(SamplerConfig)["ladder"])) == set(LADDERS) | {"train"}
    assert set(STEP_RULES) == set(typing.get_args(typing.get_type_hints(SamplerConfig)["step_rule"]))
    assert set(KINDS) == set(typing.get_args(typing.get_type_hints(SamplerConfig)["kind"]))
    assert {(arm.ladder, arm.step_rule) for arm in ARMS.values()} == {
        ("geometric", "ncsn"), ("linear", "ncsn"), ("geometric", "snr")}
    for name in ARMS:  # every preset is recognised again from the config it makes
        assert load_config(None, arm_overrides(name)).arm == name
    snr = load_config(None, arm_overrides("snr"))
    assert (snr.noise.ladder, snr.sampler.step_rule, snr.arm) == ("geometric", "snr", "snr")
    assert load_config(None, ["noise.ladder=linear"]).arm == "linear"
    assert load_config(None, ["noise.ladder=linear", "sampler.step_rule=snr"]).arm is None
    assert torch.equal(ladder("geometric", 50.0, 0.01, 20), geometric_sigmas(50.0, 0.01, 20))
    assert torch.equal(ladder("linear", 50.0, 0.01, 20), linear_sigmas(50.0, 0.01, 20))
    with pytest.raises(ValueError, match="geometric, linear"):
        ladder("cosine", 50.0, 0.01, 20)


def test_ncsnv2_epsilon_corresponds_to_snr_0176():
    # At the last level ‖s‖ ≈ ‖z‖/σ_L, so α_L = ε gives r = sqrt(ε/2)/σ_L.
    assert math.sqrt(6.2e-6 / 2) / 0.01 == pytest.approx(0.176, abs=1e-3)
