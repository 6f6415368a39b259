import dataclasses
import math

import pytest
import torch

from hpc_ncsn.config import ARMS, ConfigError, NoiseConfig, SamplerConfig, arm_overrides, load_config
from hpc_ncsn.rng import philox4x32, sample_normal, sample_uniform
from hpc_ncsn.sampling import SamplerPlan, annealed_langevin, draw, initial_state, sampling_ladder
from hpc_ncsn.schedules import edm_sigmas, ladder, linear_sigmas


@pytest.mark.parametrize(
    "counter, key, expected",
    [  # Known-answer vectors of Random123's Philox-4x32-10.
        ([0, 0, 0, 0], [0, 0], "6627e8d5 e169c58d bc57ac4c 9b00dbd8"),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, "408f276d 41c83b0e a20bc7c6 6d5451fd"),
        ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
         "d16cfe09 94fdcceb 5001e420 24126ea1"),
    ],
)
def test_philox_matches_known_answers(counter, key, expected):
    words = philox4x32([torch.tensor([c]) for c in counter], [torch.tensor([k]) for k in key])
    assert " ".join(f"{int(w):08x}" for w in words) == expected


def test_normal_noise_is_standard_and_uncorrelated():
    z = sample_normal(7, torch.arange(2000), (3, 8, 8), step=5).flatten(1)
    assert z.mean().abs() < 0.005 and (z.std() - 1).abs() < 0.005
    quantiles = torch.quantile(z.flatten()[:100_000], torch.tensor([0.025, 0.5, 0.975]))
    assert torch.allclose(quantiles, torch.tensor([-1.96, 0.0, 1.96]), atol=0.03)
    nxt = sample_normal(7, torch.arange(2000), (3, 8, 8), step=6).flatten(1)
    assert (z * nxt).mean().abs() < 0.005
    assert (z[:, :-1] * z[:, 1:]).mean().abs() < 0.005
    assert (z[:-1] * z[1:]).mean().abs() < 0.005


def test_uniform_noise_covers_the_unit_interval():
    u = sample_uniform(3, torch.arange(1000), (50,))
    assert u.min() > 0 and u.max() < 1
    assert (u.mean() - 0.5).abs() < 0.005 and (u.var() - 1 / 12).abs() < 0.002


def test_noise_of_a_sample_depends_on_seed_index_and_step_only():
    full = sample_normal(11, torch.arange(10), (2, 5), step=3)
    assert torch.equal(sample_normal(11, torch.tensor([7, 2]), (2, 5), step=3), full[[7, 2]])
    assert not torch.equal(sample_normal(12, torch.arange(10), (2, 5), step=3), full)
    assert not torch.equal(sample_normal(11, torch.arange(10), (2, 5), step=4), full)
    assert not torch.equal(full[0], full[1])


def test_seed_out_of_range_is_refused():
    with pytest.raises(ValueError, match="seed"):
        sample_normal(2**32, torch.arange(2), (3,), step=0)


def gaussian_score(mean: torch.Tensor, std: float):
    """Exact score of N(mean, std²I) perturbed by N(0, σ²I)."""
    return lambda x, sigma: (mean - x) / (std**2 + sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2)


def arm_plan(arm: str, *, sigma_max: float, sigma_min: float, num_levels: int, steps_per_level: int,
             step_lr: float, snr: float, final_denoise: bool = True) -> SamplerPlan:
    """The sampler plan of an ablation arm, through the config sections that name it."""
    noise = NoiseConfig(ladder=ARMS[arm].ladder, sigma_max=sigma_max, sigma_min=sigma_min, num_levels=num_levels)
    sampler = SamplerConfig(step_rule=ARMS[arm].step_rule, steps_per_level=steps_per_level, step_lr=step_lr, snr=snr,
                            final_denoise=final_denoise)
    return SamplerPlan.from_config(noise, sampler)


DIM, STD = 64, 0.1
MEAN = torch.linspace(0.2, 0.8, DIM, dtype=torch.float64)


def sample_gaussian(schedule: str, init: str) -> torch.Tensor:
    plan = arm_plan(schedule, sigma_max=3.0, sigma_min=0.01, num_levels=30, steps_per_level=20,
                               step_lr=3e-5, snr=0.16, final_denoise=False)
    indices = torch.arange(2000)
    x0 = initial_state(0, indices, (DIM,), init=init, sigma_max=3.0, dtype=torch.float64)
    return annealed_langevin(gaussian_score(MEAN, STD), x0, plan, seed=0, indices=indices)


@pytest.mark.parametrize("schedule", ["geometric", "snr"])
def test_geometric_and_snr_arms_sample_a_gaussian_with_its_exact_score(schedule):
    x = sample_gaussian(schedule, init="gaussian")
    assert (x.mean(0) - MEAN).abs().max() < 0.01
    assert x.std(0).mean().item() == pytest.approx(math.sqrt(STD**2 + 0.01**2), rel=0.06)


def test_linear_arm_fails_to_anneal_its_last_big_gap():
    # Linear ladder: σ_{L-1}/σ_L ≈ 11 here, so the last level starts far from
    # equilibrium and its small steps cannot contract it: samples stay too wide.
    x = sample_gaussian("linear", init="gaussian")
    assert (x.mean(0) - MEAN).abs().max() < 0.01
    assert x.std(0).mean().item() > 1.3 * math.sqrt(STD**2 + 0.01**2)


def test_snr_arm_from_uniform_start_overshoots_when_sigma_max_dwarfs_the_data():
    # From U(0,1), ‖s(x, σ_1)‖ is tiny, so α = 2(r‖z‖/‖s‖)² is huge and the first
    # steps overshoot (α/σ_1² > 2); the SNR arm needs the N(·, σ_1²I) start.
    x = sample_gaussian("snr", init="uniform")
    assert x.std(0).mean().item() > 1.0
    assert sample_gaussian("geometric", init="uniform").std(0).mean().item() < 0.11


def test_final_denoising_step_applies_tweedie():
    mean, std = torch.zeros(2, dtype=torch.float64), 1.0
    score = gaussian_score(mean, std)
    base = dict(sigma_max=2.0, sigma_min=0.5, num_levels=3, steps_per_level=2, step_lr=0.01, snr=0.16)
    indices = torch.arange(8)
    x0 = initial_state(1, indices, (2,), init="gaussian", sigma_max=2.0, dtype=torch.float64)
    plain = annealed_langevin(score, x0, arm_plan("geometric", **base, final_denoise=False),
                              seed=1, indices=indices)
    denoised = annealed_langevin(score, x0, arm_plan("geometric", **base, final_denoise=True),
                                 seed=1, indices=indices)
    sigma_l = torch.full((8,), 0.5, dtype=torch.float64)
    assert torch.allclose(denoised, plain + 0.25 * score(plain, sigma_l))


def test_samples_do_not_depend_on_batch_size():
    mean = torch.tensor([0.2, 0.8], dtype=torch.float64)
    plan = arm_plan("snr", sigma_max=1.0, sigma_min=0.01, num_levels=5, steps_per_level=3,
                               step_lr=1e-5, snr=0.16)

    def draw(indices):
        x0 = initial_state(4, indices, (2,), init="uniform", sigma_max=1.0, dtype=torch.float64)
        return annealed_langevin(gaussian_score(mean, 0.1), x0, plan, seed=4, indices=indices)

    whole = draw(torch.arange(12))
    pieces = torch.cat([draw(torch.arange(start, min(start + 5, 12))) for start in range(0, 12, 5)])
    assert torch.equal(whole, pieces)
    assert torch.equal(draw(torch.tensor([9, 3])), whole[[9, 3]])


def test_progress_callback_sees_every_level_and_plan_counts_evaluations():
    plan = arm_plan("geometric", sigma_max=1.0, sigma_min=0.1, num_levels=4, steps_per_level=3,
                               step_lr=1e-3, snr=0.16)
    calls = []
    evaluations = []

    def score(x, sigma):
        evaluations.append(sigma[0].item())
        return -x

    indices = torch.arange(3)
    annealed_langevin(score, torch.zeros(3, 2), plan, seed=0, indices=indices,
                      callback=lambda level, sigma, x: calls.append((level, sigma)))
    assert [level for level, _ in calls] == [0, 1, 2, 3]
    assert [sigma for _, sigma in calls] == pytest.approx(plan.sigmas.tolist())
    assert len(evaluations) == plan.network_evaluations == 4 * 3 + 1


def test_plan_rejects_unknown_rule():
    with pytest.raises(ValueError, match="step rule"):
        SamplerPlan(torch.tensor([1.0, 0.1]), "adaptive", 5)


def test_unet_samples_do_not_depend_on_batch_size():
    from hpc_ncsn.model import UNet

    torch.manual_seed(0)
    model = UNet(in_channels=1, image_size=8, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                 attn_resolutions=(4,), dropout=0.0).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    plan = arm_plan("geometric", sigma_max=2.0, sigma_min=0.05, num_levels=4, steps_per_level=2,
                               step_lr=1e-4, snr=0.16)

    def draw(indices):
        x0 = initial_state(9, indices, (1, 8, 8), init="gaussian", sigma_max=2.0)
        with torch.no_grad():
            return annealed_langevin(model, x0, plan, seed=9, indices=indices)

    whole = draw(torch.arange(6))
    pieces = torch.cat([draw(torch.arange(0, 1)), draw(torch.arange(1, 4)), draw(torch.arange(4, 6))])
    torch.testing.assert_close(pieces, whole, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(whole[0], whole[1])


# The sampling ladder (issue 24): another ladder than the training one, within the trained σ range --------

def test_by_default_the_sampler_runs_the_training_ladder():
    for ladder_name in ("geometric", "linear"):
        noise = NoiseConfig(ladder=ladder_name, sigma_max=50.0, sigma_min=0.01, num_levels=30)
        assert torch.equal(sampling_ladder(noise, SamplerConfig()), ladder(ladder_name, 50.0, 0.01, 30))


def test_a_sampling_ladder_of_its_own_within_the_trained_range():
    noise = NoiseConfig(ladder="geometric", sigma_max=50.0, sigma_min=0.01, num_levels=30)
    own = sampling_ladder(noise, SamplerConfig(ladder="linear", num_levels=12, sigma_max=20.0, sigma_min=0.05))
    assert torch.equal(own, linear_sigmas(20.0, 0.05, 12))
    # 0 means the trained value: L, σ_1 and σ_L of noise.
    assert torch.equal(sampling_ladder(noise, SamplerConfig(ladder="edm")), edm_sigmas(50.0, 0.01, 30, 7.0))
    assert torch.equal(sampling_ladder(noise, SamplerConfig(ladder="edm", rho=3.0, num_levels=5)),
                       edm_sigmas(50.0, 0.01, 5, 3.0))


@pytest.mark.parametrize("overrides, pattern", [
    (["sampler.ladder=geometric", "sampler.sigma_max=80"], r"sampler\.sigma_max: 80.0 is outside the trained range"),
    (["sampler.ladder=edm", "sampler.sigma_min=0.002"], r"sampler\.sigma_min: 0.002 is outside the trained range"),
    (["sampler.ladder=linear", "sampler.sigma_min=60"], r"sampler\.sigma_min: 60.0 is outside"),
    (["sampler.ladder=linear", "sampler.sigma_min=49", "noise.sigma_max=40"], r"outside the trained range"),
    (["sampler.num_levels=10"], r"sampler\.num_levels: .*sampler\.ladder=train samples on the training ladder"),
    (["sampler.kind=heun"], r"sampler\.kind: 'heun' is not a valid choice; choose one of langevin, ancestral, ode"),
    (["sampler.corrector_steps=1"], r"only the ancestral sampler has a corrector"),
    (["sampler.rho=5"], r"sampler\.rho: shapes the edm ladder only"),
    (["sampler.kind=edm", "sampler.init=uniform"], r"sampler\.init: the edm sampler starts from the level-1 marginal"),
])
def test_a_sampler_outside_what_was_trained_or_asked_wrong_is_refused_in_one_line(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern) as caught:
        load_config(None, overrides)
    assert "\n" not in str(caught.value)


def test_a_plan_built_from_sections_refuses_sigma_outside_the_trained_range():
    # A SamplerConfig and NoiseConfig built apart (e.g. a run's noise and another sampler section) are checked too.
    noise = NoiseConfig(sigma_max=10.0, sigma_min=0.1, num_levels=10)
    with pytest.raises(ConfigError, match=r"sampler\.sigma_max: 50.0 is outside the trained range \[0.1, 10.0\]"):
        SamplerPlan.from_config(noise, SamplerConfig(ladder="geometric", sigma_max=50.0))
    with pytest.raises(ConfigError, match="sampling ladder would run from 10.0 down to 10.0"):
        SamplerPlan.from_config(noise, SamplerConfig(ladder="geometric", sigma_min=10.0))


def test_sampler_presets_share_the_geometric_network_and_sample_it_their_way():
    geometric = load_config(None, arm_overrides("geometric"))
    trained = ("data", "noise", "model", "train")
    for name in ARMS:
        config = load_config(None, arm_overrides(name))
        assert (all(getattr(config, section) == getattr(geometric, section) for section in trained)
                == (name != "linear")), name
    noise = geometric.noise
    linear_sampled = SamplerPlan.from_config(noise, load_config(None, arm_overrides("linear-sampled")).sampler)
    linear = load_config(None, arm_overrides("linear"))
    assert torch.equal(linear_sampled.sigmas, SamplerPlan.from_config(linear.noise, linear.sampler).sigmas)
    edm = SamplerPlan.from_config(noise, load_config(None, arm_overrides("edm")).sampler)
    assert (edm.kind, len(edm.sigmas), edm.network_evaluations) == ("edm", 18, 35)
    assert torch.equal(edm.sigmas, edm_sigmas(noise.sigma_max, noise.sigma_min, 18, 7.0))
    ancestral = SamplerPlan.from_config(noise, load_config(None, arm_overrides("ancestral")).sampler)
    assert (ancestral.kind, ancestral.network_evaluations) == ("ancestral", noise.num_levels)


def reference_annealed_langevin(model, config, indices, seed):
    """NCSNv2 Algorithm 1 as the sampler ran it before issue 24 (samples/generate.py's _draw at e6bca86):
    start N(1/2, σ_1²I), T steps per level of the step rule, the final denoising step."""
    sigmas = ladder(config.noise.ladder, config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    x = initial_state(seed, indices, shape, init="gaussian", sigma_max=config.noise.sigma_max)
    rule = config.sampler
    step = 0
    for level in range(len(sigmas)):
        sigma_batch = sigmas.to(x.dtype)[level].expand(x.shape[0])
        for _ in range(rule.steps_per_level):
            score = model(x, sigma_batch)
            z = sample_normal(seed, indices, shape, step=step, dtype=x.dtype)
            if rule.step_rule == "ncsn":
                alpha = rule.step_lr * (sigmas[level].item() / sigmas[-1].item()) ** 2
                x = x + alpha * score + math.sqrt(2.0 * alpha) * z
            else:
                alpha = (2.0 * (rule.snr * z.flatten(1).norm(dim=1) / score.flatten(1).norm(dim=1)) ** 2)
                x = x + alpha.reshape(-1, 1, 1, 1) * score + torch.sqrt(2.0 * alpha.reshape(-1, 1, 1, 1)) * z
            step += 1
    return x + sigmas[-1].item() ** 2 * model(x, sigmas.to(x.dtype)[-1].expand(x.shape[0]))


@pytest.mark.parametrize("arm", ["geometric", "snr", "linear"])
def test_existing_configs_draw_the_samples_they_drew_before(arm):
    from hpc_ncsn.model import build_score_model

    config = load_config(None, [*arm_overrides(arm), "data.image_size=8", "model.base_channels=8",
                                "model.channel_mults=[1]", "model.attn_resolutions=[]", "noise.num_levels=4",
                                "sampler.steps_per_level=2", "sampler.step_lr=1e-4"])
    torch.manual_seed(0)
    model = build_score_model(config.model, config.data).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
        indices = torch.arange(3, 7)
        ours = draw(model, SamplerPlan.from_config(config.noise, config.sampler), seed=5, indices=indices,
                    shape=(1, 8, 8), init=config.sampler.init)
        before = reference_annealed_langevin(model, config, indices, seed=5)
    assert torch.equal(ours, before)


# Every path of SamplerConfig.ignored_keys' docstring: kind, step rule, corrector steps, step_lr given or planned (0).
SAMPLER_PATHS = {
    "langevin-ncsn": dict(kind="langevin", step_rule="ncsn", step_lr=1e-3),
    "langevin-ncsn-planned": dict(kind="langevin", step_rule="ncsn", step_lr=0.0),
    "langevin-snr": dict(kind="langevin", step_rule="snr"),
    "ancestral": dict(kind="ancestral"),
    "ancestral-snr": dict(kind="ancestral", step_rule="snr"),
    "pc-ncsn": dict(kind="ancestral", corrector_steps=1, step_lr=1e-3),
    "pc-ncsn-planned": dict(kind="ancestral", corrector_steps=1, step_lr=0.0),
    "pc-snr": dict(kind="ancestral", corrector_steps=1, step_rule="snr"),
    "ode": dict(kind="ode"),
    "edm": dict(kind="edm", ladder="edm", num_levels=4),
}
# Another value of each key of the sampler's maths (the network's own keys, precision, channels_last and compile,
# are never declared ignored): a change the config may refuse (ConfigError) for a path, which then cannot vary it.
OTHER_VALUE = {
    "kind": lambda value: "ode" if value != "ode" else "edm",
    "step_rule": lambda value: "snr" if value == "ncsn" else "ncsn",
    "steps_per_level": lambda value: value + 1,
    "step_lr": lambda value: 2 * value or 2e-3,
    "snr": lambda value: 2 * value,
    "init": lambda value: "uniform" if value == "gaussian" else "gaussian",
    "final_denoise": lambda value: not value,
    "corrector_steps": lambda value: value + 1,
    "ladder": lambda value: "linear" if value != "linear" else "geometric",
    "num_levels": lambda value: (value or 5) - 1,
    "sigma_max": lambda value: 4.0,
    "sigma_min": lambda value: 0.1,
    "rho": lambda value: value - 2,
}
KEY_NOISE = NoiseConfig(sigma_max=5.0, sigma_min=0.05, num_levels=5)


def drawn(sampler: SamplerConfig) -> torch.Tensor:
    """A few samples of a tiny Gaussian with its exact score, by the sampler `sampler` on KEY_NOISE's network."""
    plan = SamplerPlan.from_config(KEY_NOISE, sampler)
    score = gaussian_score(torch.linspace(0.2, 0.8, 9).reshape(1, 3, 3), 0.3)
    return draw(score, plan, seed=3, indices=torch.arange(16), shape=(1, 3, 3), init=sampler.init)


@pytest.mark.parametrize("path", SAMPLER_PATHS)
def test_a_sampler_draws_the_same_samples_whatever_the_keys_it_ignores_and_others_for_any_other_key(path):
    base = SamplerConfig(steps_per_level=2, **SAMPLER_PATHS[path])
    ignored = base.ignored_keys()
    assert ignored <= {f"sampler.{key}" for key in SamplerConfig.STEP_KEYS}
    reference, varied = drawn(base), set()
    for key, other in OTHER_VALUE.items():
        try:
            changed = dataclasses.replace(base, **{key: other(getattr(base, key))})
            samples = drawn(changed)
        except ConfigError:
            continue  # this sampler refuses the change: no cell can differ from it there
        varied.add(f"sampler.{key}")
        assert torch.equal(samples, reference) == (f"sampler.{key}" in ignored), f"{path}: {key}"
        if f"sampler.{key}" in ignored:  # the same keys ignored whatever their values: cells group consistently
            assert changed.ignored_keys() == ignored
    assert ignored <= varied and {"sampler.final_denoise", "sampler.ladder"} <= varied - ignored
