"""Statistics people exchange, and any two inputs compared in one call.

An input is a sample folder (`hpc-ncsn generate`'s shards), a folder of image files, a statistics
.npz, or a split of the config's data set (`data:train`, `data:test`). The .npz is the one
pytorch-fid (`--save-stats`) and NVlabs/edm (`fid.py ref`) write and read: `mu` (D,) and `sigma`
(D, D), float64, nothing else needed. `write_statistics` writes any input's μ/Σ that way;
`compare(a, b)` gives the FID of a against b, plus KID, IS and precision … coverage where a's and
b's feature vectors exist (a .npz holds only μ/Σ, so against one FID alone is computed and the
report says why the rest is missing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig, EvaluateConfig
from ..distributed import barrier, is_main_process, process_group
from ..errors import UserError
from ..files import atomic_write, file_sha256
from ..files import cache_dir as default_cache_dir
from ..samples.shards import MANIFEST
from .evaluator import (BadStatistics, Scoring, environment, features_of, load_stats_npz, reference_statistics,
                        save_stats_npz, score_pieces, source_pieces)
from .extractors import load_extractor
from .scores import frechet_distance, kernel_inception_distance

__all__ = ["DATA_PREFIX", "Input", "compare", "read_input", "write_statistics"]

DATA_PREFIX = "data:"  # data:train, data:test: a split of the config's data set
KINDS = ("samples", "images", "npz", "data")


@dataclass(frozen=True)
class Input:
    """One side of a comparison: what the user wrote, and which kind of thing it is."""

    spec: str
    kind: str  # one of KINDS

    @property
    def path(self) -> Path:
        return Path(self.spec)

    @property
    def has_images(self) -> bool:
        return self.kind in ("samples", "images")


def read_input(spec: str | Path) -> Input:
    """The kind of `spec`: data:SPLIT, an .npz file, a folder with a manifest (samples) or without (images)."""
    spec = str(spec)
    if spec.startswith(DATA_PREFIX):
        if spec[len(DATA_PREFIX):] not in ("train", "test"):
            raise UserError(f"{spec}: a data set input is data:train or data:test")
        return Input(spec, "data")
    path = Path(spec)
    if path.is_dir():
        return Input(spec, "samples" if (path / MANIFEST).is_file() else "images")
    if path.is_file() and path.suffix == ".npz":
        return Input(spec, "npz")
    what = "is not an .npz file" if path.exists() else "does not exist"
    raise UserError(f"{spec} {what}; give a sample folder, a folder of images, a statistics .npz (mu, sigma) or "
                    "data:train / data:test")


def _statistics(item: Input, data: DataConfig, settings: EvaluateConfig, cache_dir: Path, extractor=None,
                dim: int | None = None, other: str = "") -> dict:
    """μ, Σ (float64 numpy), n, the feature vectors where they exist (rank 0; None for an .npz) and a key naming
    the input's content, computed by every rank together; a folder's features must be `dim`-d (`other`'s)."""
    if item.kind == "npz":
        mu, sigma = load_stats_npz(item.path, label=item.spec)
        return {"mu": mu, "sigma": sigma, "features": None, "n": None, "split": None, "npz": item.spec,
                "key": file_sha256(item.path), "source": item.spec}
    if item.kind == "data":
        split = item.spec[len(DATA_PREFIX):]
        found = reference_statistics(data, extractor, cache_dir, settings.batch_size, split, settings.reference_size)
        mu, sigma = found["stats"].to_numpy()
        return {"mu": mu, "sigma": sigma, "features": found["features"], "n": found["stats"].n, "split": split,
                "key": found["key"], "source": item.spec}
    rank, world, _ = process_group()
    pieces, count, _ = source_pieces(item.path, data, item.kind == "images", rank, world)
    stats, features, _ = features_of(pieces, count, extractor, settings, dim, other)
    mu, sigma = stats.to_numpy()
    manifest = item.path / MANIFEST
    return {"mu": mu, "sigma": sigma, "features": features, "n": stats.n, "split": None, "source": item.spec,
            "key": file_sha256(manifest) if manifest.is_file() else None}


def _extractor(items: list[Input], data: DataConfig, settings: EvaluateConfig):
    """The feature extractor, loaded once, where any input needs one (two .npz files need none)."""
    if all(item.kind == "npz" for item in items):
        return None
    job = Scoring(data, settings, Path("."))
    return load_extractor(job.extractor_name, job.weights, process_group()[2])


def write_statistics(source: str | Path, out: Path, data: DataConfig, settings: EvaluateConfig,
                     cache_dir: Path | None = None) -> dict | None:
    """Write `source`'s μ/Σ to `out` as pytorch-fid's and EDM's .npz; rank 0 returns what was written."""
    item = read_input(source)
    found = _statistics(item, data, settings, Path(cache_dir or default_cache_dir() / "reference"),
                        _extractor([item], data, settings))
    record = None
    if is_main_process():
        save_stats_npz(out, found["mu"], found["sigma"])
        record = {"source": item.spec, "kind": item.kind, "out": str(out), "n": found["n"],
                  "dim": int(found["mu"].shape[0]), "extractor": None if item.kind == "npz" else
                  Scoring(data, settings, Path(".")).extractor_name}
    barrier()
    return record


def compare(a: str | Path, b: str | Path, data: DataConfig, settings: EvaluateConfig, *, out: Path | None = None,
            cache_dir: Path | None = None) -> dict | None:
    """FID (and what else the features allow) of `a` against `b`; rank 0 returns (and writes to `out`) the report.

    With images on a's side the report is `evaluate`'s (b in place of the data set: KID, precision … coverage
    and FID∞ need b's vectors, IS a's classifier); otherwise FID, and KID where both sides have vectors."""
    first, second = read_input(a), read_input(b)
    cache = Path(cache_dir or default_cache_dir() / "reference")
    extractor = _extractor([first, second], data, settings)
    dim = None
    if first.kind == "npz":  # the folder's features are checked against the file's dimension as they come
        dim = len(load_stats_npz(first.path, label=first.spec)[0])
    reference = _statistics(second, data, settings, cache, extractor, dim, first.spec)
    if first.has_images:
        rank, world, _ = process_group()
        job = Scoring(data, settings, cache, out)
        return score_pieces(first.path, *source_pieces(first.path, data, first.kind == "images", rank, world), job,
                            reference=reference)
    ours = _statistics(first, data, settings, cache, extractor)
    report = _statistics_report(first, second, ours, reference, settings) if is_main_process() else None
    if report is not None and out is not None:
        atomic_write(out, json.dumps(report, indent=2) + "\n")
    barrier()
    return report


def _statistics_report(first: Input, second: Input, ours: dict, reference: dict, settings: EvaluateConfig) -> dict:
    """FID of two sides' μ/Σ (either may be an .npz), KID where both have feature vectors."""
    if len(ours["mu"]) != len(reference["mu"]):
        raise BadStatistics(f"{first.spec} holds {len(ours['mu'])}-d statistics, {second.spec} "
                            f"{len(reference['mu'])}-d; compare statistics of the same extractor")
    both = ours["features"] is not None and reference["features"] is not None
    kid_mean = kid_std = None
    if both:
        kid_mean, kid_std = kernel_inception_distance(ours["features"].double().numpy(),
                                                      reference["features"].double().numpy(),
                                                      subsets=settings.kid_subsets, subset_size=settings.kid_subset_size)
    return {"fid": frechet_distance(ours["mu"], ours["sigma"], reference["mu"], reference["sigma"]),
            "kid_mean": kid_mean, "kid_std": kid_std,
            "kid_unavailable": None if both else "an .npz holds μ/Σ only; KID needs both sides' feature vectors",
            "n": ours["n"], "n_reference": reference["n"], "source": first.spec, "source_kind": first.kind,
            "source_key": ours["key"], "reference_source": second.spec, "reference_kind": second.kind,
            "reference_key": reference["key"], "environment": environment(process_group()[1])}
