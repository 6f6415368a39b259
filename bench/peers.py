#!/usr/bin/env python
"""Peer baselines: the obvious PyTorch code for each stage, timed against hpc_ncsn's own.

bench/bench.py runs every measurement here in a fresh Python process, so that one
row's threads, allocator state and compiled kernels cannot help or hurt another, and
so that the plain rows run as a user's own script would: PyTorch's defaults, nothing
of hpc_ncsn's process setup. `--setup` gives a plain row hpc_ncsn's process setup
(hpc_ncsn.distributed.setup_process: threads from the allocation, freed memory kept),
which splits "our code" from "our process". Every product row runs with that setup,
as every hpc_ncsn entry point does.

    python bench/peers.py train-plain --config configs/debug.yaml --batch 64 --steps 20
    python bench/peers.py train-ours --config configs/debug.yaml --batch 64 --steps 20 --fast [--compile]

Each call prints one JSON object: what ran, images, seconds (the best of --repeat timed
runs after a warm-up) and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

WHAT = ("train-plain", "train-ours", "sample-plain", "sample-ours", "fid-torch-fidelity", "fid-ours")


def peak_memory_mb() -> float:
    """This process's peak resident memory. VmHWM (Linux) rather than getrusage's ru_maxrss, which a process
    started by fork and exec inherits from its parent (here: the benchmark's own, larger process)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def best_of(fn, repeat: int, device: torch.device) -> float:
    fn()  # warm-up: allocator, kernels, compilation
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


# Training ---------------------------------------------------------------------------------------

def train_plain(config, batch: int, steps: int, device: torch.device, repeat: int) -> float:
    """A DSM training loop written the obvious way: Adam, one random level and noise per image, no EMA,
    no clipping, no checks (what NCSNv2's own runner does per step, minus its logging)."""
    from hpc_ncsn.model import build_score_model
    from hpc_ncsn.schedules import ladder

    torch.manual_seed(0)
    model = build_score_model(config.model, config.data).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    sigmas = ladder(config.noise.ladder, config.noise.sigma_max, config.noise.sigma_min,
                    config.noise.num_levels).to(device, torch.float32)
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    data = torch.randint(0, 256, (max(batch * 4, 256), *shape), dtype=torch.uint8, device=device)

    def run():
        for _ in range(steps):
            x = data[torch.randint(0, len(data), (batch,), device=device)].float() / 255
            levels = torch.randint(0, len(sigmas), (batch,), device=device)
            sigma = sigmas[levels].view(-1, 1, 1, 1)
            noise = torch.randn_like(x)
            loss = 0.5 * ((sigma * model(x + sigma * noise, sigma.flatten()) + noise) ** 2).flatten(1).sum(1).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return best_of(run, repeat, device)


def train_ours(config_path: Path, overrides: list[str], batch: int, steps: int, device: torch.device,
               repeat: int) -> float:
    """hpc_ncsn.train.Training.step: train.py's step through Accelerate, with EMA, clipping and skip checks."""
    from hpc_ncsn.config import load_config
    from hpc_ncsn.train import Training

    with tempfile.TemporaryDirectory() as out:
        config = load_config(config_path, [*overrides, f"train.batch_size={batch}", "train.grad_accum=1",
                                           f"train.out_dir={out}"])
        run = Training.start(config)
        shape = (config.data.channels, config.data.image_size, config.data.image_size)
        run.data = torch.randint(0, 256, (max(batch * 4, 256), *shape), dtype=torch.uint8, device=device)

        def steps_():
            for _ in range(steps):
                run.step()
            run.read_skips()  # the step's counters reach the host here, as at a log step

        seconds = best_of(steps_, repeat, device)
        run.close()
    return seconds


# Sampling ---------------------------------------------------------------------------------------

def sample_plain(config, batch: int, levels: int, device: torch.device, repeat: int) -> float:
    """The obvious annealed Langevin loop (NCSNv2's anneal_Langevin_dynamics): one global generator for
    the batch's noise, step size ε·σ_i²/σ_L² per level, T steps per level."""
    from hpc_ncsn.model import build_score_model
    from hpc_ncsn.schedules import ladder

    torch.manual_seed(0)
    model = build_score_model(config.model, config.data).to(device).eval()
    sigmas = ladder(config.noise.ladder, config.noise.sigma_max, config.noise.sigma_min,
                    config.noise.num_levels).to(device, torch.float32)
    shape = (batch, config.data.channels, config.data.image_size, config.data.image_size)
    sigma_last = sigmas[-1].item()

    @torch.no_grad()
    def run():
        x = 0.5 + config.noise.sigma_max * torch.randn(shape, device=device)
        for sigma in sigmas[:levels]:
            labels = torch.ones(batch, device=device) * sigma
            step_size = config.sampler.step_lr * (sigma / sigma_last) ** 2
            for _ in range(config.sampler.steps_per_level):
                grad = model(x, labels)
                x = x + step_size * grad + torch.sqrt(step_size * 2) * torch.randn_like(x)
        return x

    return best_of(run, repeat, device)


def sample_ours(config, batch: int, levels: int, device: torch.device, repeat: int, fast: bool) -> float:
    """hpc_ncsn.sampling.annealed_langevin with hpc_ncsn.network's score function (Philox noise per sample)."""
    from hpc_ncsn.model import build_score_model
    from hpc_ncsn.network import NetworkSpeed, score_function
    from hpc_ncsn.sampling import SamplerPlan, annealed_langevin, initial_state

    torch.manual_seed(0)
    speed = NetworkSpeed("bf16", channels_last=device.type == "cuda") if fast else NetworkSpeed()
    score = score_function(build_score_model(config.model, config.data).to(device).eval(), speed)
    full = SamplerPlan.from_config(config.noise, config.sampler)
    plan = SamplerPlan(full.sigmas[:levels], full.step_rule, full.steps_per_level, full.step_lr, full.snr, False)
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    indices = torch.arange(batch, device=device)

    @torch.no_grad()
    def run():
        x = initial_state(0, indices, shape, init="gaussian", sigma_max=config.noise.sigma_max).to(device)
        return annealed_langevin(score, x, plan, seed=0, indices=indices)

    return best_of(run, repeat, device)


# Evaluation -------------------------------------------------------------------------------------

def _digits_images(count: int) -> "np.ndarray":  # noqa: F821
    """`count` uint8 16×16 gray images, NHWC: the digits, repeated, shifted by one gray level per pass."""
    from hpc_ncsn.config import DataConfig
    from hpc_ncsn.data import load_dataset

    real = load_dataset(DataConfig(name="digits", image_size=16, channels=1))[0].permute(0, 2, 3, 1).numpy()
    passes = -(-count // len(real))
    return __import__("numpy").concatenate([(real.astype("int16") + k).clip(0, 255).astype("uint8")
                                            for k in range(passes)])[:count]


def fid_torch_fidelity(count: int, scratch: Path, device: torch.device, repeat: int) -> float:
    """torch_fidelity.calculate_metrics on the same images and extractor: FID, KID and IS, the reference's
    features cached by torch-fidelity (a first, untimed call computes them)."""
    import torch_fidelity

    from hpc_ncsn.config import DataConfig
    from hpc_ncsn.data import load_dataset
    from hpc_ncsn.evaluate.extractors import register_extractors

    register_extractors()
    images = torch.from_numpy(_digits_images(count)).permute(0, 3, 1, 2).contiguous()
    reference = load_dataset(DataConfig(name="digits", image_size=16, channels=1))[0]

    class Images(torch.utils.data.Dataset):
        def __init__(self, tensor):
            self.tensor = tensor

        def __len__(self):
            return len(self.tensor)

        def __getitem__(self, i):
            return self.tensor[i]

    def run():
        return torch_fidelity.calculate_metrics(
            input1=Images(images), input2=Images(reference), input2_cache_name="bench-digits-reference",
            cache_root=str(scratch / "torch-fidelity"), feature_extractor="digits-classifier",
            feature_layer_fid="64", feature_layer_kid="64", feature_layer_isc="logits_unbiased",
            fid=True, kid=True, isc=True, kid_subset_size=min(1000, count), batch_size=250,
            cuda=device.type == "cuda", verbose=False, save_cpu_ram=True)

    return best_of(run, repeat, device)


def fid_ours(count: int, scratch: Path, device: torch.device, repeat: int) -> float:
    """hpc_ncsn's evaluate from shards (verification, features, FID, KID and IS), reference statistics cached."""
    from hpc_ncsn.config import DataConfig, EvaluateConfig
    from hpc_ncsn.evaluate.evaluator import evaluate
    from hpc_ncsn.samples.shards import plan_shards, shard_path, write_manifest, write_shard

    images = _digits_images(count)
    folder = scratch / "shards"
    specs = plan_shards(count, min(1000, count))
    entries = [write_shard(shard_path(folder, spec), spec, images[spec.start:spec.stop], {"bench": True})
               for spec in specs]
    write_manifest(folder, entries, {"num_samples": count, "shard_size": specs[0].count})
    data = DataConfig(name="digits", image_size=16, channels=1)
    settings = EvaluateConfig(extractor="digits-classifier", batch_size=250, kid_subset_size=min(1000, count))
    return best_of(lambda: evaluate(folder, data, settings, cache_dir=scratch / "reference"), repeat, device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=WHAT)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "debug.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64, help="training or sampling batch")
    parser.add_argument("--steps", type=int, default=20, help="training steps per timed run")
    parser.add_argument("--levels", type=int, default=2, help="σ levels per timed sampler run")
    parser.add_argument("--images", type=int, default=2000, help="images per FID")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs (the best counts)")
    parser.add_argument("--setup", action="store_true", help="a plain row with hpc_ncsn's process setup")
    parser.add_argument("--fast", action="store_true",
                        help="our rows with the fast switches (training: bf16, fused Adam; channels_last on a GPU; "
                             "sampling: bf16)")
    parser.add_argument("--compile", action="store_true",
                        help="train-ours: torch.compile the network too (the warm-up run compiles; not timed)")
    args = parser.parse_args(argv)
    ours = args.what.endswith("-ours")
    if ours or args.setup:
        from hpc_ncsn.distributed import setup_process

        setup_process()
    from hpc_ncsn.config import load_config

    device = torch.device(args.device)
    fast = ["train.mixed_precision=bf16", "train.fused_optimizer=true",
            f"train.channels_last={str(args.device.startswith('cuda')).lower()}"]
    slow = ["train.mixed_precision=no", "train.fused_optimizer=false", "train.channels_last=false"]
    overrides = ["data.name=digits", f"train.compile={str(args.compile).lower()}", *(fast if args.fast else slow)]
    config = load_config(args.config, overrides)
    images = None
    with tempfile.TemporaryDirectory() as scratch:
        if args.what.startswith("train"):
            images = args.batch * args.steps
            seconds = (train_ours(args.config, overrides, args.batch, args.steps, device, args.repeat) if ours else
                       train_plain(config, args.batch, args.steps, device, args.repeat))
        elif args.what.startswith("sample"):
            evaluations = args.levels * config.sampler.steps_per_level
            images = args.batch * evaluations  # network evaluations × images
            seconds = (sample_plain(config, args.batch, args.levels, device, args.repeat) if not ours else
                       sample_ours(config, args.batch, args.levels, device, args.repeat, args.fast))
        elif args.what == "fid-torch-fidelity":
            seconds, images = fid_torch_fidelity(args.images, Path(scratch), device, args.repeat), args.images
        else:
            seconds, images = fid_ours(args.images, Path(scratch), device, args.repeat), args.images
    print(json.dumps({"what": args.what, "setup": ours or args.setup, "fast": args.fast, "compile": args.compile,
                      "images": images,
                      "seconds": seconds, "threads": torch.get_num_threads(), "max_rss_mb": peak_memory_mb()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
