"""Data sets as uint8 images, and the map between uint8 and the model's scale.

Images are held as uint8 tensors shaped (N, C, H, W). The model sees x in [0, 1]
(NCSN/NCSNv2's scale): `to_model_scale` maps uint8 → float, `to_uint8` maps back
with clamping and rounding. `toy2d` is a Gaussian mixture with an exact score.

Image data sets: `digits` (scikit-learn's 1,797, offline, no split), `mnist` and
`fashion_mnist` (torchvision's classes over the four official IDX files, 60,000 train
and 10,000 test images of 28×28, zero-padded to 32×32 by default), `cifar10`
(torchvision; `hpc-ncsn fetch cifar10 --from FILE` places the official archive:
hpc_ncsn.cifar10), `folder` (your own PNG/JPEG images, a folder or a .zip, no split:
hpc_ncsn.image_folder). IDX files and CIFAR-10 are looked for in `data.data_root` and then
in the shared cache's `data/` folder, where `install_idx` (`hpc-ncsn fetch`) puts them.
`load_training_data` is the training set as a run sees it (the one place the toy points
are drawn, with train.seed); `dataset_points` is the same in the model's space.

One concept, the data sets (loaded, placed, scaled), hence a little over ~300 lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import rng
from .cifar10 import CIFAR10_URL
from .config import Config, ConfigError, DataConfig
from .errors import UserError
from .files import atomic_path, cache_dir
from .untrusted import gunzip_bounded, read_bounded

__all__ = [
    "DATASETS",
    "DataUnavailableError",
    "GaussianMixture",
    "IDX_SETS",
    "HELDOUT_SEED",
    "HOLDOUT_FRACTION",
    "WITHOUT_TEST_SPLIT",
    "install_idx",
    "load_dataset",
    "load_images",
    "resize_uint8",
    "to_model_scale",
    "to_uint8",
    "toy_mixture",
]



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


def _load_digits(cfg: DataConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 real 8x8 handwritten digits (values 0..16), as uint8, and their labels; no test split."""
    from sklearn.datasets import load_digits

    if not train:
        raise ConfigError("data.name=digits has no test split (1,797 images in all); use evaluate.reference=train "
                          "(--reference train)")
    digits = load_digits()
    pixels = torch.from_numpy(digits.images).to(torch.float64)
    images = (pixels * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    return _match_channels(resize_uint8(images, cfg.image_size), cfg.channels), torch.from_numpy(digits.target)


def _load_cifar10(cfg: DataConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 through torchvision (50,000 train / 10,000 test), as uint8 (N, 3, 32, 32) and labels; looked for in
    data.data_root and then in the shared cache's data/ (where `hpc-ncsn fetch cifar10 --from FILE` puts it)."""
    from torchvision.datasets import CIFAR10

    from .cifar10 import open_cifar10

    roots = _idx_roots(cfg)
    hint = (f"run 'hpc-ncsn fetch cifar10 --from cifar-10-python.tar.gz' (the python version, from {CIFAR10_URL}), "
            "or set data.download=true on a machine with internet access")
    try:
        dataset = open_cifar10(roots, train)
    except RuntimeError as error:  # a folder that fails torchvision's checks: download again, or say so
        if not cfg.download:
            raise DataUnavailableError(f"CIFAR-10 under {' or '.join(map(str, roots))} is incomplete ({error}); "
                                       f"{hint}") from None
        dataset = None
    try:
        if dataset is None and cfg.download:
            dataset = CIFAR10(root=str(roots[0]), train=train, download=True)
    except (RuntimeError, OSError) as error:
        raise DataUnavailableError(f"CIFAR-10 download to {roots[0]} failed ({error}); {hint}") from None
    if dataset is None:
        looked = " or ".join(str(root / "cifar-10-batches-py") for root in roots)
        raise DataUnavailableError(f"CIFAR-10 not found under {looked}; {hint}")
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()
    return resize_uint8(images, cfg.image_size), torch.as_tensor(dataset.targets)


@dataclass(frozen=True)
class IdxSet:
    """An IDX data set: torchvision's class, its folder name, and the official files' content."""

    torchvision_class: str
    counts: dict  # split → number of images
    # sha256 of each decompressed IDX file, measured on Debian's dataset-fashion-mnist (0.0~git20200523). A .gz
    # is also accepted when its md5 is the one torchvision's class lists (the upstream .gz files).
    sha256: dict
    debian: str | None  # the Debian package that holds the files, and where


MAX_IDX_BYTES = 64 << 20  # an IDX file, decompressed (MNIST's largest is 45 MiB): a larger one is refused
IDX_SETS = {
    "fashion_mnist": IdxSet("FashionMNIST", {"train": 60000, "test": 10000}, {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
        "apt-get install dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist)"),
    "mnist": IdxSet("MNIST", {"train": 60000, "test": 10000}, {}, None),
}


def _idx_roots(cfg: DataConfig) -> list[Path]:
    return [Path(cfg.data_root), cache_dir() / "data"]


def _fetch_hint(name: str) -> str:
    spec = IDX_SETS[name]
    source = f"a folder with the four IDX .gz files ({spec.debian})" if spec.debian else \
        "a folder with the four IDX .gz files"
    return (f"run 'hpc-ncsn fetch {name} --from DIR' with DIR {source}, or set data.download=true on a machine "
            "with internet access")


def _load_idx(cfg: DataConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST / Fashion-MNIST through torchvision: uint8 (N, C, S, S), 28×28 zero-padded (or resized below 28)."""
    import torchvision.datasets

    spec = IDX_SETS[cfg.name]
    cls = getattr(torchvision.datasets, spec.torchvision_class)
    roots = _idx_roots(cfg)
    dataset = None
    for root in roots:
        try:
            dataset = cls(root=str(root), train=train, download=False)
            break
        except RuntimeError:  # torchvision: "Dataset not found"
            continue
    if dataset is None and cfg.download:
        try:
            dataset = cls(root=str(roots[0]), train=train, download=True)
        except (RuntimeError, OSError) as error:
            raise DataUnavailableError(f"{cfg.name} download to {roots[0]} failed ({error}); "
                                       f"{_fetch_hint(cfg.name)}") from None
    if dataset is None:
        looked = " or ".join(str(root / cls.__name__ / "raw") for root in roots)
        raise DataUnavailableError(f"{cfg.name} not found under {looked}; {_fetch_hint(cfg.name)}")
    images = dataset.data.unsqueeze(1)
    size = cfg.image_size
    if size >= images.shape[-1]:
        before = (size - images.shape[-1]) // 2
        images = F.pad(images, (before, size - images.shape[-1] - before) * 2)
    else:
        images = resize_uint8(images, size)
    return _match_channels(images.contiguous(), cfg.channels), dataset.targets.clone()


def _load_folder(cfg: DataConfig, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Your own images (data.path: a folder or a .zip; the rule: hpc_ncsn.image_folder), with label 0; no test
    split (training leaves out the held-out rows, as for digits)."""
    from .image_folder import read_image_folder

    if not train:
        raise ConfigError("data.name=folder has no test split (its held-out rows are kept out of training); use "
                          "evaluate.reference=train (--reference train)")
    images = read_image_folder(cfg.path, cfg.image_size, cfg.channels, cfg.fit)
    return images, torch.zeros(len(images), dtype=torch.int64)


DATASETS = {"digits": _load_digits, "mnist": _load_idx, "fashion_mnist": _load_idx, "cifar10": _load_cifar10,
            "folder": _load_folder}
SPLITS = ("train", "test")
# Image data sets with a train split only: training leaves out a held-out part of it (hpc_ncsn.heldout).
WITHOUT_TEST_SPLIT = frozenset({"digits", "folder"})
HELDOUT_SEED = 20190710  # one fixed seed, not the run's: every network sees the same held-out examples and noise
HOLDOUT_FRACTION = 0.1


def holdout_split(num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, held-out rows) of a train-only data set: a fixed permutation (`HELDOUT_SEED`), its
    first ⌈HOLDOUT_FRACTION·N⌉ rows held out; both sorted."""
    order = torch.randperm(num_items, generator=rng.generator(HELDOUT_SEED, rng.HELDOUT_NOISE, 0))
    held = math.ceil(HOLDOUT_FRACTION * num_items)
    return order[held:].sort().values, order[:held].sort().values


def training_rows(config: Config, num_items: int) -> torch.Tensor | None:
    """The rows of the training set that training may read; None when it reads all (the data set has a test
    split, or is the toy)."""
    return holdout_split(num_items)[0] if config.data.name in WITHOUT_TEST_SPLIT else None


def load_dataset(cfg: DataConfig, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images (N, C, H, W) at cfg.image_size and cfg.channels, int64 class labels) of one split."""
    if cfg.name not in DATASETS:
        raise ConfigError(f"data.name={cfg.name!r} is not an image data set; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split {split!r}; choose one of {', '.join(SPLITS)}")
    images, labels = DATASETS[cfg.name](cfg, split == "train")
    return images, labels.long()


def load_images(cfg: DataConfig, split: str = "train") -> torch.Tensor:
    """The configured image data set as uint8 (N, C, H, W) at cfg.image_size and cfg.channels."""
    return load_dataset(cfg, split)[0]


# Installing IDX files from local copies (hpc-ncsn fetch) -------------------------------------

def _idx_header(data: bytes) -> tuple[int, ...]:
    """The dimensions an IDX file declares (magic 0x0000 08 ndim), checked against its length."""
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise ValueError("not an IDX file of unsigned bytes")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != 4 + 4 * ndim + math.prod(dims):
        raise ValueError(f"declares {dims} but holds {len(data) - 4 - 4 * ndim} bytes (truncated?)")
    return dims


def install_idx(name: str, source: Path, root: Path, dry_run: bool = False) -> list[str]:
    """Check the four IDX files of `name` in `source` (a folder; .gz or not) and place them, decompressed, where
    torchvision's class reads them (`root/<Class>/raw/`). Returns what was (or would be) done, a line per file."""
    import hashlib

    import torchvision.datasets

    spec = IDX_SETS[name]
    md5 = {Path(file).name: digest for file, digest in getattr(torchvision.datasets, spec.torchvision_class).resources}
    raw = Path(root) / spec.torchvision_class / "raw"
    done = []
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        found = [path for path in (Path(source) / f"{stem}.gz", Path(source) / stem) if path.is_file()]
        if not found:
            raise DataUnavailableError(f"{source} has no {stem}.gz (or {stem}); {_fetch_hint(name)}")
        fix = _fetch_hint(name)
        packed = read_bounded(found[0], MAX_IDX_BYTES, fix)
        data = gunzip_bounded(found[0], MAX_IDX_BYTES, fix) if found[0].suffix == ".gz" else packed
        digest = hashlib.sha256(data).hexdigest()
        official = (found[0].suffix == ".gz" and hashlib.md5(packed).hexdigest() == md5.get(found[0].name)) or \
            spec.sha256.get(stem) == digest
        try:
            dims = _idx_header(data)
        except ValueError as error:
            raise DataUnavailableError(f"{found[0]}: {error}; {_fetch_hint(name)}") from None
        split = "train" if stem.startswith("train") else "test"
        if dims[0] != spec.counts[split] or ("images" in stem and dims[1:] != (28, 28)):
            raise DataUnavailableError(f"{found[0]}: holds {dims}, the official {name} {split} split is "
                                       f"{spec.counts[split]} × 28 × 28; {_fetch_hint(name)}")
        other = [other for other, known in IDX_SETS.items() if other != name and digest in known.sha256.values()]
        if other:
            raise DataUnavailableError(f"{found[0]}: this is the {other[0]} file, not {name}'s; pass the {name} files "
                                       f"or run 'hpc-ncsn fetch {other[0]} --from {source}'")
        if not official and spec.sha256:
            raise DataUnavailableError(f"{found[0]}: sha256 {digest} (decompressed) is not the official {name} "
                                       f"file's {spec.sha256[stem]}; {_fetch_hint(name)}")
        note = "" if official else f" (sha256 {digest}: structure checked, no official hash to compare)"
        done.append(f"{found[0]} → {raw / stem}{note}")
        if not dry_run:
            raw.mkdir(parents=True, exist_ok=True)
            with atomic_path(raw / stem) as tmp:
                tmp.write_bytes(data)
    return done


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


def load_training_data(config: Config) -> torch.Tensor:
    """The training set: uint8 images (N, C, H, W), or float32 toy points (N, 2). The one place the toy data set
    is drawn: `data.toy_size` points of the mixture, with the run's seed (train.seed)."""
    data = config.data
    if data.name == "toy2d":
        mixture = toy_mixture(data.toy_means, data.toy_weights, data.toy_std)
        return mixture.sample(data.toy_size, torch.Generator().manual_seed(config.train.seed)).float()
    images = load_images(data)
    rows = training_rows(config, images.shape[0])  # a data set without a test split loses its held-out rows here
    return images if rows is None else images[rows]


def dataset_points(config: Config) -> torch.Tensor:
    """The training set in the model's space (toy points as they are, images on [0, 1]): what noise planning
    measures distances in (`hpc-ncsn plan --config`)."""
    points = load_training_data(config)
    return points if config.data.name == "toy2d" else to_model_scale(points)


def fetch_dataset(name: str, root: Path) -> list[str]:
    """Download both splits of an IDX data set (fashion_mnist, mnist) with torchvision into `root`; one line per
    split saying what is there. (`install_idx` places a local copy instead.)"""
    lines = []
    for split in ("train", "test"):
        images, _ = load_dataset(DataConfig(name=name, data_root=str(root), download=True, image_size=28), split)
        lines.append(f"{name} {split}: {len(images)} images in {root}")
    return lines
