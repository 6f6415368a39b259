#!/usr/bin/env python
"""Benchmarks that print a table (and write JSON): the evaluator's throughput.

    python bench/bench.py                         # CPU, small sizes
    python bench/bench.py --device cuda --images 50000 --inception-weights weights-inception-2015-12-05.pth

Rows:
  shards      write / validate / read of uint8 32×32×3 shards (HDF5), images/s
  features    torch-fidelity extractor throughput, images/s, per extractor and batch size
  statistics  float64 Σx, Σxxᵀ accumulation (s per 10k features), FID from statistics (s), KID, IS
  projected   seconds from shards to FID for 50,000 images: read + features + statistics

Without --inception-weights the Inception rows use random weights of the same
architecture (bench/random_inception.py): the same arithmetic, so the same speed,
but never a meaningful FID.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hpc_ncsn.fid import FeatureStats, frechet_distance, inception_score, kernel_inception_distance  # noqa: E402
from hpc_ncsn.metrics import INCEPTION, extract_features, load_extractor  # noqa: E402
from hpc_ncsn.shards import plan_shards, read_shard, shard_path, validate_shards, write_shard  # noqa: E402

FULL = 50_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeat: int = 1) -> float:
    """Best wall time of `repeat` calls, after one warm-up call."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def bench_shards(count: int, folder: Path) -> list[dict]:
    images = np.random.default_rng(0).integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    specs = plan_shards(count, max(count // 4, 1))
    start = time.perf_counter()
    for spec in specs:
        write_shard(shard_path(folder, spec), spec, images[spec.start:spec.stop], {"bench": True})
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    valid, problems = validate_shards(folder, specs)
    validate_s = time.perf_counter() - start
    assert not problems and len(valid) == len(specs), problems
    start = time.perf_counter()
    for spec in specs:
        read_shard(shard_path(folder, spec))
    read_s = time.perf_counter() - start
    return [{"group": "shards", "what": f"write {len(specs)} shards", "images": count, "seconds": write_s,
             "images_per_s": count / write_s},
            {"group": "shards", "what": "validate (child process)", "images": count, "seconds": validate_s,
             "images_per_s": count / validate_s},
            {"group": "shards", "what": "read", "images": count, "seconds": read_s, "images_per_s": count / read_s}]


def bench_features(name: str, weights: Path | None, images: torch.Tensor, batch_sizes: list[int],
                   device: torch.device) -> list[dict]:
    extractor = load_extractor(name, weights, device)
    rows = []
    for batch in batch_sizes:
        seconds = timed(lambda: extract_features(extractor, images, batch_size=batch), device)
        rows.append({"group": "features", "what": f"{name}, batch {batch}", "images": len(images),
                     "seconds": seconds, "images_per_s": len(images) / seconds})
    return rows


def bench_statistics(dim: int, count: int, device: torch.device) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(count, dim, generator=generator, dtype=torch.float64)
    other = torch.randn(count, dim, generator=generator, dtype=torch.float64) * 1.1 + 0.1
    on_device = features.to(device)
    update_s = timed(lambda: FeatureStats.empty(dim, device).update(on_device), device, repeat=3)
    stats = [FeatureStats.empty(dim).update(f).to_numpy() for f in (features, other)]
    fid_s = timed(lambda: frechet_distance(*stats[0], *stats[1]), device)
    subset = min(1000, count)
    kid_s = timed(lambda: kernel_inception_distance(features.numpy(), other.numpy(), subsets=100,
                                                    subset_size=subset), device)
    logits = torch.randn(count, 1008, generator=generator, dtype=torch.float64)
    is_s = timed(lambda: inception_score(logits, splits=10), device)
    return [{"group": "statistics", "what": f"Σx, Σxxᵀ update, {count}×{dim}", "images": count, "seconds": update_s,
             "images_per_s": count / update_s},
            {"group": "statistics", "what": f"FID from statistics, D={dim}", "images": None, "seconds": fid_s,
             "images_per_s": None},
            {"group": "statistics", "what": f"KID, 100 subsets of {subset}", "images": None, "seconds": kid_s,
             "images_per_s": None},
            {"group": "statistics", "what": "IS, 10 splits", "images": count, "seconds": is_s, "images_per_s": None}]


def projected(rows: list[dict]) -> dict:
    """Seconds for 50,000 images from shards to FID, from the measured rates (best batch size)."""
    read = next(r for r in rows if r["what"] == "read")["images_per_s"]
    features = max(r["images_per_s"] for r in rows if r["what"].startswith(INCEPTION))
    update = next(r for r in rows if r["what"].startswith("Σx"))["images_per_s"]
    fixed = sum(r["seconds"] for r in rows if r["what"].startswith(("FID from", "KID", "IS")))
    total = FULL / read + FULL / features + FULL / update + fixed
    return {"group": "projected", "what": f"shards → FID+KID+IS, {FULL} images, Inception", "images": FULL,
            "seconds": total, "images_per_s": FULL / total}


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    print(f"| {'group':10} | {'what':48} | {'images':>7} | {'seconds':>9} | {'images/s':>10} |")
    print(f"|{'-' * 12}|{'-' * 50}|{'-' * 9}|{'-' * 11}|{'-' * 12}|")
    for r in rows:
        images = "" if r["images"] is None else f"{r['images']}"
        rate = "" if r["images_per_s"] is None else f"{r['images_per_s']:.1f}"
        print(f"| {r['group']:10} | {r['what']:48} | {images:>7} | {r['seconds']:9.3f} | {rate:>10} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=None,
                        help="images per measurement (default: 2000 on CPU, 50000 on GPU; Inception on CPU "
                             "uses at most 64)")
    parser.add_argument("--batch-sizes", default=None, help="extractor batch sizes (default: 32,128 on CPU; "
                                                             "250,500,1000 on GPU)")
    parser.add_argument("--inception-weights", type=Path, default=None,
                        help="torch-fidelity's Inception .pth; random weights of the same shape when absent")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    count = args.images or (FULL if gpu else 2000)
    batches = [int(b) for b in (args.batch_sizes or ("250,500,1000" if gpu else "32,128")).split(",")]
    rng = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        weights = args.inception_weights
        if weights is None:
            from random_inception import write_random_inception

            weights = write_random_inception(scratch / "random-inception.pth")
        rows = bench_shards(count, scratch / "shards")
        rows += bench_features("digits-classifier", None,
                               torch.randint(0, 256, (count, 1, 16, 16), dtype=torch.uint8, generator=rng),
                               batches, device)
        inception_count = count if gpu else min(count, 64)
        rows += bench_features(INCEPTION, weights,
                               torch.randint(0, 256, (inception_count, 3, 32, 32), dtype=torch.uint8, generator=rng),
                               [b for b in batches if b <= inception_count] or [inception_count], device)
        rows += bench_statistics(2048, min(count, 10_000), device)
        rows.append(projected(rows))
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({platform.processor() or platform.machine()}, " \
                                                          f"{torch.get_num_threads()} threads)"
    header = (f"evaluator benchmark, {time.strftime('%Y-%m-%d')}, {name}, torch {torch.__version__}, "
              f"Inception weights: {'given' if args.inception_weights else 'random (speed only)'}")
    print_table(rows, header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
