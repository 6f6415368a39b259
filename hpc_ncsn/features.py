"""Feature extractors for the evaluator, as torch-fidelity feature extractors.

- "inception-v3-compat": torch-fidelity's TF-ported Inception-v3 (2048-d pool
  features, logits for IS). Offline clusters pass a weights file
  (`feature_extractor_weights_path`); otherwise torch-fidelity downloads it.
- "digits-classifier": a small CNN trained on scikit-learn's 1,797 digits (the
  offline debug data set); its 64-d penultimate layer is the feature, its 10
  logits feed IS. Trained deterministically on first use (a few seconds on a CPU)
  and cached; the weights' hash is part of every reference-statistics key.

Registration in torch-fidelity's registry is explicit (`register_extractors()`),
never an import side effect.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DIGITS_EXTRACTOR", "DigitsClassifier", "cache_dir", "digits_classifier_weights", "file_digest",
           "register_extractors"]

DIGITS_EXTRACTOR = "digits-classifier"
DIGITS_VERSION = 1
DIGITS_SIZE = 16


class DigitsClassifier(nn.Module):
    """Gray 16×16 digits → 64-d features → 10 logits (two conv blocks, one hidden layer)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
        )
        self.head = nn.Linear(64, 10)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) → float gray (N, 1, 16, 16) in [0, 1] (channel mean, bilinear resize)."""
        x = images.float().mean(dim=1, keepdim=True) / 255.0
        if x.shape[-1] != DIGITS_SIZE or x.shape[-2] != DIGITS_SIZE:
            x = F.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", antialias=True)
        return x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(self.prepare(images))
        return features, self.head(features)


def _train_digits_classifier(seed: int = 0, epochs: int = 30) -> dict:
    """Train on all 1,797 digits with small random shifts; deterministic for a given seed."""
    from .config import DataConfig
    from .data import load_images

    images = load_images(DataConfig(name="digits", image_size=DIGITS_SIZE, channels=1))
    from sklearn.datasets import load_digits

    labels = torch.from_numpy(load_digits().target).long()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), 64):
            batch = order[start : start + 64]
            shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
            x = torch.roll(images[batch], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(x)[1], labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.state_dict()


def cache_dir() -> Path:
    """Where hpc_ncsn caches classifier weights and reference statistics ($HPC_NCSN_CACHE or ~/.cache/hpc_ncsn)."""
    return Path(os.environ.get("HPC_NCSN_CACHE", Path.home() / ".cache" / "hpc_ncsn"))


def digits_classifier_weights() -> Path:
    """The cached classifier weights (trained on first use, written atomically)."""
    path = cache_dir() / f"digits-classifier-v{DIGITS_VERSION}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(_train_digits_classifier(), buffer)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
    return path


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _digits_extractor_class():
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class FeatureExtractorDigits(FeatureExtractorBase):
        """torch-fidelity wrapper of DigitsClassifier: features '64' and 'logits_unbiased'."""

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.model = DigitsClassifier()
            weights = feature_extractor_weights_path or digits_classifier_weights()
            self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            self.model.eval()
            self.requires_grad_(False)

        @staticmethod
        def get_provided_features_list():
            return "64", "logits_unbiased"

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits_unbiased", "fid": "64", "kid": "64", "prc": "64"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 3, DIGITS_SIZE, DIGITS_SIZE, dtype=torch.uint8)

        def forward(self, x):
            features, logits = self.model(x)
            named = {"64": features, "logits_unbiased": logits}
            return tuple(named[name] for name in self.features_list)

    return FeatureExtractorDigits


def register_extractors() -> None:
    """Register our extractors in torch-fidelity's registry (idempotent)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if DIGITS_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(DIGITS_EXTRACTOR, _digits_extractor_class())
