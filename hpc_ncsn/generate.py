"""Distributed, resumable sample generation into HDF5 shards.

Loads a run's EMA weights and draws N samples with a sampler arm. Shard k holds
the fixed sample range [k·S, (k+1)·S), and sample i's noise depends only on
(seed, i) (see hpc_ncsn.sampling), so the shards are the same whatever the number
of processes that drew them. Process r draws the shards k with k % world == r.
A rerun keeps every valid shard that was made by the same checkpoint and sampler
and regenerates the rest; a killed job loses at most the shards it was writing.

Launch on several processes with torchrun (or `accelerate launch`):
    torchrun --nproc_per_node 4 -m hpc_ncsn generate --run-dir runs/cifar10 --out runs/cifar10/samples --num-samples 50000

(torchrun claims options that abbreviate its own, such as --run for --run-path,
so this command says --run-dir.)
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__
from . import checkpoint as ckpt
from . import preemption
from .config import Config, config_from_dict, config_to_dict
from .data import to_uint8
from .distributed import barrier, process_group
from .sampling import SamplerPlan, annealed_langevin, initial_state
from .shards import (
    ShardSpec,
    check_coverage,
    manifest_entry,
    plan_shards,
    shard_path,
    validate_shards,
    write_manifest,
    write_shard,
)
from .speed import NetworkSpeed, score_function

__all__ = ["GenerationResult", "generate", "resolve_checkpoint", "sampler_attrs"]


@dataclass(frozen=True)
class GenerationResult:
    folder: Path
    generated: list[int]
    kept: list[int]


def resolve_checkpoint(run_or_checkpoint: Path) -> Path:
    """A checkpoint folder: the given one, or the newest complete one of a run folder."""
    path = Path(run_or_checkpoint)
    if (path / "ema.pt").is_file():
        return path
    latest = ckpt.latest_checkpoint(path / "checkpoints")
    if latest is None:
        raise FileNotFoundError(f"{path} holds no complete checkpoint (no checkpoints/step-*/ema.pt); "
                                "train first, or pass a checkpoint folder")
    return latest


def sampler_attrs(config: Config, checkpoint: Path, step: int, seed: int) -> dict:
    """What a shard records about how it was made; shards with other values are regenerated."""
    noise = config_to_dict(config)["noise"]
    return {
        "run": str(checkpoint.parent.parent.resolve()),
        "checkpoint": checkpoint.name,
        "checkpoint_step": step,
        "schedule": config.noise.schedule,
        "sampler": noise,
        "seed": seed,
        "image_layout": "NHWC",
    }


def _versions() -> dict:
    import h5py

    return {"hpc_ncsn": __version__, "torch": torch.__version__, "numpy": np.__version__, "h5py": h5py.__version__,
            "python": platform.python_version()}


@torch.no_grad()
def _draw(score, config: Config, plan: SamplerPlan, spec: ShardSpec, seed: int, batch_size: int,
          device: torch.device) -> np.ndarray:
    """The uint8 NHWC images of one shard's sample range (`score`: the network as the sampler calls it)."""
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    pieces = []
    for start in range(spec.start, spec.stop, batch_size):
        indices = torch.arange(start, min(start + batch_size, spec.stop), device=device)
        x = initial_state(seed, indices, shape, init=config.noise.init, sigma_max=config.noise.sigma_max)
        x = annealed_langevin(score, x.to(device), plan, seed=seed, indices=indices)
        pieces.append(to_uint8(x).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(pieces)


def generate(
    run_or_checkpoint: Path,
    out: Path,
    *,
    num_samples: int,
    shard_size: int = 1000,
    batch_size: int = 250,
    seed: int = 0,
    noise_overrides: tuple[str, ...] = (),
    speed: NetworkSpeed = NetworkSpeed(),
    validate_timeout: float = 120.0,
    progress: Callable[[str], None] = print,
) -> GenerationResult:
    """Draw samples [0, num_samples) of a run's EMA model into `out`/shard-*.h5 plus manifest.json.

    `speed` says how the network runs (precision, channels_last, torch.compile); the
    precision is recorded in the shards, so a rerun with another one redraws them.
    """
    from .training import load_ema_model

    preemption.install()
    rank, world, device = process_group()
    checkpoint = resolve_checkpoint(run_or_checkpoint)
    model, config, step = load_ema_model(checkpoint, device)
    if noise_overrides:
        config = _with_noise_overrides(config, noise_overrides)
    plan = SamplerPlan.from_config(config.noise)
    specs = plan_shards(num_samples, shard_size)
    image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    attrs = {**sampler_attrs(config, checkpoint, step, seed), **speed.attrs(), "num_samples": num_samples,
             "shard_size": shard_size}
    score = score_function(model, speed)
    out.mkdir(parents=True, exist_ok=True)

    # Keep this rank's valid shards made the same way; draw the others.
    mine = [spec for spec in specs if spec.index % world == rank]
    valid, invalid = validate_shards(out, mine, image_shape=image_shape, timeout=validate_timeout)
    index_of = {spec.start: spec.index for spec in mine}
    stale = {index_of[info.start] for info in valid if not _same_origin(info.attrs, attrs)}
    kept = [spec.index for spec in mine if spec.index not in invalid and spec.index not in stale]
    generated = []
    for spec in mine:
        if spec.index in kept:
            continue
        if preemption.requested():  # at most the shard being drawn is lost; a rerun keeps the written ones
            raise preemption.Preempted(f"stop requested ({preemption.requested()}) before shard {spec.index}; "
                                       f"{len(generated)} shard(s) written this time; rerun to complete")
        images = _draw(score, config, plan, spec, seed, batch_size, device)
        write_shard(shard_path(out, spec), spec, images, {**attrs, "versions": _versions()})
        generated.append(spec.index)
        progress(f"rank {rank}: wrote {shard_path(out, spec).name} (samples {spec.start}..{spec.stop - 1})")
    barrier()

    # Check the whole set and write the manifest.
    if rank == 0:
        infos, problems = validate_shards(out, specs, image_shape=image_shape, timeout=validate_timeout)
        if problems:
            raise RuntimeError(f"shards still invalid after generation: {problems}")
        check_coverage(infos, num_samples)
        entries = [manifest_entry(info.path, spec) for spec, info in zip(specs, infos)]
        write_manifest(out, entries, attrs)
    barrier()
    return GenerationResult(out, generated, kept)


def _same_origin(found: dict, wanted: dict) -> bool:
    keys = ("run", "checkpoint", "checkpoint_step", "schedule", "sampler", "seed", "network_precision")
    return all(found.get(key) == wanted[key] for key in keys)


def _with_noise_overrides(config: Config, overrides: tuple[str, ...]) -> Config:
    for item in overrides:
        if not item.startswith("noise."):
            raise ValueError(f"sampler override {item!r}: only noise.* keys change sampling, "
                             "e.g. noise.steps_per_level=10")
    return config_from_dict(config_to_dict(config), overrides)
