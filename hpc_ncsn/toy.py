"""The NCSN paper's toy (Song & Ermon 2019, §3.2 and Fig. 3), as numbers.

Sample a 2-D Gaussian mixture with its exact score, once by plain Langevin
dynamics and once by annealed Langevin dynamics, both from chains started
uniformly over a box covering the modes, and compare the recovered mode weights
with the true ones. Plain Langevin keeps the chains in the basin they start in, so
it returns the basins' share of the box, not the mixture weights; annealing
through large σ first recovers them.

`ToySettings` is importable without torch (it feeds `hpc-ncsn toy --help`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

    from .data import GaussianMixture

__all__ = ["ToySettings", "run_toy", "save_toy_figure"]


@dataclass(frozen=True)
class ToySettings:
    """Defaults follow the paper's toy: σ from 20 to 1 over 10 geometric levels, T = 100."""

    num_samples: int = field(default=10_000, metadata={"help": "chains per sampler"})
    seed: int = field(default=0, metadata={"help": "noise seed: chain k's noise depends on (seed, k) only"})
    plain_steps: int = field(default=1000, metadata={"help": "plain Langevin: number of steps"})
    plain_step_size: float = field(default=0.05, metadata={"help": "plain Langevin: step α"})
    sigma_max: float = field(default=20.0, metadata={"help": "annealed: σ_1"})
    sigma_min: float = field(default=1.0, metadata={"help": "annealed: σ_L"})
    num_levels: int = field(default=10, metadata={"help": "annealed: L, geometric ladder"})
    steps_per_level: int = field(default=100, metadata={"help": "annealed: T steps per level"})
    step_lr: float = field(default=0.05, metadata={"help": "annealed: ε in α_i = ε·σ_i²/σ_L²"})

    @property
    def total_steps(self) -> int:
        """Langevin updates of both samplers together (what the progress bar counts)."""
        return self.plain_steps + self.num_levels * self.steps_per_level


def run_toy(mixture: GaussianMixture, settings: ToySettings,
            advance: Callable[[int], None] = lambda steps: None) -> tuple[dict, dict[str, torch.Tensor]]:
    """Run both samplers; returns (JSON-ready report, {'data', 'langevin', 'annealed'} samples).
    `advance(steps)` as they go: `settings.total_steps` in all."""
    import torch

    from .sampling import SamplerPlan, annealed_langevin, initial_state, langevin
    from .schedules import geometric_sigmas

    indices = torch.arange(settings.num_samples)
    low, high = mixture.bounding_box()
    start = initial_state(settings.seed, indices, (mixture.means.shape[1],), init="uniform",
                          sigma_max=settings.sigma_max, low=low, high=high, dtype=torch.float64)
    plan = SamplerPlan(geometric_sigmas(settings.sigma_max, settings.sigma_min, settings.num_levels), "ncsn",
                       settings.steps_per_level, step_lr=settings.step_lr, final_denoise=False)
    plain = langevin(mixture.score, start, sigma=0.0, step_size=settings.plain_step_size,
                     steps=settings.plain_steps, seed=settings.seed, indices=indices, callback=lambda t: advance(1))
    annealed = annealed_langevin(mixture.score, start, plan, seed=settings.seed, indices=indices,
                                 callback=lambda level, sigma, x: advance(settings.steps_per_level))
    data = mixture.sample(settings.num_samples, torch.Generator().manual_seed(settings.seed))
    true = mixture.weights
    report = {
        "true_weights": true.tolist(),
        "box": {"low": low.tolist(), "high": high.tolist()},
        "settings": asdict(settings),
    }
    for name, samples in (("langevin", plain), ("annealed_langevin", annealed)):
        weights = mixture.mode_weights(samples)
        report[name] = {"weights": weights.tolist(), "max_abs_error": float((weights - true).abs().max())}
    return report, {"data": data, "langevin": plain, "annealed": annealed}


def save_toy_figure(samples: dict[str, torch.Tensor], mixture: GaussianMixture, report: dict, path: Path) -> None:
    """Scatter plots of data, plain Langevin and annealed Langevin samples side by side (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = mixture.bounding_box(margin=4.0)
    titles = {
        "data": f"exact samples\nweights {_fmt(report['true_weights'])}",
        "langevin": f"Langevin dynamics\nweights {_fmt(report['langevin']['weights'])}",
        "annealed": f"annealed Langevin dynamics\nweights {_fmt(report['annealed_langevin']['weights'])}",
    }
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.8), sharex=True, sharey=True)
    for axis, (name, title) in zip(axes, titles.items()):
        points = samples[name][:1280].numpy()
        axis.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5)
        axis.set_title(title, fontsize=10)
        axis.set_xlim(float(low[0]), float(high[0]))
        axis.set_ylim(float(low[1]), float(high[1]))
        axis.set_aspect("equal")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _fmt(weights: list[float]) -> str:
    return " / ".join(f"{w:.3f}" for w in weights)
