"""Real images as a sample folder: the floor anchor of an ablation table.

FID of N real images that are not in the reference set says how low FID can go at
that N (FID is biased upwards at small N); the table prints it next to the arms. The
folder has the same shards, checksums and manifest as a generated one, so the same
`evaluate` scores it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..config import DataConfig
from ..files import make_folder
from .shards import plan_shards, shard_path, write_manifest, write_shard

__all__ = ["write_real_shards"]


def write_real_shards(data_cfg: DataConfig, out: Path, num_samples: int, shard_size: int, *, split: str = "train",
                      seed: int = 0) -> Path:
    """`num_samples` images of `split`, drawn without replacement by `seed`, as shards and a manifest in `out`."""
    from ..data import load_images

    images = load_images(data_cfg, split)
    if not 2 <= num_samples <= len(images):
        raise ValueError(f"num_samples={num_samples}: the {data_cfg.name} {split} split has {len(images)} images; "
                         f"choose 2..{len(images)}")
    make_folder(out, "the real-image sample folder")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:num_samples]
    chosen = images[order].permute(0, 2, 3, 1).contiguous().numpy()
    meta = {"source": "data", "data": asdict(data_cfg), "split": split, "seed": seed, "num_samples": num_samples,
            "shard_size": shard_size, "image_layout": "NHWC"}
    entries = []
    for spec in plan_shards(num_samples, shard_size):
        path = shard_path(out, spec)
        entries.append(write_shard(path, spec, chosen[spec.start:spec.stop], meta))
    write_manifest(out, entries, meta)
    return Path(out)
