"""The evaluator: features of sample shards → FID, KID, IS against cached reference statistics.

Each process reads the shards k with k % world == rank, extracts features with a
torch-fidelity feature extractor, and accumulates (n, Σx, Σxxᵀ) in float64; the
sums are all-reduced, so FID does not depend on the number of processes or the
order of the shards (up to float64 summation order). KID and IS need the
individual vectors: they are gathered on rank 0. Every number is reported with
its N, and a warning when N is below the standard 50,000.

Reference statistics of a data set are computed once per (data, extractor,
weights) and cached under a key hashing all three.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .distributed import barrier, gather_to_main, process_group
from .features import DIGITS_EXTRACTOR, file_digest, register_extractors
from .fid import (
    FeatureStats,
    check_images,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
    small_sample_warning,
)
from .shards import check_coverage, plan_shards, read_manifest, read_shard, validate_shards

__all__ = ["DEFAULT_EXTRACTOR", "EXTRACTORS", "Extractor", "evaluate", "extract_features", "extractor_for", "load_extractor",
           "reference_statistics"]

INCEPTION = "inception-v3-compat"
EXTRACTORS = (INCEPTION, DIGITS_EXTRACTOR)
DEFAULT_EXTRACTOR = {"digits": DIGITS_EXTRACTOR, "cifar10": INCEPTION}


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
    weights_digest: str
    device: torch.device


def load_extractor(name: str, weights_path: Path | None, device: torch.device) -> Extractor:
    """Build a registered extractor; `weights_path` points at local weights (needed offline for Inception)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    register_extractors()
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {', '.join(FEATURE_EXTRACTORS_REGISTRY)}")
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    feature_layer = cls.get_default_feature_layer_for_metric("fid")
    logits_layer = cls.get_default_feature_layer_for_metric("isc")
    if weights_path is not None and not Path(weights_path).is_file():
        raise FileNotFoundError(f"feature extractor weights {weights_path} not found; pass an existing file "
                                "(for Inception: torch-fidelity's pt_inception-2015-12-05 weights)")
    if name == INCEPTION and weights_path is None and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise FileNotFoundError("Inception weights would be downloaded but the machine is offline; "
                                "pass --weights PATH to a local copy")
    module = cls(name, [feature_layer, logits_layer], feature_extractor_weights_path=str(weights_path)
                 if weights_path else None).to(device).eval()
    if weights_path is not None:
        digest = file_digest(Path(weights_path))
    elif name == DIGITS_EXTRACTOR:
        from .features import digits_classifier_weights

        digest = file_digest(digits_classifier_weights())
    else:
        digest = "torch-fidelity-default-weights"
    return Extractor(name, module, feature_layer, logits_layer, digest, device)


@torch.no_grad()
def extract_features(extractor: Extractor, images: torch.Tensor | np.ndarray, batch_size: int = 200,
                     layout: str = "NCHW") -> tuple[torch.Tensor, torch.Tensor]:
    """(features, logits) as float64 tensors on the extractor's device, for uint8 images.

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
    return torch.cat(features), torch.cat(logits)


def _data_key(images: torch.Tensor, extractor: Extractor) -> str:
    digest = hashlib.sha256()
    digest.update(images.contiguous().numpy().tobytes())
    digest.update(json.dumps([list(images.shape), extractor.name, extractor.feature_layer,
                              extractor.weights_digest]).encode())
    return digest.hexdigest()


def reference_statistics(data_cfg: DataConfig, extractor: Extractor, cache_dir: Path, batch_size: int = 200) -> dict:
    """Features/statistics of the training set, cached by a hash of the data, extractor and weights.

    Returns {'stats': FeatureStats, 'features': float32 (N, D), 'key', 'data'}; computed on rank 0
    when missing (others wait) and written atomically.
    """
    from .data import load_images

    images = load_images(data_cfg)
    key = _data_key(images, extractor)
    path = Path(cache_dir) / f"reference-{extractor.name}-{key[:20]}.pt"
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if rank == 0 and not path.exists():
        features, _ = extract_features(extractor, images, batch_size)
        features = features.cpu()
        stats = FeatureStats.empty(features.shape[1])
        stats.update(features)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        torch.save({"key": key, "stats": stats.to_dict(), "features": features.float(),
                    "data": asdict(data_cfg)}, tmp)
        os.replace(tmp, path)
    barrier()
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {"stats": FeatureStats.from_dict(payload["stats"]), "features": payload["features"], "key": key,
            "path": path}


def _read_ahead(infos: list):
    """(info, read_shard(info.path)) in order; the next shard is read in a thread while the caller uses this one."""
    with ThreadPoolExecutor(max_workers=1) as reader:
        upcoming = reader.submit(read_shard, infos[0].path) if infos else None
        for position, info in enumerate(infos):
            current = upcoming.result()
            upcoming = reader.submit(read_shard, infos[position + 1].path) if position + 1 < len(infos) else None
            yield info, current


def evaluate(samples: Path, data_cfg: DataConfig, *, extractor_name: str, weights_path: Path | None = None,
             cache_dir: Path, batch_size: int = 200, kid_subsets: int = 100, kid_subset_size: int = 1000,
             is_splits: int = 10, out: Path | None = None) -> dict | None:
    """FID, KID and IS of the shards in `samples` against the training set; rank 0 returns (and writes) the report."""
    rank, world, device = process_group()
    extractor = load_extractor(extractor_name, weights_path, device)
    manifest = read_manifest(samples)
    meta = manifest["meta"]
    specs = plan_shards(meta["num_samples"], meta["shard_size"])
    infos, problems = validate_shards(samples, specs)
    if problems:
        raise ValueError(f"{samples}: shards missing or invalid: "
                         + "; ".join(f"shard {index}: {reason}" for index, reason in sorted(problems.items()))
                         + " — rerun generation to complete them")
    check_coverage(infos, meta["num_samples"])
    reference = reference_statistics(data_cfg, extractor, cache_dir, batch_size)

    # Accumulate this rank's shards in float64 on its device, then sum over ranks. The next
    # shard is read from disk while the extractor works on this one.
    stats = FeatureStats.empty(reference["stats"].total.shape[0], device)
    mine = []
    for info, (images, _, _) in _read_ahead(infos[rank::world]):
        features, logits = extract_features(extractor, images, batch_size, layout="NHWC")
        stats.update(features)
        mine.append((info.start, features.float().cpu(), logits.cpu()))
    stats.all_reduce()

    # KID and IS use the vectors themselves, in sample order so that splits do not depend on the world size.
    gathered = gather_to_main(mine)
    barrier()  # no rank leaves (and exits) while its vectors may still be on their way to rank 0
    if rank != 0:
        return None
    pieces = sorted((piece for rank_pieces in gathered for piece in rank_pieces), key=lambda piece: piece[0])
    features = torch.cat([piece[1] for piece in pieces])
    logits = torch.cat([piece[2] for piece in pieces])
    mu, sigma = stats.to_numpy()
    mu_ref, sigma_ref = reference["stats"].to_numpy()
    kid_mean, kid_std = kernel_inception_distance(features.double().numpy(), reference["features"].double().numpy(),
                                                  subsets=kid_subsets, subset_size=kid_subset_size, device=device)
    is_mean, is_std = inception_score(logits, splits=is_splits)
    report = {
        "fid": frechet_distance(mu, sigma, mu_ref, sigma_ref),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "is_mean": is_mean,
        "is_std": is_std,
        "n": stats.n,
        "n_reference": reference["stats"].n,
        "extractor": extractor.name,
        "feature_layer": extractor.feature_layer,
        "weights_sha256": extractor.weights_digest,
        "reference_key": reference["key"],
        "samples": str(samples),
        "sampler": meta.get("sampler"),
        "checkpoint_step": meta.get("checkpoint_step"),
        "warning": small_sample_warning(stats.n),
    }
    if out is not None:
        tmp = out.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, out)
    return report

