"""DSM against the analytic score of a Gaussian: the loss is minimized by the true score."""

import pytest
import torch
from torch import nn

from hpc_ncsn.loss import dsm_loss, per_level_loss

MEAN = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
STD = 0.7
SIGMAS = torch.tensor([2.0, 0.5, 0.1], dtype=torch.float64)


class LinearScore(nn.Module):
    """s(x̃, σ) = −c_σ (x̃ − b): contains the true score of N(μ, s²I) perturbed by σ."""

    def __init__(self, c: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.c = nn.Parameter(c.clone())
        self.b = nn.Parameter(b.clone())

    def forward(self, x, sigma):
        level = (sigma[:, None] == SIGMAS[None]).to(torch.int64).argmax(dim=1)
        return -self.c[level][:, None] * (x - self.b)


def gaussian_data(n: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return MEAN + STD * torch.randn(n, 4, generator=generator, dtype=torch.float64)


def true_c() -> torch.Tensor:
    return 1.0 / (STD**2 + SIGMAS**2)


def test_gradient_vanishes_at_the_true_score_and_not_elsewhere():
    x = gaussian_data(400_000, seed=0)
    grads = {}
    for name, c, b in (("true", true_c(), MEAN), ("off", true_c() * 1.2, MEAN + 0.3)):
        model = LinearScore(c, b)
        dsm_loss(model, x, SIGMAS, generator=torch.Generator().manual_seed(1)).loss.backward()
        grads[name] = torch.cat([model.c.grad, model.b.grad])
    assert grads["true"].abs().max() < 0.02
    assert grads["off"].abs().max() > 0.2


def test_minimizing_the_loss_recovers_the_analytic_score():
    x = gaussian_data(400_000, seed=2)
    model = LinearScore(torch.ones(3, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = dsm_loss(model, x, SIGMAS, generator=torch.Generator().manual_seed(3)).loss
        loss.backward()
        return loss

    optimizer.step(closure)
    assert torch.allclose(model.c.detach(), true_c(), rtol=0.03)
    assert torch.allclose(model.b.detach(), MEAN, atol=0.03)


def test_per_level_loss_matches_closed_form_of_weighted_loss():
    # With the true score, ½E‖σ s* + z‖² = ½ D s²/(s² + σ²) at every level.
    x = gaussian_data(300_000, seed=4)
    model = LinearScore(true_c(), MEAN)
    with torch.no_grad():
        out = dsm_loss(model, x, SIGMAS, generator=torch.Generator().manual_seed(5))
    sums, counts = per_level_loss(out.per_example, out.levels, len(SIGMAS))
    assert int(counts.sum()) == x.shape[0] and (counts > 90_000).all()
    expected = 0.5 * 4 * STD**2 / (STD**2 + SIGMAS**2)
    assert torch.allclose(sums / counts, expected, rtol=0.02)
    assert out.loss.item() == pytest.approx(float((sums.sum() / counts.sum())), rel=1e-9)


def test_one_level_per_example_uniformly():
    x = torch.zeros(30_000, 2)
    out = dsm_loss(lambda y, s: torch.zeros_like(y), x, torch.tensor([1.0, 0.5, 0.25]),
                   generator=torch.Generator().manual_seed(0))
    assert out.levels.shape == (30_000,)
    counts = torch.bincount(out.levels, minlength=3).double()
    assert torch.allclose(counts / 30_000, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.015)
    # A zero score leaves ½‖z‖², whose mean is D/2 = 1.
    assert out.loss.item() == pytest.approx(1.0, rel=0.03)
