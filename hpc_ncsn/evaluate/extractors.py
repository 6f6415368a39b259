"""Feature extractors for the evaluator (torch-fidelity's, and a digits classifier) and the checks before them.

- "inception-v3-compat": torch-fidelity's TF-ported Inception-v3 (2048-d pool
  features, logits for IS). Offline clusters pass a weights file
  (`feature_extractor_weights_path`); otherwise torch-fidelity downloads it.
- "digits-classifier": a small CNN trained on scikit-learn's 1,797 digits (the
  offline debug data set); its 64-d penultimate layer is the feature, its 10
  logits feed IS. Trained deterministically on first use (a few seconds on a CPU)
  and cached; the weights' hash is part of every reference-statistics key.

Registration in torch-fidelity's registry is explicit (`register_extractors()`),
never an import side effect. `extract_features` runs an extractor on uint8 images
after `check_images` has refused inputs that would silently give a wrong score.

One concept, the feature extractors (their inputs checked), hence a little over ~300 lines.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..files import atomic_write, cache_dir, file_sha256

__all__ = ["DEFAULT_EXTRACTOR", "DIGITS_EXTRACTOR", "INCEPTION", "DigitsClassifier", "Extractor", "cache_dir",
           "check_images", "digits_classifier_weights", "extract_features", "extractor_for", "load_extractor",
           "register_extractors"]

INCEPTION = "inception-v3-compat"
DIGITS_EXTRACTOR = "digits-classifier"
DEFAULT_EXTRACTOR = {"digits": DIGITS_EXTRACTOR, "cifar10": INCEPTION}
DIGITS_VERSION = 1


class ExtractorUnavailable(UserError, FileNotFoundError):
    """A feature extractor or its weights cannot be had; the message says how to provide them."""


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
    from ..config import DataConfig
    from ..data import load_dataset

    images, labels = load_dataset(DataConfig(name="digits", image_size=DIGITS_SIZE, channels=1))
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


def digits_classifier_weights() -> Path:
    """The cached classifier weights (trained on first use, written atomically)."""
    path = cache_dir() / f"digits-classifier-v{DIGITS_VERSION}.pt"
    if not path.exists():
        buffer = io.BytesIO()
        torch.save(_train_digits_classifier(), buffer)
        atomic_write(path, buffer.getvalue())
    return path


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


def extractor_for(data_name: str, requested: str | None = None) -> str:
    """The extractor to use: the requested one, else the data set's default (Inception for anything else)."""
    return requested or DEFAULT_EXTRACTOR.get(data_name, INCEPTION)


@dataclass
class Extractor:
    """A loaded torch-fidelity extractor and the layers used for FID/KID and for IS."""

    name: str
    module: torch.nn.Module
    feature_layer: str
    logits_layer: str
    weights_digest: str  # sha256 of the weights' bytes loaded (for Inception: the cache's checked copy)
    device: torch.device
    classifier: bool = True  # False: the weights have no classifier, IS is unavailable
    weights_source: str | None = None  # the file the weights came from
    weights_source_sha256: str | None = None  # its sha256 (for Inception: of the file fetched, before any conversion)


def load_extractor(name: str, weights_path: Path | str | None, device: torch.device,
                   cache: Path | None = None) -> Extractor:
    """Build a registered extractor from local weights when given.

    For Inception, `weights_path` may be any format `hpc_ncsn.evaluate.inception` accepts
    (copied, converted when needed, once into `cache`); without one, the weights `hpc-ncsn
    fetch inception` placed in the cache are used, else torch-fidelity's file is downloaded
    into the cache as that command would. Either way the module is built from the cache's
    copy, its sha256 checked and unpickled with weights_only=True (`inception.load_weights`).
    """
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from .inception import fetch_inception, inception_module, load_weights, prepare_weights, prepared_default

    register_extractors()
    cache = Path(cache) if cache is not None else cache_dir()
    if name not in (INCEPTION, DIGITS_EXTRACTOR):  # torch-fidelity's others unpickle weights with code allowed
        raise ExtractorUnavailable(f"feature extractor {name!r} is not offered; choose {INCEPTION} or "
                                   f"{DIGITS_EXTRACTOR}")
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    feature_layer = cls.get_default_feature_layer_for_metric("fid")
    logits_layer = cls.get_default_feature_layer_for_metric("isc")
    if weights_path is not None and not Path(weights_path).is_file():
        raise ExtractorUnavailable(f"feature extractor weights {weights_path} not found; pass an existing file "
                                   "(for Inception: torch-fidelity's .pth or NVIDIA's inception-2015-12-05.pt; "
                                   "'hpc-ncsn fetch inception' places them in the cache)")
    if name == INCEPTION:
        prepared = prepare_weights(Path(weights_path), cache) if weights_path else prepared_default(cache)
        if prepared is None and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ExtractorUnavailable("Inception weights would be downloaded but the machine is offline; run "
                                       "'hpc-ncsn fetch inception --from FILE' or pass --weights PATH")
        if prepared is None:
            prepared = fetch_inception(None, cache)
        module = inception_module(load_weights(prepared), (feature_layer, logits_layer)).to(device).eval()
        return Extractor(name, module, feature_layer, logits_layer, prepared.sha256, device,
                         prepared.has_classifier, prepared.source, prepared.source_sha256)
    digest = file_sha256(Path(weights_path) if weights_path is not None else digits_classifier_weights())
    module = cls(name, [feature_layer, logits_layer], feature_extractor_weights_path=str(weights_path)
                 if weights_path else None).to(device).eval()  # the digits classifier: weights_only=True
    return Extractor(name, module, feature_layer, logits_layer, digest, device, True,
                     str(weights_path) if weights_path else None)


@torch.no_grad()
def extract_features(extractor: Extractor, images: torch.Tensor | np.ndarray, batch_size: int = 200,
                     layout: str = "NCHW", advance: Callable[[int], None] = lambda images: None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) as float64 tensors on the extractor's device, for uint8 images;
    `advance(images)` after each batch (a progress bar's update).

    Refuses bad input with the reason. The uint8 images go to the device whole (pinned,
    without waiting), the extractor resizes there, and nothing comes back to the host
    between batches.
    """
    check_images(images)
    images = torch.as_tensor(images)
    if layout == "NHWC":
        images = images.permute(0, 3, 1, 2)
    if extractor.device.type == "cuda":
        images = images.contiguous().pin_memory().to(extractor.device, non_blocking=True)
    features, logits = [], []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(extractor.device)
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        feature, logit = extractor.module(batch.contiguous())
        features.append(feature.double())
        logits.append(logit.double())
        advance(batch.shape[0])
    return torch.cat(features), torch.cat(logits)


# Input checks ------------------------------------------------------------------------------

def _is_floating(images) -> bool:
    return images.is_floating_point() if isinstance(images, torch.Tensor) else np.issubdtype(images.dtype, np.floating)


def _is_uint8(images) -> bool:
    return images.dtype == (torch.uint8 if isinstance(images, torch.Tensor) else np.uint8)


def _is_integer(images) -> bool:
    if isinstance(images, torch.Tensor):
        return not (images.is_floating_point() or images.is_complex() or images.dtype == torch.bool)
    return np.issubdtype(images.dtype, np.integer)


def _has_nan(images) -> bool:
    return bool(torch.isnan(images).any()) if isinstance(images, torch.Tensor) else bool(np.isnan(images).any())


def _check_image_dtype(images) -> None:
    """uint8 passes; floats (NaN first), other integers and other dtypes are refused with the fix."""
    dtype = images.dtype
    if _is_floating(images) and _has_nan(images):
        raise ValueError(
            f"images contain NaN (dtype {dtype}); float inputs with NaN are refused — fix the sampler run that "
            "produced them, then convert the [0, 1] floats with hpc_ncsn.data.to_uint8"
        )
    if _is_uint8(images):
        return
    if _is_floating(images):
        raise ValueError(
            f"images have dtype {dtype}, expected uint8 in 0..255; convert with hpc_ncsn.data.to_uint8 "
            "(model-scale floats in [0, 1]; float inputs with NaN are refused)"
        )
    if _is_integer(images) and math.prod(images.shape) > 0:
        low, high = int(images.min()), int(images.max())
        if low < 0 or high > 255:
            raise ValueError(
                f"images of dtype {dtype} have values out of range 0..255 (min {low}, max {high}); "
                "rescale them to 0..255 and cast to uint8"
            )
    raise ValueError(
        f"images have dtype {dtype}, expected uint8 in 0..255; cast with .to(torch.uint8) or .astype(numpy.uint8) "
        "if the values already are 0..255 integers"
    )


def check_images(images) -> None:
    """Refuse images a feature extractor would turn into a silently wrong score (ValueError with the fix).

    Accepted: a torch.Tensor or numpy array, dtype uint8, 4-D, with at least 2 images, and
    1 or 3 channels in dim 1 (NCHW) or dim 3 (NHWC). The layout is decided by which of
    dim 1 / dim 3 is 1 or 3; when both are (e.g. (N, 3, 8, 3)), NCHW is assumed.
    NaN is checked before the dtype, so float images with NaN are reported as NaN.
    """
    if not isinstance(images, (torch.Tensor, np.ndarray)):
        raise ValueError(
            f"images must be a torch.Tensor or numpy.ndarray, got {type(images).__name__}; "
            "stack them into one (N, C, H, W) uint8 batch with torch.stack"
        )
    _check_image_dtype(images)
    shape = tuple(images.shape)
    if len(shape) != 4:
        raise ValueError(
            f"images must be 4-D, (N, C, H, W) or (N, H, W, C), got shape {shape}; stack single images into a "
            "batch with torch.stack, and give a grayscale (N, H, W) batch its channel axis with images[:, None]"
        )
    if shape[1] not in (1, 3) and shape[3] not in (1, 3):
        raise ValueError(
            f"images must have 1 or 3 channels in dim 1 (NCHW) or dim 3 (NHWC), got shape {shape}; "
            "drop an alpha channel (images[:, :3] for NCHW) or convert to RGB/grayscale"
        )
    if shape[0] < 2:
        raise ValueError(f"FID/KID need at least 2 samples, got {shape[0]} image(s); pass a larger batch")
