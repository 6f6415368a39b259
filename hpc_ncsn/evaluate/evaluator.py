"""The evaluator: features of sample shards (or image files) → FID, KID, IS, precision/recall/density/coverage
and FID∞ against cached reference statistics.

`evaluate(source, data, settings)` takes the config's data and evaluate sections as they
are, plus what varies per call (report file, reference .npz, statistics to save, cache).
Each process reads the shards k with k % world == rank (image files: chunks, the same
way), extracts features with a torch-fidelity feature extractor, and accumulates
(n, Σx, Σxxᵀ) in float64; the
sums are all-reduced, so FID does not depend on the number of processes or the
order of the shards (up to float64 summation order). KID and IS need the
individual vectors: they are gathered on rank 0, which also computes precision,
recall, density and coverage (against a seeded subset of the reference's cached
feature vectors) and FID∞ from them (hpc_ncsn.evaluate.fidelity; no second
network). Every number is reported with its N, and a warning when N is below the
standard 50,000.

Reference statistics of a data set are computed once per (data, extractor,
weights) and cached under a key hashing all three.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..config import Config, DataConfig, EvaluateConfig, config_from_dict, load_config
from ..distributed import barrier, gather_to_main, is_main_process, process_group
from ..errors import UserError
from ..files import atomic_path, atomic_write, file_sha256, require_writable
from ..files import cache_dir as default_cache_dir
from ..pretrained import pretrained_config
from ..progress import showing_progress
from ..samples.shards import MANIFEST, read_manifest, read_shard
from ..samples.validation import verify_folder
from ..untrusted import BadArchive, load_npz
from .extractors import Extractor, extract_features, extractor_for, load_extractor
from .fidelity import fidelity_entries
from .images import image_pieces
from .scores import FeatureStats, frechet_distance, inception_score, kernel_inception_distance, small_sample_warning

__all__ = ["BadStatistics", "Scoring", "config_for", "environment", "evaluate", "features_of", "load_stats_npz",
           "reference_statistics", "reference_subset", "save_stats_npz", "score_pieces", "source_pieces"]


def _data_key(images: torch.Tensor, extractor: Extractor, split: str) -> str:
    digest = hashlib.sha256()
    digest.update(images.contiguous().numpy().tobytes())
    digest.update(json.dumps([list(images.shape), extractor.name, extractor.feature_layer,
                              extractor.weights_digest] + ([] if split == "train" else [split])).encode())
    return digest.hexdigest()


def reference_subset(total: int, size: int, seed: int = 0) -> torch.Tensor:
    """Indices of the `size` reference images drawn (without replacement, by `seed`) from `total`; all if size=0."""
    if size == 0 or size >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:size].sort().values


def reference_statistics(data_cfg: DataConfig, extractor: Extractor, cache_dir: Path, batch_size: int = 200,
                         split: str = "train", size: int = 0) -> dict:
    """Features/statistics of a split of the data set (all of it, or `size` images drawn by a fixed seed),
    cached by a hash of the images, extractor and weights.

    Returns {'stats': FeatureStats, 'features': float32 (N, D), 'key', 'data'}; computed on rank 0
    when missing (others wait) and written atomically.
    """
    from ..data import load_images

    images = load_images(data_cfg, split)
    images = images[reference_subset(len(images), size)]
    key = _data_key(images, extractor, split)
    path = Path(cache_dir) / f"reference-{extractor.name}-{key[:20]}.pt"
    if is_main_process() and not path.exists():
        with showing_progress(len(images), f"reference statistics ({split})", "images") as bar:
            features, _ = extract_features(extractor, images, batch_size, advance=bar.update)
        features = features.cpu()
        stats = FeatureStats.empty(features.shape[1])
        stats.update(features)
        with atomic_path(path) as tmp:
            torch.save({"key": key, "stats": stats.to_dict(), "features": features.float(),
                        "data": asdict(data_cfg), "split": split}, tmp)
    barrier()
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {"stats": FeatureStats.from_dict(payload["stats"]), "features": payload["features"], "key": key,
            "path": path, "split": split}


class BadStatistics(UserError, ValueError):
    """Reference statistics that cannot be compared with these samples; the message names the file and the fix."""


def save_stats_npz(path: Path, mu, sigma) -> Path:
    """μ and Σ as `mu`, `sigma` float64 in an .npz (the pytorch-fid / EDM statistics format), written atomically."""
    import numpy as np

    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))
    return Path(path)


def load_stats_npz(path: Path, label: str = "--ref") -> tuple:
    """(μ, Σ) from an .npz with `mu` (D,) and `sigma` (D, D), read without unpickling anything; a UserError names
    the file (as `label` gave it) and what is wrong."""
    import numpy as np

    fix = "write one with hpc-ncsn stats, pytorch-fid --save-stats or EDM's fid.py ref"
    try:
        arrays = load_npz(path, ("mu", "sigma"), fix=fix)  # headers checked first: no pickle, at most NPZ_MAX_BYTES
    except BadArchive as error:
        raise BadStatistics(f"{label} {path}: not a statistics .npz with 'mu' and 'sigma' ({error.detail}); {fix}") \
            from None
    mu, sigma = np.asarray(arrays["mu"], np.float64), np.asarray(arrays["sigma"], np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]) or not (np.isfinite(mu).all()
                                                                          and np.isfinite(sigma).all()):
        raise BadStatistics(f"{label} {path}: mu {mu.shape} and sigma {sigma.shape} must be (D,) and (D, D) and "
                            "finite")
    return mu, sigma


def _read_ahead(infos: list):
    """(info, read_shard(info.path)) in order; the next shard is read in a thread while the caller uses this one."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = reader.submit(read_shard, infos[0].path) if infos else None
        for position, info in enumerate(infos):
            current = upcoming.result()
            upcoming = reader.submit(read_shard, infos[position + 1].path) if position + 1 < len(infos) else None
            yield info, current


@dataclass(frozen=True)
class Scoring:
    """What scoring a set of images needs besides the images: the data set (the reference and the image shape),
    the config's evaluate section, and the per-call choices (where to cache, report and save statistics)."""

    data: DataConfig
    settings: EvaluateConfig
    cache_dir: Path
    out: Path | None = None  # the report JSON
    reference_npz: Path | None = None  # compare with this μ/Σ instead of the data set (FID only)
    save_stats: Path | None = None  # also write the samples' μ/Σ here

    @property
    def extractor_name(self) -> str:
        return extractor_for(self.data.name, self.settings.extractor)

    @property
    def weights(self) -> Path | None:
        return Path(self.settings.weights) if self.settings.weights else None


def config_for(source: Path, *, images: bool = False, config: Path | None = None) -> Config:
    """The config whose data set is the reference and whose evaluate section applies to `source`: the file
    `config` if given; else, for a shard folder, its run's config.yaml (the manifest names the run; an exported
    model's config.json for samples of `generate --model`) or, for real
    images (hpc_ncsn.samples.real), the data section its manifest records; for an image folder, the defaults."""
    if images or config is not None:
        return load_config(config)
    from ..samples.generate import run_folder

    meta = read_manifest(source)["meta"]
    if "model" in meta:  # drawn from an exported model (generate --model): its config.json
        return pretrained_config(run_folder(source, meta))
    if "run" not in meta:
        return config_from_dict({"data": meta["data"]})
    return load_config(run_folder(source, meta) / "config.yaml")


def evaluate(source: Path, data: DataConfig, settings: EvaluateConfig, *, images: bool = False,
             out: Path | None = None, reference_npz: Path | None = None, save_stats: Path | None = None,
             cache_dir: Path | None = None) -> dict | None:
    """FID, KID and IS of the samples in `source` against a split of the data set (`settings.reference`,
    the training set by default); rank 0 returns (and writes to `out`) the report. Every caller (the CLI,
    a sweep's cells, the benchmarks) passes its config's data and evaluate sections as they are.

    `source` is a folder of sample shards: before a single image is used, it is verified
    against its manifest (hpc_ncsn.samples.validation.verify_folder: the shard list, no
    stray files, file and image-data checksums, one origin, the reference data's image
    shape); any problem is a ShardError naming the file. With `images`, it is a folder of
    image files instead (hpc_ncsn.evaluate.images: every image 8-bit gray or RGB of the data
    set's size; one that is not is a BadImages error naming it). `reference_npz`: compare
    with the μ/Σ of an .npz instead of the data set (FID only: KID needs the reference's
    feature vectors); `save_stats`: write the samples' μ/Σ there; `cache_dir`: where
    reference statistics are cached (default: the shared cache's reference/).
    """
    rank, world, _ = process_group()
    pieces = source_pieces(source, data, images, rank, world)  # the source checked first: a missing one is named
    for path, what, flag in ((out, "the report", "--out"), (save_stats, "the statistics", "--save-stats")):
        if path is not None:  # before anything is computed (a read-only sample folder: the default report's)
            require_writable(path, what, f"write it elsewhere (hpc-ncsn evaluate {flag} FILE)")
    job = Scoring(data, settings, Path(cache_dir) if cache_dir else default_cache_dir() / "reference", out,
                  reference_npz, save_stats)
    return score_pieces(source, *pieces, job)


def source_pieces(source: Path, data: DataConfig, images: bool, rank: int, world: int):
    """(pieces, count, meta) of this rank's part of `source`: a sample folder verified against its manifest (or,
    with `images`, a folder of image files checked against the data set's shape); pieces are (first index, uint8
    NHWC images) in order, count their images, meta the manifest's record ({} for image files)."""
    if images:
        return image_pieces(source, data, rank, world)
    manifest, infos = verify_folder(source, image_shape=(data.image_size, data.image_size, data.channels))
    pieces = ((info.start, shard_images) for info, (shard_images, _, _) in _read_ahead(infos[rank::world]))
    return pieces, sum(info.stop - info.start for info in infos[rank::world]), manifest["meta"]


def features_of(pieces, count: int, extractor: Extractor, settings: EvaluateConfig, dim: int | None = None,
                mismatch: str = "") -> tuple:
    """(statistics summed over ranks, then rank 0's features and logits in sample order, else None, None) of every
    rank's `pieces`. `dim`: the dimension the features must have (`mismatch` says what fixes a wrong one)."""
    _, _, device = process_group()
    stats, mine = None, []
    # Accumulate this rank's images in float64 on its device, then sum over ranks. (Shards: the next one is
    # read from disk while the extractor works on this one.)
    with showing_progress(count, "evaluate", "images") as bar:
        for start, images in pieces:
            features, logits = extract_features(extractor, images, settings.batch_size, layout="NHWC",
                                                advance=bar.update)
            if dim is not None and features.shape[1] != dim:
                raise BadStatistics(f"{mismatch}: its statistics are {dim}-d, {extractor.name}'s features are "
                                    f"{features.shape[1]}-d; use the extractor the file was made with")
            stats = stats or FeatureStats.empty(features.shape[1], device)
            stats.update(features)
            mine.append((start, features.float().cpu(), logits.cpu()))
    if stats is None:  # this rank had no images: zero sums of the features' dimension (one blank image's)
        stats = FeatureStats.empty(dim or extract_features(extractor, torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
                                                           )[0].shape[1], device)
    stats.all_reduce()
    # KID and IS use the vectors themselves, in sample order so that splits do not depend on the world size.
    gathered = gather_to_main(mine)
    if gathered is None:
        return stats, None, None
    pieces = sorted((piece for rank_pieces in gathered for piece in rank_pieces), key=lambda piece: piece[0])
    return stats, torch.cat([piece[1] for piece in pieces]), torch.cat([piece[2] for piece in pieces])


def score_pieces(source: Path, pieces, count: int, meta: dict, job: Scoring, reference: dict | None = None
                 ) -> dict | None:
    """The scores of this rank's `pieces` ((first index, uint8 NHWC images) in order, `count` images) and every
    other rank's, against the reference (given: {mu, sigma, features or None, n, split, key}; else the .npz or
    the data set of `job`); rank 0 returns and writes the report."""
    rank, world, device = process_group()
    settings, reference_npz = job.settings, job.reference_npz
    extractor = load_extractor(job.extractor_name, job.weights, device)  # weights: the shared cache's
    if reference is None and reference_npz is not None:
        mu_ref, sigma_ref = load_stats_npz(reference_npz)
        reference = {"mu": mu_ref, "sigma": sigma_ref, "features": None, "n": None, "split": None,
                     "key": file_sha256(Path(reference_npz)), "npz": str(reference_npz)}
    elif reference is None:
        reference = reference_statistics(job.data, extractor, job.cache_dir, settings.batch_size,
                                         settings.reference, settings.reference_size)
        reference["mu"], reference["sigma"] = reference["stats"].to_numpy()
        reference["n"] = reference["stats"].n
    stats, features, logits = features_of(pieces, count, extractor, settings, len(reference["mu"]),
                                          f"--ref {reference_npz}" if reference_npz else str(reference.get("source")))
    report = _report(features, logits, stats, reference, extractor, meta, source, settings, device) \
        if rank == 0 else None
    if report is not None:  # what the number can be traced to: the exact shard bytes, and what computed it
        manifest = Path(source) / MANIFEST
        report["manifest_sha256"] = file_sha256(manifest) if manifest.is_file() else None
        report["environment"] = environment(world)
        if job.save_stats is not None:
            save_stats_npz(job.save_stats, *stats.to_numpy())
    if report is not None and job.out is not None:
        atomic_write(job.out, json.dumps(report, indent=2) + "\n")
    # All ranks leave together: one that tore down its process group while rank 0 still computed aborted at exit
    # ('terminate called without an active exception') about 1 run in 12 on a cold cache under srun.
    barrier()
    return report


def _report(features, logits, stats, reference, extractor, meta, samples, settings: EvaluateConfig,
            device) -> dict:
    """Rank 0: FID from the all-reduced statistics; KID, IS, precision … coverage and FID∞ from the gathered
    vectors in sample order."""
    mu, sigma = stats.to_numpy()
    if reference["features"] is not None:
        kid_mean, kid_std = kernel_inception_distance(features.double().numpy(),
                                                      reference["features"].double().numpy(),
                                                      subsets=settings.kid_subsets,
                                                      subset_size=settings.kid_subset_size, device=device)
    else:
        kid_mean = kid_std = None
    if extractor.classifier:
        is_mean, is_std = inception_score(logits, splits=settings.is_splits)
    else:
        is_mean = is_std = None
    report = {
        "fid": frechet_distance(mu, sigma, reference["mu"], reference["sigma"]),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "is_mean": is_mean,
        "is_std": is_std,
        "n": stats.n,
        "n_reference": reference["n"],
        "reference_split": reference["split"],
        "reference_npz": reference.get("npz"),
        "reference_source": reference.get("source"),
        "kid_unavailable": None if reference["features"] is not None else (
            "the reference is μ/Σ from an .npz; KID needs its feature vectors: evaluate against the data set"),
        "extractor": extractor.name,
        "feature_layer": extractor.feature_layer,
        "weights_sha256": extractor.weights_digest,
        "weights_source": extractor.weights_source,
        "weights_source_sha256": extractor.weights_source_sha256,
        "is_unavailable": None if extractor.classifier else (
            f"the Inception weights ({extractor.weights_source}) have no classifier; IS needs the 1008-class "
            "logits: pass torch-fidelity's .pth or NVIDIA's inception-2015-12-05.pt with its classifier"),
        "reference_key": reference["key"],
        "samples": str(samples),
        "sampler": meta.get("sampler"),
        "checkpoint_step": meta.get("checkpoint_step"),
        "warning": small_sample_warning(stats.n),
    }
    report.update(fidelity_entries(features, reference["features"], reference["mu"], reference["sigma"], settings,
                                   device))
    return report



def environment(world: int = 1) -> dict:
    """What a result was computed with: processes, threads per process, library versions, machine.

    Float rounding of CPU kernels depends on these: the same code, data and seed give the
    same numbers to the last digit only in the same environment (docs/trust.md, Reproducibility).
    """
    import platform

    import numpy as np

    from .. import __version__

    return {"processes": world, "threads_per_process": torch.get_num_threads(), "hpc_ncsn": __version__,
            "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "device": str(torch.cuda.get_device_name()) if torch.cuda.is_available()
            else "cpu"}
