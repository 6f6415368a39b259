"""The samplers of hpc_ncsn.solvers (and their dispatch, hpc_ncsn.sampling.sample) against closed forms.

Data set: N(μ, s²I). Its noised marginal at σ is N(μ, (s² + σ²)I), with the exact score
s(x, σ) = −(x − μ)/(s² + σ²). Every sampler is then linear in x, so its discretisation error has a
closed form too: for each one the test writes the scalar recursion of the chain's variance (or, for
the ODE, the factor each sample's deviation from μ is multiplied by) from the sampler's formula,
independently of the code, and checks (1) the code against the recursion (to rounding, or to the
sampling error of the sample variance), (2) the recursion against the exact marginal
N(μ, s² + σ_min²), with the discretisation error it predicts stated, and (3) the error's order
(halving the step halves it for Euler and the ancestral predictor, quarters it for Heun).
"""

import math

import pytest
import torch

from hpc_ncsn.sampling import SamplerPlan, sample
from hpc_ncsn.schedules import edm_sigmas, geometric_sigmas, linear_sigmas

DIM, STD, SAMPLES = 16, 0.3, 4000  # s = 0.3: about the spread of image pixels in [0, 1]
MEAN = torch.linspace(0.2, 0.8, DIM, dtype=torch.float64)
SIGMA_MAX, SIGMA_MIN = 50.0, 0.01  # the digits training ladder's range


def exact_score(x, sigma):
    return (MEAN - x) / (STD**2 + sigma.reshape(-1, 1) ** 2)


def exact_start(sigma_max: float, seed: int = 0) -> torch.Tensor:
    """SAMPLES draws of the exact marginal at σ_max: the samplers' errors are then their own."""
    generator = torch.Generator().manual_seed(seed)
    return MEAN + math.sqrt(STD**2 + sigma_max**2) * torch.randn(SAMPLES, DIM, dtype=torch.float64,
                                                                  generator=generator)


def plan(sigmas, kind, *, step_rule="ncsn", step_lr=2e-5, corrector_steps=0, final_denoise=False):
    return SamplerPlan(sigmas, step_rule, 1, step_lr, 0.16, final_denoise, kind, corrector_steps)


def run(sigmas, kind, x0=None, **options):
    x0 = exact_start(float(sigmas[0])) if x0 is None else x0
    return sample(exact_score, x0.clone(), plan(sigmas, kind, **options), seed=0, indices=torch.arange(SAMPLES))


def ode_factor(sigmas, heun: bool) -> float:
    """The factor a step rule of dx/dσ = σ(x − μ)/(s² + σ²) multiplies x − μ by, over the whole ladder."""
    factor = 1.0
    for now, nxt in zip(sigmas.tolist(), sigmas.tolist()[1:]):
        h, k_now, k_next = nxt - now, now / (STD**2 + now**2), nxt / (STD**2 + nxt**2)
        euler = 1.0 + h * k_now
        factor *= 1.0 + 0.5 * h * (k_now + k_next * euler) if heun else euler
    return factor


def exact_factor(sigma_max: float, sigma_min: float) -> float:
    """The ODE's exact flow map: x − μ scales as sqrt(s² + σ²)."""
    return math.sqrt((STD**2 + sigma_min**2) / (STD**2 + sigma_max**2))


def test_edm_ladder_is_the_papers_formula():
    n, rho, top, bottom = 18, 7.0, 80.0, 0.002
    paper = [(top ** (1 / rho) + i / (n - 1) * (bottom ** (1 / rho) - top ** (1 / rho))) ** rho for i in range(n)]
    assert edm_sigmas(top, bottom, n, rho).tolist() == pytest.approx(paper, rel=1e-12)
    assert edm_sigmas(top, bottom, n, rho)[[0, -1]].tolist() == [top, bottom]
    assert torch.allclose(edm_sigmas(top, bottom, n, 1.0), linear_sigmas(top, bottom, n), rtol=1e-12)


@pytest.mark.parametrize("kind, order", [("edm", 2), ("ode", 1)])
def test_probability_flow_moves_each_sample_by_the_closed_form_factor_and_converges_at_its_order(kind, order):
    heun = kind == "edm"
    sigmas = edm_sigmas(SIGMA_MAX, SIGMA_MIN, 18)
    x0 = exact_start(SIGMA_MAX)
    x = run(sigmas, kind, x0)
    # (1) The code is the step rule: deterministic, each sample's deviation scaled by the recursion's factor.
    assert torch.allclose(x - MEAN, ode_factor(sigmas, heun) * (x0 - MEAN), rtol=1e-9, atol=1e-12)
    # (2)-(3) The factor's relative error against the exact flow, for 18, 36, 72 levels: Heun's shrinks ~4x
    # per halving (4.5 % at 18 levels, EDM's default: ρ = 7 crowds the steps where σ ≈ s), Euler's ~2x.
    errors = [abs(ode_factor(edm_sigmas(SIGMA_MAX, SIGMA_MIN, n), heun) / exact_factor(SIGMA_MAX, SIGMA_MIN) - 1)
              for n in (18, 36, 72)]
    assert errors[0] < (0.05 if heun else 0.15)
    for coarse, fine in zip(errors, errors[1:]):
        assert fine / coarse == pytest.approx(2.0**-order, rel=0.25)


def test_heun_reaches_the_exact_marginal():
    # 72 EDM levels: the recursion above puts the std within 0.25 % of exact; the samples' mean and std are
    # checked against N(μ, s² + σ_min²) with 4.5 standard errors of the estimate (max over 16 coordinates).
    x = run(edm_sigmas(SIGMA_MAX, SIGMA_MIN, 72), "edm")
    std = math.sqrt(STD**2 + SIGMA_MIN**2)
    assert (x.mean(0) - MEAN).abs().max() < 4.5 * std / math.sqrt(SAMPLES)
    assert x.std(0).mean().item() == pytest.approx(std, rel=0.0025 + 4.5 * math.sqrt(0.5 / (SAMPLES * DIM)))


def ancestral_variance(sigmas, *, corrector_steps=0, step_lr=2e-5) -> float:
    """The chain's variance after the reverse-diffusion predictor (and the ncsn-rule Langevin corrector):
    the predictor x + Δ·s(x, σ_i) + sqrt(Δ)·z, Δ = σ_i² − σ_{i+1}², maps the variance v to (1 − Δ/(s² + σ_i²))²·v + Δ;
    a Langevin step x + α·s(x, σ) + sqrt(2α)·z maps it to (1 − α/(s² + σ²))²·v + 2α."""
    levels = sigmas.tolist()
    variance = STD**2 + levels[0] ** 2

    def corrector(variance, sigma):
        alpha = step_lr * sigma**2 / levels[-1] ** 2
        for _ in range(corrector_steps):
            variance = (1 - alpha / (STD**2 + sigma**2)) ** 2 * variance + 2 * alpha
        return variance

    variance = corrector(variance, levels[0])
    for now, nxt in zip(levels, levels[1:]):
        gap = now**2 - nxt**2
        variance = corrector((1 - gap / (STD**2 + now**2)) ** 2 * variance + gap, nxt)
    return variance


@pytest.mark.parametrize("corrector_steps", [0, 1])
def test_ancestral_sampler_follows_its_variance_recursion_to_the_exact_marginal(corrector_steps):
    sigmas = geometric_sigmas(SIGMA_MAX, SIGMA_MIN, 116)
    x = run(sigmas, "ancestral", corrector_steps=corrector_steps)
    exact = STD**2 + SIGMA_MIN**2
    predicted = ancestral_variance(sigmas, corrector_steps=corrector_steps)
    # (1) Mean: the chain's mean stays μ; 4.5 standard errors. Variance: the recursion, within 4.5 standard
    # errors of a sample variance averaged over the 16 coordinates (sqrt(2/(n·16)) relative).
    assert (x.mean(0) - MEAN).abs().max() < 4.5 * math.sqrt(predicted / SAMPLES)
    assert x.var(0).mean().item() == pytest.approx(predicted, rel=4.5 * math.sqrt(2 / (SAMPLES * DIM)))
    # (2) The predictor's excess variance is first order in the ladder's step log γ (0.074 here): 7.8 % of
    # s² + σ_min² at L = 116; one Langevin corrector step per level takes it to 2 %.
    assert abs(predicted / exact - 1) < (0.08 if corrector_steps == 0 else 0.025)
    # (3) Halving log γ halves it (first order).
    finer = ancestral_variance(geometric_sigmas(SIGMA_MAX, SIGMA_MIN, 231), corrector_steps=corrector_steps)
    assert (finer / exact - 1) / (predicted / exact - 1) == pytest.approx(0.5, rel=0.15)


@pytest.mark.parametrize("kind, final_denoise, expected", [
    ("langevin", True, 6 * 3 + 1), ("ancestral", True, 5 + 6 * 2 + 1), ("ancestral", False, 5),
    ("ode", True, 5 + 1), ("edm", True, 5 * 2 + 1), ("edm", False, 5 * 2)])
def test_each_sampler_calls_the_network_as_often_as_its_plan_says(kind, final_denoise, expected):
    sigmas = geometric_sigmas(1.0, 0.1, 6)
    corrector_steps = 2 if kind == "ancestral" and final_denoise else 0
    calls = []
    levels = []

    def score(x, sigma):
        calls.append(sigma[0].item())
        return -x

    the_plan = SamplerPlan(sigmas, "ncsn", 3, 1e-3, 0.16, final_denoise, kind, corrector_steps)
    sample(score, torch.ones(4, 2, dtype=torch.float64), the_plan, seed=0, indices=torch.arange(4),
           callback=lambda level, sigma, x: levels.append(level))
    assert len(calls) == the_plan.network_evaluations == expected
    assert levels == list(range(6))  # one progress report per level, whatever the sampler
    assert {round(sigma, 12) for sigma in calls} <= {round(sigma, 12) for sigma in sigmas.tolist()}  # the ladder's σ


def test_final_step_of_every_sampler_is_the_denoiser():
    # The step to σ = 0 is x + σ_L²·s(x, σ_L) = D(x; σ_L): for the Gaussian, μ + s²/(s² + σ_L²)·(x − μ).
    sigmas = geometric_sigmas(1.0, 0.2, 4)
    x0 = exact_start(1.0)[:50]
    for kind in ("ancestral", "ode", "edm"):
        options = dict(seed=0, indices=torch.arange(50))
        plain = sample(exact_score, x0.clone(), plan(sigmas, kind), **options)
        denoised = sample(exact_score, x0.clone(), plan(sigmas, kind, final_denoise=True), **options)
        assert torch.allclose(denoised, MEAN + STD**2 / (STD**2 + 0.04) * (plain - MEAN), rtol=1e-12)


def test_ancestral_samples_do_not_depend_on_the_batch():
    sigmas = geometric_sigmas(1.0, 0.1, 5)
    the_plan = plan(sigmas, "ancestral", step_rule="snr", corrector_steps=1)
    x0 = exact_start(1.0)[:12]

    def draw(indices):
        return sample(exact_score, x0[indices], the_plan, seed=3, indices=indices)

    whole = draw(torch.arange(12))
    assert torch.equal(torch.cat([draw(torch.arange(0, 5)), draw(torch.arange(5, 12))]), whole)
