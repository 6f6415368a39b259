"""Data sets as uint8 images, and the map between uint8 and the model's scale.

Images are held as uint8 tensors shaped (N, C, H, W). The model sees x in [0, 1]
(NCSN/NCSNv2's scale): `to_model_scale` maps uint8 → float, `to_uint8` maps back
with clamping and rounding. `toy2d` is a Gaussian mixture with an exact score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import DataConfig
from .errors import UserError

__all__ = [
    "DATASETS",
    "DataUnavailableError",
    "GaussianMixture",
    "load_images",
    "resize_uint8",
    "to_model_scale",
    "to_uint8",
    "toy_mixture",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


class DataUnavailableError(UserError, FileNotFoundError):
    """A data set is not on disk and cannot be downloaded; the message says where to put it."""


def to_model_scale(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in {0..255} → float32 in [0, 1] (x/255)."""
    if images.dtype != torch.uint8:
        raise TypeError(
            f"expected uint8 images in 0..255, got dtype {images.dtype}; "
            "convert with hpc_ncsn.data.to_uint8 (for [0, 1] floats) before passing them"
        )
    return images.to(torch.float32) / 255.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Model-scale floats in [0, 1] → uint8: clamp to [0, 1], scale by 255, round half to even."""
    if not x.is_floating_point():
        raise TypeError(f"expected floating-point model-scale values, got dtype {x.dtype}")
    if torch.isnan(x).any():
        raise ValueError("cannot convert NaN values to uint8 images; the sampler or model diverged")
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) images to size×size with antialiased bilinear filtering."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    resized = F.interpolate(images.to(torch.float32), size=(size, size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    if images.shape[1] == channels:
        return images
    if images.shape[1] == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise ValueError(f"cannot turn {images.shape[1]}-channel images into {channels} channels")


def _load_digits(cfg: DataConfig) -> torch.Tensor:
    """scikit-learn's 1,797 real 8x8 handwritten digits (values 0..16), as uint8."""
    from sklearn.datasets import load_digits

    pixels = torch.from_numpy(load_digits().images).to(torch.float64)
    images = (pixels * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    return _match_channels(resize_uint8(images, cfg.image_size), cfg.channels)


def _load_cifar10(cfg: DataConfig) -> torch.Tensor:
    """The 50,000 CIFAR-10 training images through torchvision, as uint8 (N, 3, 32, 32)."""
    from torchvision.datasets import CIFAR10

    root = Path(cfg.data_root)
    try:
        dataset = CIFAR10(root=str(root), train=True, download=cfg.download)
    except RuntimeError as error:
        raise DataUnavailableError(
            f"CIFAR-10 not found under {root} ({error}). Put the extracted python version "
            f"(cifar-10-batches-py/, from cifar-10-python.tar.gz at {CIFAR10_URL}) in {root}/, "
            "or set data.download=true on a machine with internet access."
        ) from None
    except OSError as error:
        raise DataUnavailableError(
            f"CIFAR-10 download to {root} failed ({error}); this machine seems offline. Copy "
            f"cifar-10-batches-py/ (from cifar-10-python.tar.gz at {CIFAR10_URL}) into {root}/."
        ) from None
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return resize_uint8(images, cfg.image_size)


DATASETS = {"digits": _load_digits, "cifar10": _load_cifar10}


def load_images(cfg: DataConfig) -> torch.Tensor:
    """The configured image data set as uint8 (N, C, H, W) at cfg.image_size and cfg.channels."""
    if cfg.name not in DATASETS:
        raise ValueError(f"data.name={cfg.name!r} is not an image data set; choose one of {', '.join(DATASETS)}")
    return DATASETS[cfg.name](cfg)


@dataclass(frozen=True)
class GaussianMixture:
    """Isotropic Gaussian mixture Σ_k w_k N(μ_k, s²I) with its exact (noise-perturbed) score.

    Perturbing with N(0, σ²I) gives the mixture with variance s² + σ², so
    ∇x log p_σ(x) = Σ_k r_k(x) (μ_k − x)/(s² + σ²), with responsibilities r_k.
    """

    means: torch.Tensor
    weights: torch.Tensor
    std: float

    def sample(self, num: int, generator: torch.Generator) -> torch.Tensor:
        component = torch.multinomial(self.weights, num, replacement=True, generator=generator)
        noise = torch.randn(num, self.means.shape[1], generator=generator, dtype=self.means.dtype)
        return self.means[component] + self.std * noise

    def _log_responsibilities(self, x: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        squared = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        logits = torch.log(self.weights)[None] - 0.5 * squared / variance
        return logits - torch.logsumexp(logits, dim=1, keepdim=True)

    def score(self, x: torch.Tensor, sigma: torch.Tensor | float = 0.0) -> torch.Tensor:
        """∇x log p_σ(x); `sigma` is a scalar or one value per row of x."""
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        variance = (self.std**2 + sigma**2).reshape(-1, 1)
        resp = self._log_responsibilities(x, variance).exp()
        return (resp @ self.means - x) / variance

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest mean for each row of x."""
        return torch.cdist(x, self.means).argmin(dim=1)

    def mode_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Fraction of the rows of x nearest to each mean."""
        counts = torch.bincount(self.assign(x), minlength=self.means.shape[0])
        return counts.to(torch.float64) / x.shape[0]

    def bounding_box(self, margin: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
        """A box covering every mode: means ± margin·std, per coordinate."""
        return self.means.min(0).values - margin * self.std, self.means.max(0).values + margin * self.std


def toy_mixture(means, weights, std: float) -> GaussianMixture:
    """A normalized float64 GaussianMixture from plain sequences."""
    means_t = torch.as_tensor(means, dtype=torch.float64)
    weights_t = torch.as_tensor(weights, dtype=torch.float64)
    if means_t.ndim != 2 or weights_t.shape != (means_t.shape[0],):
        raise ValueError(f"need means shaped (K, D) and K weights, got {tuple(means_t.shape)} and {tuple(weights_t.shape)}")
    if (weights_t <= 0).any() or not math.isfinite(std) or std <= 0:
        raise ValueError("mixture weights and std must be positive")
    return GaussianMixture(means_t, weights_t / weights_t.sum(), float(std))
