#!/usr/bin/env python
"""Benchmarks that print a table (and write JSON): training, sampling and the evaluator.

    python bench/bench.py                         # CPU, small sizes (configs/debug.yaml)
    python bench/bench.py --device cuda --config configs/cifar10.yaml --images 50000 \
        --inception-weights weights-inception-2015-12-05.pth --peak-tflops 989

Training and sampling rows run the product's own code (train.py's step through
Accelerate, hpc_ncsn.train.Training; hpc_ncsn.sampling.annealed_langevin with
hpc_ncsn.network's score function) on random data of the config's shape. FLOPs come from
torch.utils.flop_counter on one forward pass (training counts 3 × forward per
image); MFU = achieved FLOP/s / the measured peak of the row's precision, "MFU nom."
the same against --peak-tflops. Each
fast setting is timed in the same run right after a plain baseline (fp32, eager,
NCHW, the unfused optimizer with host-side checks, a per-parameter EMA loop), and
the "vs base" column is the ratio of the two, which holds on a noisy machine.
On a GPU the "syncs" column counts the times one training step or one sampler
call made the host wait for the device (torch.cuda.set_sync_debug_mode).

Rows:
  peak        the device's attainable peak, measured: dense products (torch.matmul, a 3×3 convolution) in
              fp32 and bf16, and a large copy; the faster product is the MFU column's denominator
              (--peak-tflops fills "MFU nom." against a nominal peak)
  train       images/s and MFU of one optimizer step per batch size: baseline, (--ablate: each switch), fast
  sample      network evaluations × images per second of the annealed Langevin sampler, per arm: baseline, fast
  shards      write / validate / read of uint8 32×32×3 shards (HDF5), images/s
  features    torch-fidelity extractor throughput per extractor and batch size: per-batch host copies, on device
  statistics  float64 Σx, Σxxᵀ accumulation, FID from statistics, KID (on the CPU and on the device), IS
  projected   seconds from shards to FID+KID+IS for 50,000 images from the rates above
  evaluate    hpc_ncsn.evaluate.evaluator.evaluate itself, shards → FID+KID+IS, reference statistics cached
  peer *      each stage against the obvious code for it (bench/peers.py, each in a fresh process): a plain
              DSM training loop, the NCSNv2-style Langevin loop, torch_fidelity.calculate_metrics
  scale eval  the evaluator from 1,000 to 50,000 samples (time, peak memory); the sweep's control plane from
              60 to 6,000 cells is bench/scale.py's
  profile     (after the table) the top 10 operators of one fast training step

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
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hpc_ncsn.evaluate.extractors import INCEPTION, extract_features, load_extractor  # noqa: E402
from hpc_ncsn.evaluate.scores import (  # noqa: E402
    FeatureStats,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)
from hpc_ncsn.samples.shards import plan_shards, read_shard, shard_path, write_shard  # noqa: E402
from hpc_ncsn.samples.validation import validate_shards  # noqa: E402

FULL = 50_000
SECTIONS = ("peak", "train", "sample", "eval", "peers", "profile", "scale")


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


def bench_peak(device: torch.device, n: int | None = None) -> tuple[list[dict], dict[str, float]]:
    """The device's attainable peak, measured: dense matrix products in float32 and bf16 by two libraries, a
    large GEMM through torch.matmul (MKL or cuBLAS) and a large 3×3 convolution (an implicit GEMM in oneDNN or
    cuDNN), and memory bandwidth with a large copy. The faster of the two products is the precision's MFU
    denominator: on this project's AMD CPU, MKL's sgemm reaches about half of what oneDNN's kernels do.
    `n`: the GEMM's side (default 8192 on a GPU, 2048 on a CPU), the convolution's batch scaled with it.
    Returns the rows and {precision: TFLOP/s}."""
    gpu = device.type == "cuda"
    full, batch = (8192, 256) if gpu else (2048, 32)
    n = n or full
    batch = max(1, batch * n // full)
    rows, peaks = [], {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        conv = torch.nn.Conv2d(512, 512, 3, padding=1, bias=False).to(device, dtype)
        x = torch.randn(batch, 512, 16, 16, device=device).to(dtype)
        with torch.no_grad():
            products = {f"GEMM {n}×{n}×{n} (torch.matmul)": (timed(lambda: a @ b, device, repeat=5), 2 * n**3),
                        f"3×3 convolution, {batch}×512×16×16 → 512 channels": (
                            timed(lambda: conv(x), device, repeat=5), 2 * batch * 512 * 512 * 9 * 16 * 16)}
        for what, (seconds, flops) in products.items():
            rows.append({"group": "peak", "what": f"{name}, {what}", "images": None, "seconds": seconds,
                         "images_per_s": None, "tflops": flops / seconds / 1e12})
        peaks[name] = max(row["tflops"] for row in rows[-2:])
        rows.append({"group": "peak", "what": f"{name}: the attainable peak, the MFU denominator of {name} rows",
                     "images": None, "seconds": 0.0, "images_per_s": None, "tflops": peaks[name]})
    size = (2 << 30) if gpu else (256 << 20)
    source = torch.empty(size, dtype=torch.uint8, device=device).fill_(1)
    target = torch.empty_like(source)
    seconds = timed(lambda: target.copy_(source), device, repeat=5)
    rows.append({"group": "peak", "what": f"copy {size >> 20} MiB: {2 * size / seconds / 1e9:,.1f} GB/s "
                                          "(read + written)", "images": None, "seconds": seconds,
                 "images_per_s": None})
    return rows, peaks


def host_syncs(fn, device: torch.device) -> int | None:
    """How many times `fn` made the host wait for the GPU (torch.cuda's sync debug mode); None off CUDA."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            _sync(device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


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


@torch.no_grad()
def features_to_host_per_batch(extractor, images: torch.Tensor, batch_size: int):
    """The plain baseline of extract_features: each batch copied over and its features copied back."""
    features, logits = [], []
    for start in range(0, images.shape[0], batch_size):
        feature, logit = extractor.module(images[start:start + batch_size].to(extractor.device))
        features.append(feature.double().cpu())
        logits.append(logit.double().cpu())
    return torch.cat(features), torch.cat(logits)


def bench_features(name: str, weights: Path | None, images: torch.Tensor, batch_sizes: list[int],
                   device: torch.device) -> list[dict]:
    extractor = load_extractor(name, weights, device)
    rows = []
    for batch in batch_sizes:
        baseline = timed(lambda: features_to_host_per_batch(extractor, images, batch), device)
        seconds = timed(lambda: extract_features(extractor, images, batch_size=batch), device)
        rows.append({"group": "features", "what": f"{name}, baseline per-batch host copies, batch {batch}",
                     "images": len(images), "seconds": baseline, "images_per_s": len(images) / baseline})
        rows.append({"group": "features", "what": f"{name}, on device, batch {batch}", "images": len(images),
                     "seconds": seconds, "images_per_s": len(images) / seconds, "speedup": baseline / seconds})
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
    kid = {where: timed(lambda: kernel_inception_distance(features.numpy(), other.numpy(), subsets=100,
                                                          subset_size=subset, device=where), device)
           for where in dict.fromkeys(["cpu", device.type])}
    logits = torch.randn(count, 1008, generator=generator, dtype=torch.float64)
    is_s = timed(lambda: inception_score(logits, splits=10), device)
    return [{"group": "statistics", "what": f"Σx, Σxxᵀ update, {count}×{dim}", "images": count, "seconds": update_s,
             "images_per_s": count / update_s},
            {"group": "statistics", "what": f"FID from statistics, D={dim}", "images": None, "seconds": fid_s,
             "images_per_s": None},
            *({"group": "statistics", "what": f"KID on {where}, 100 subsets of {subset}", "images": None,
               "seconds": seconds, "images_per_s": None} for where, seconds in kid.items()),
            {"group": "statistics", "what": "IS, 10 splits", "images": count, "seconds": is_s, "images_per_s": None}]


def forward_flops(model: torch.nn.Module, shape: tuple[int, ...], device: torch.device) -> float:
    """FLOPs of one forward pass per image, counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(4, *shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.ones(4, device=device))
    return counter.get_total_flops() / 4


def _rate_row(group: str, what: str, images: int, seconds: float, flops_per_image: float, peak: float | None,
              baseline: dict | None = None, precision: str = "fp32"):
    """A row of a FLOP-counted measurement. `mfu_nominal` is against --peak-tflops; `mfu` (against the
    measured peak of the row's precision) is filled in by main() once the peak is known."""
    achieved = images * flops_per_image / seconds
    row = {"group": group, "what": what, "images": images, "seconds": seconds, "images_per_s": images / seconds,
           "tflops": achieved / 1e12, "precision": precision,
           "mfu_nominal": achieved / (peak * 1e12) if peak else None}
    if baseline is not None:
        row["speedup"] = row["images_per_s"] / baseline["images_per_s"]
    return row


# The plain baseline and the product's fast settings, as train.* overrides. The baseline also updates
# the EMA parameter by parameter (EMA(foreach=False)); the fast one with foreach ops.
TRAIN_BASELINE = {"mixed_precision": "no", "fused_optimizer": False, "channels_last": False, "compile": False}


# channels_last only where it pays: on this project's CPU it made GroupNorm 2.2× (fp32) and 12× (bf16) slower
# (forward and backward, 64×64×16×16), so the fast CPU step was slower than the baseline with it.
def fast_channels_last(device: torch.device) -> bool:
    return device.type == "cuda"


def train_settings(compile_network: bool, ablate: bool, channels_last: bool) -> list[tuple[str, dict]]:
    fast = {"mixed_precision": "bf16", "fused_optimizer": True, "channels_last": channels_last,
            "compile": compile_network}
    settings = [("baseline fp32 eager", TRAIN_BASELINE)]
    if ablate:
        settings += [(f"baseline + {key}={value}", {**TRAIN_BASELINE, key: value})
                     for key, value in {**fast, "channels_last": True}.items() if value != TRAIN_BASELINE[key]]
    label = "bf16" + (", channels_last" if channels_last else "") + ", fused, no sync" + \
        (", compiled" if compile_network else "")
    return settings + [(label, fast)]


def bench_training(config_path: Path, batch_sizes: list[int], steps: int, device: torch.device,
                   peak: float | None, compile_network: bool, ablate: bool) -> list[dict]:
    """train.py's step (Accelerate, EMA, clipping, skip logic) per batch size: the baseline, then the fast settings."""
    from hpc_ncsn.config import load_config
    from hpc_ncsn.model import build_score_model
    from hpc_ncsn.train import Training

    base = load_config(config_path)
    shape = (base.data.channels, base.data.image_size, base.data.image_size)
    flops = 3 * forward_flops(build_score_model(base.model, base.data).to(device), shape, device)
    # The data's content does not change the speed: the offline digits at the config's shape (CIFAR-10 size).
    data = ["data.name=digits", f"data.image_size={base.data.image_size}", f"data.channels={base.data.channels}"]
    rows = []
    for batch in batch_sizes:
        baseline = None
        for label, setting in train_settings(compile_network, ablate, fast_channels_last(device)):
            with tempfile.TemporaryDirectory() as out:
                config = load_config(config_path, [*data, f"train.batch_size={batch}", "train.grad_accum=1",
                                                   f"train.out_dir={out}",
                                                   *(f"train.{key}={str(value).lower()}" for key, value in
                                                     setting.items())])
                run = Training.start(config)
                if not setting["fused_optimizer"]:
                    run.ema.foreach = False
                run.data = torch.randint(0, 256, (max(batch * 4, 256), *shape), dtype=torch.uint8, device=device)
                for _ in range(3):  # warm-up: compilation, allocator, cuDNN algorithm choice
                    run.step()
                syncs = host_syncs(run.step, device)
                _sync(device)
                start = time.perf_counter()
                for _ in range(steps):
                    run.step()
                _sync(device)
                seconds = time.perf_counter() - start
            row = _rate_row("train", f"{label}, batch {batch}", batch * steps, seconds, flops, peak, baseline,
                            precision="bf16" if setting["mixed_precision"] == "bf16" else "fp32")
            row["host_syncs"] = syncs
            baseline = baseline or row
            rows.append(row)
    return rows


def bench_sampling(config_path: Path, batch: int, steps: int, device: torch.device, peak: float | None,
                   compile_network: bool) -> list[dict]:
    """Annealed Langevin, `steps` network evaluations per arm (a slice of the full ladder): fp32 eager, then fast."""
    from hpc_ncsn.config import arm_overrides, load_config
    from hpc_ncsn.model import build_score_model
    from hpc_ncsn.network import NetworkSpeed, score_function
    from hpc_ncsn.sampling import SamplerPlan, annealed_langevin, initial_state

    fast = NetworkSpeed("bf16", channels_last=fast_channels_last(device), compile=compile_network)
    rows = []
    for arm in ("geometric", "linear", "snr"):
        config = load_config(config_path, [*arm_overrides(arm), "sampler.final_denoise=false"])
        shape = (config.data.channels, config.data.image_size, config.data.image_size)
        flops = forward_flops(build_score_model(config.model, config.data).to(device), shape, device)
        full = SamplerPlan.from_config(config.noise, config.sampler)
        levels = max(1, steps // full.steps_per_level)
        plan = SamplerPlan(full.sigmas[:levels], full.step_rule, full.steps_per_level, full.step_lr, full.snr, False)
        indices = torch.arange(batch, device=device)
        x = initial_state(0, indices, shape, init=config.sampler.init, sigma_max=config.noise.sigma_max).to(device)
        baseline = None
        for label, speed in (("baseline fp32 eager", NetworkSpeed()),
                             ("bf16" + (", channels_last" if fast.channels_last else "") +
                              (", compiled" if compile_network else ""), fast)):
            torch.manual_seed(0)
            score = score_function(build_score_model(config.model, config.data).to(device).eval(), speed)
            with torch.no_grad():
                sample = lambda: annealed_langevin(score, x, plan, seed=0, indices=indices)  # noqa: E731
                seconds = timed(sample, device)
                syncs = host_syncs(sample, device)
            row = _rate_row("sample", f"{arm}, {label}, batch {batch}, {plan.network_evaluations} evaluations",
                            plan.network_evaluations * batch, seconds, flops, peak, baseline,
                            precision=speed.precision)
            row["host_syncs"] = syncs
            baseline = baseline or row
            rows.append(row)
    return rows


def projected(rows: list[dict], device: torch.device) -> dict:
    """Seconds for 50,000 images from shards to FID, from the measured rates (best batch size)."""
    read = next(r for r in rows if r["what"] == "read")["images_per_s"]
    features = max(r["images_per_s"] for r in rows if r["what"].startswith(f"{INCEPTION}, on device"))
    update = next(r for r in rows if r["what"].startswith("Σx"))["images_per_s"]
    fixed = sum(r["seconds"] for r in rows if r["what"].startswith(("FID from", f"KID on {device.type}", "IS")))
    total = FULL / read + FULL / features + FULL / update + fixed
    return {"group": "projected", "what": f"shards → FID+KID+IS, {FULL} images, Inception", "images": FULL,
            "seconds": total, "images_per_s": FULL / total}


def bench_end_to_end(count: int, extractor: str, weights: Path | None, batch: int, scratch: Path) -> dict:
    """hpc_ncsn's evaluate on `count` images in shards of 1,000, reference statistics cached (a first,
    untimed call computes them): shards → validation → features → FID, KID and IS."""
    from hpc_ncsn.config import DataConfig, EvaluateConfig
    from hpc_ncsn.evaluate.evaluator import evaluate
    from hpc_ncsn.samples.shards import write_manifest

    folder = scratch / "end-to-end"
    images = np.random.default_rng(1).integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
    specs = plan_shards(count, min(1000, count))
    entries = [write_shard(shard_path(folder, spec), spec, images[spec.start:spec.stop], {"bench": True})
               for spec in specs]
    write_manifest(folder, entries, {"num_samples": count, "shard_size": specs[0].count})
    # The reference set: the offline digits at CIFAR-10's shape (1,797 images).
    data = DataConfig(name="digits", image_size=32, channels=3)
    settings = EvaluateConfig(extractor=extractor, weights=str(weights) if weights else "", batch_size=batch,
                              kid_subset_size=min(1000, count))
    run = lambda: evaluate(folder, data, settings, cache_dir=scratch / "reference")  # noqa: E731
    run()
    start = time.perf_counter()
    report = run()
    seconds = time.perf_counter() - start
    assert report["n"] == count, report
    return {"group": "evaluate", "what": f"shards → FID+KID+IS, {extractor}, batch {batch}", "images": count,
            "seconds": seconds, "images_per_s": count / seconds}


def _peer(what: str, *options: str) -> dict:
    """One measurement of bench/peers.py, in a fresh process (see its docstring)."""
    import subprocess

    done = subprocess.run([sys.executable, str(ROOT / "bench" / "peers.py"), what, *options], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"bench/peers.py {what} {' '.join(options)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


PEERS = {  # section: (the peer's label, our label, bench/peers.py's plain and our measurement)
    "train": ("plain PyTorch DSM loop (Adam, no EMA/clipping/checks)", "train.py's step", "train-plain",
              "train-ours"),
    "sample": ("plain annealed Langevin loop (one generator, randn_like)", "hpc_ncsn sampler (Philox per sample)",
               "sample-plain", "sample-ours"),
    "eval": ("torch_fidelity.calculate_metrics, FID+KID+IS", "hpc_ncsn evaluate from shards, FID+KID+IS",
             "fid-torch-fidelity", "fid-ours"),
}


def bench_peers(args: argparse.Namespace, device: torch.device, gpu: bool) -> list[dict]:
    """Each stage against the obvious code a researcher would write, each in a fresh process: the peer with
    PyTorch's defaults, the peer with hpc_ncsn's process setup, ours at fp32, ours with the fast switches.
    "vs base" is images/s over the peer's (defaults)."""
    from hpc_ncsn.config import load_config
    from hpc_ncsn.model import build_score_model

    base = load_config(args.config)
    shape = (base.data.channels, base.data.image_size, base.data.image_size)
    flops = forward_flops(build_score_model(base.model, base.data).to(device), shape, device)
    levels = max(1, args.sample_evaluations // base.sampler.steps_per_level)
    steps = args.train_steps or (30 if gpu else 50)
    sizes = {"train": ["--batch", str(base.train.batch_size), "--steps", str(steps), "--repeat", "3"],
             "sample": ["--batch", str(args.sample_batch or (1000 if gpu else 250)), "--levels", str(levels)],
             "eval": ["--images", str(args.images or (FULL if gpu else 2000))]}
    rows = []
    for section in ("train", "sample", "eval"):
        peer_label, our_label, plain, ours = PEERS[section]
        common = ["--config", str(args.config), "--device", device.type, *sizes[section]]
        runs = [(f"{peer_label}", _peer(plain, *common)),
                (f"{peer_label}, + hpc_ncsn's process setup", _peer(plain, *common, "--setup")),
                (f"{our_label}, fp32", _peer(ours, *common))]
        if section != "eval":
            switches = "bf16" + (", fused" if section == "train" else "") + \
                (", channels_last" if fast_channels_last(device) else "")
            runs.append((f"{our_label}, {switches}",
                         _peer(ours, *common, "--fast")))
        if section == "train" and args.compile:
            runs.append((f"{our_label}, {switches}, compiled", _peer(ours, *common, "--fast", "--compile")))
        baseline = None
        for label, result in runs:
            what = f"{label} ({result['threads']} threads, {result['max_rss_mb']:,.0f} MB)"
            if section == "eval":
                row = {"group": "peer eval", "what": what, "images": result["images"], "seconds": result["seconds"],
                       "images_per_s": result["images"] / result["seconds"]}
            else:
                row = _rate_row(f"peer {section}", what, result["images"], result["seconds"],
                                (3 if section == "train" else 1) * flops, args.peak_tflops,
                                precision="bf16" if result["fast"] else "fp32")
            if baseline is not None:
                row["speedup"] = row["images_per_s"] / baseline["images_per_s"]
            baseline = baseline or row
            rows.append(row)
    return rows


def bench_scale(counts: list[int], gpu: bool) -> list[dict]:
    """How the evaluator grows with N: time and the process's peak memory, shards → FID+KID+IS with the digits
    classifier, each N in a fresh process. (The sweep's control plane at scale: bench/scale.py.)"""
    rows = []
    for count in counts:
        result = _peer("fid-ours", "--images", str(count), "--repeat", "1", "--device", "cuda" if gpu else "cpu")
        what = f"evaluate, N = {count:,}: peak memory {result['max_rss_mb']:,.0f} MB"
        rows.append({"group": "scale eval", "what": what, "images": count, "seconds": result["seconds"],
                     "images_per_s": count / result["seconds"]})
    return rows


def profile_step(config: Path, batch: int, device: torch.device, compile_network: bool, top: int = 10) -> str:
    """The `top` operators of one fast training step by self time (torch.profiler), as a Markdown table.
    Compiled (when `compile_network`), Inductor's fused kernels show as one "CompiledFxGraph" entry per graph
    (forward, backward); the convolutions and matrix products it leaves to oneDNN/cuDNN/cuBLAS by name."""
    from torch.profiler import ProfilerActivity, profile

    from hpc_ncsn.config import load_config
    from hpc_ncsn.train import Training

    with tempfile.TemporaryDirectory() as out:
        run = Training.start(load_config(config, [
            "data.name=digits", f"train.batch_size={batch}", "train.grad_accum=1", f"train.out_dir={out}",
            "train.mixed_precision=bf16", "train.fused_optimizer=true",
            f"train.channels_last={str(fast_channels_last(device)).lower()}",
            f"train.compile={str(compile_network).lower()}"]))
        shape = (run.config.data.channels, run.config.data.image_size, run.config.data.image_size)
        run.data = torch.randint(0, 256, (max(batch * 4, 256), *shape), dtype=torch.uint8, device=device)
        for _ in range(3):
            run.step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            for _ in range(5):
                run.step()
            _sync(device)
        run.close()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events)
    switches = "bf16, fused" + (", channels_last" if fast_channels_last(device) else "") + \
        (", compiled" if compile_network else "")
    lines = [f"Top {top} operators of 5 fast training steps ({switches}), batch {batch}, by self "
             f"{'CUDA' if device.type == 'cuda' else 'CPU'} time:", "",
             "| operator | calls | self ms per step | share |", "|---|---|---|---|"]
    for event in events[:top]:
        lines.append(f"| `{event.key}` | {event.count // 5} | {getattr(event, key) / 5 / 1000:.2f} | "
                     f"{100 * getattr(event, key) / total:.1f}% |")
    return "\n".join(lines)


def print_table(rows: list[dict], header: str) -> None:
    print(header)
    print(f"| {'group':11} | {'what':92} | {'images':>7} | {'seconds':>9} | {'images/s':>10} | {'TFLOP/s':>8} "
          f"| {'MFU':>6} | {'MFU nom.':>8} | {'vs base':>7} | {'syncs':>5} |")
    widths = (13, 94, 9, 11, 12, 10, 8, 10, 9, 7)
    print("|" + "|".join("-" * width for width in widths) + "|")
    for r in rows:
        images = "" if r["images"] is None else f"{r['images']}"
        rate = "" if r["images_per_s"] is None else f"{r['images_per_s']:,.1f}"
        tflops = "" if r.get("tflops") is None else f"{r['tflops']:.4f}"
        mfu = "" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        nominal = "" if r.get("mfu_nominal") is None else f"{100 * r['mfu_nominal']:.1f}%"
        speedup = "" if r.get("speedup") is None else f"{r['speedup']:.2f}×"
        syncs = "" if r.get("host_syncs") is None else f"{r['host_syncs']}"
        print(f"| {r['group']:11} | {r['what']:92} | {images:>7} | {r['seconds']:9.3f} | {rate:>10} | {tflops:>8} "
              f"| {mfu:>6} | {nominal:>8} | {speedup:>7} | {syncs:>5} |")


def bench_evaluator(args: argparse.Namespace, device: torch.device, gpu: bool) -> list[dict]:
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
        rows.append(projected(rows, device))
        if args.end_to_end:
            # A GPU runs the real thing; on a CPU Inception would take hours, so the digits classifier shows
            # what the evaluator adds around the extractor.
            extractor, extractor_weights = (INCEPTION, weights) if gpu else ("digits-classifier", None)
            rows.append(bench_end_to_end(count, extractor, extractor_weights, max(batches), scratch))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--what", default="peak,train,sample,eval,peers,profile,scale",
                        help="sections to run (default: all)")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "debug.yaml",
                        help="run config for the training and sampling rows")
    parser.add_argument("--train-batch-sizes", default=None, help="default: 32,64 on CPU; 128,256,512 on GPU")
    parser.add_argument("--train-steps", type=int, default=None, help="timed steps per setting (default 5 CPU, 30 GPU)")
    parser.add_argument("--sample-batch", type=int, default=None, help="default 64 on CPU, 1000 on GPU")
    parser.add_argument("--sample-evaluations", type=int, default=10,
                        help="network evaluations timed per arm (a slice of the ladder)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's dense peak for the precision used, for MFU (H100 bf16: 989)")
    parser.add_argument("--images", type=int, default=None,
                        help="images per measurement (default: 2000 on CPU, 50000 on GPU; Inception on CPU "
                             "uses at most 64)")
    parser.add_argument("--batch-sizes", default=None, help="extractor batch sizes (default: 32,128 on CPU; "
                                                             "250,500,1000 on GPU)")
    parser.add_argument("--inception-weights", type=Path, default=None,
                        help="torch-fidelity's Inception .pth; random weights of the same shape when absent")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="leave torch.compile out of the fast training and sampling settings (its first "
                             "compilation takes a minute or more on a CPU)")
    parser.add_argument("--ablate", action="store_true",
                        help="also time each fast training switch alone on top of the baseline")
    parser.add_argument("--end-to-end", action=argparse.BooleanOptionalAction, default=True,
                        help="time hpc_ncsn's evaluate from shards to FID (Inception on a GPU, the digits "
                             "classifier on a CPU)")
    parser.add_argument("--scale-images", default="1000,5000,20000,50000",
                        help="sample counts of the evaluator's scale rows (default: 1000,5000,20000,50000)")
    parser.add_argument("--peak-size", type=int, default=None, metavar="N",
                        help="the peak rows' GEMM N×N×N, the convolution's batch in proportion (default: 8192 on a "
                             "GPU, 2048 on a CPU; a small N measures less than the peak: for smoke tests)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    what = set(args.what.split(","))
    unknown = what - set(SECTIONS)
    if unknown:
        parser.error(f"--what: unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    rows, peaks = [], {}
    if "peak" in what:
        rows, peaks = bench_peak(device, args.peak_size)
    if "train" in what:
        sizes = [int(b) for b in (args.train_batch_sizes or ("128,256,512" if gpu else "32,64")).split(",")]
        rows += bench_training(args.config, sizes, args.train_steps or (30 if gpu else 5), device, args.peak_tflops,
                               args.compile, args.ablate)
    if "sample" in what:
        rows += bench_sampling(args.config, args.sample_batch or (1000 if gpu else 64), args.sample_evaluations,
                               device, args.peak_tflops, args.compile)
    if "eval" in what:
        rows += bench_evaluator(args, device, gpu)
    if "peers" in what:
        rows += bench_peers(args, device, gpu)
    if "scale" in what:
        numbers = lambda text: [int(n) for n in text.split(",")]  # noqa: E731
        rows += bench_scale(numbers(args.scale_images), gpu)
    for row in rows:
        if row.get("precision") in peaks:
            row["mfu"] = row["tflops"] / peaks[row["precision"]]
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({platform.processor() or platform.machine()}, " \
                                                          f"{torch.get_num_threads()} threads)"
    header = (f"hpc_ncsn benchmark, {time.strftime('%Y-%m-%d')}, {name}, torch {torch.__version__}, "
              f"config {args.config.name}, Inception weights: "
              f"{'given' if args.inception_weights else 'random (speed only)'}")
    print_table(rows, header)
    profile = None
    if "profile" in what:
        profile = profile_step(args.config, 128 if gpu else 64, device, args.compile)
        print()
        print(profile)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows, "profile": profile}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
