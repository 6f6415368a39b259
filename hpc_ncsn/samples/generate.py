"""Distributed, resumable sample generation into HDF5 shards.

Loads a run's EMA weights (or an exported model: hpc_ncsn.pretrained) and draws N samples with the
config's sampler. Shard k holds
the fixed sample range [k·S, (k+1)·S), and sample i's noise depends only on
(seed, i) (see hpc_ncsn.rng), so the shards are the same whatever the number
of processes that drew them. Process r draws the shards k with k % world == r.
A rerun keeps every valid shard that was made by the same checkpoint and sampler
and regenerates the rest; a killed job loses at most the shards it was writing.

Launch on several processes with torchrun (or `accelerate launch`):
    torchrun --nproc_per_node 4 -m hpc_ncsn generate --run-dir runs/cifar10 --out runs/cifar10/samples --num-samples 50000

(torchrun claims options that abbreviate its own, such as --run for --run-path,
so this command says --run-dir.)
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import __version__, preemption
from ..checkpoint import load_newest_ema_model
from ..config import Config, ConfigError, SamplerConfig, arm_of, config_from_dict, config_to_dict
from ..data import to_uint8
from ..distributed import barrier, process_group
from ..files import make_folder, require_free_space
from ..locks import FolderLock
from ..pretrained import load_pretrained
from ..network import NetworkSpeed, score_function
from ..progress import showing_progress
from ..sampling import SamplerPlan, draw
from .shards import (
    H5PY_VERSION,
    ShardError,
    ShardSpec,
    check_coverage,
    file_sha256,
    manifest_entry,
    origin_difference,
    plan_shards,
    read_manifest,
    shard_path,
    write_manifest,
    write_shard,
    write_view,
)
from .validation import validate_shards

__all__ = ["GenerationResult", "generate", "network_origin", "run_folder", "sampler_attrs", "sampling_config"]

NETWORK_KEYS = ("precision", "channels_last", "compile")


@dataclass(frozen=True)
class GenerationResult:
    folder: Path
    generated: list[int]
    kept: list[int]


def network_origin(source: Path, out: Path, step: int, *, checkpoint: Path | None = None,
                   weights_sha256: str | None = None) -> dict:
    """Where the network came from, as shards record it: a checkpoint's run folder (`run`) and name, or an exported
    model's folder (`model`) and the sha256 of its weights; each folder relative to the shards' folder, so that a
    sweep folder that moves with its runs keeps its shards (`run_folder` reads it back)."""
    if checkpoint is not None:
        return {"run": os.path.relpath(checkpoint.parent.parent.resolve(), Path(out).resolve()),
                "checkpoint": checkpoint.name, "checkpoint_step": step}
    return {"model": os.path.relpath(Path(source).resolve(), Path(out).resolve()), "model_sha256": weights_sha256,
            "checkpoint_step": step}


def sampler_attrs(config: Config, origin: dict, seed: int) -> dict:
    """What a shard records about how it was made (`ORIGIN_KEYS`: `origin`, the network's origin; the image layout,
    the NFE per sample).

    The sampler's
    ladder and kind (SamplerConfig.SAMPLING_KEYS) are recorded only where they differ from
    their defaults: folders drawn before those keys existed stay valid.
    """
    tree = config_to_dict(config)
    defaults = config_to_dict(SamplerConfig())
    sampler = {key: value for key, value in tree["sampler"].items()
               if key not in NETWORK_KEYS and not (key in SamplerConfig.SAMPLING_KEYS and value == defaults[key])}
    return {
        **origin,
        "arm": arm_of(config),
        "noise": tree["noise"],
        # How the network runs is not part of it, except its precision (NetworkSpeed.attrs records that).
        "sampler": sampler,
        "network_evaluations": SamplerPlan.from_config(config.noise, config.sampler).network_evaluations,
        "seed": seed,
        "image_layout": "NHWC",
    }


def run_folder(samples: Path, meta: dict) -> Path:
    """The run folder (or exported model folder) a manifest's (or shard's) attributes name, as a path."""
    return (Path(samples) / meta["run" if "run" in meta else "model"]).resolve()


def sampling_config(run_config: Config, overrides: tuple[str, ...] = ()) -> Config:
    """The run's config with sampling overrides (sampler.*, noise.*, generate.*) applied."""
    for item in overrides:
        if not item.startswith(("sampler.", "noise.", "generate.")):
            raise ConfigError(f"sampling override {item!r}: only sampler.*, noise.* and generate.* keys change "
                             "sampling, e.g. sampler.steps_per_level=10 or sampler.step_rule=snr")
    return config_from_dict(config_to_dict(run_config), overrides) if overrides else run_config


def _versions() -> dict:
    """The software that drew a shard. (Not the thread count: it did not change the images here, and 1 and 2
    processes must write byte-identical shards; the evaluation report records the threads that scored them.)"""
    return {"hpc_ncsn": __version__, "torch": torch.__version__, "numpy": np.__version__, "h5py": H5PY_VERSION,
            "python": platform.python_version()}


@torch.no_grad()
def _draw(score, config: Config, plan: SamplerPlan, spec: ShardSpec, seed: int, device: torch.device,
          advance: Callable[[int], None] = lambda samples: None) -> np.ndarray:
    """The uint8 NHWC images of one shard's sample range (`score`: the network as the sampler calls it);
    `advance(samples)` after each noise level: whole samples, a batch's share of it."""
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    batch_size = config.generate.batch_size
    pieces = []
    for start in range(spec.start, spec.stop, batch_size):
        indices = torch.arange(start, min(start + batch_size, spec.stop), device=device)
        count, levels = len(indices), len(plan.sigmas)  # whole samples per level, summing to the batch exactly
        x = draw(score, plan, seed=seed, indices=indices, shape=shape, init=config.sampler.init, device=device,
                 callback=lambda level, sigma, x: advance(count * (level + 1) // levels - count * level // levels))
        pieces.append(to_uint8(x).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(pieces)


def generate(
    source: Path,
    out: Path,
    *,
    pretrained: bool = False,
    overrides: tuple[str, ...] = (),
    seed: int = 0,
    validate_timeout: float = 120.0,
    progress: Callable[[str], None] = print,
) -> GenerationResult:
    """Draw samples [0, generate.num_samples) of a run's EMA model into `out`/shard-*.h5 plus manifest.json.

    `source`: a run folder (its newest intact checkpoint), a checkpoint or snapshot folder, or with
    `pretrained` an exported model folder (hpc_ncsn.pretrained; its config.json is the run's config). The run's
    config says how (its sampler.*, noise.* and generate.* sections), with
    `overrides` of those keys applied. The network's precision is recorded in the
    shards, so a rerun with another one redraws them. One generation at a time may
    write into `out` (a lock file, hpc_ncsn.locks).
    """
    restore = preemption.install()
    try:
        return _generate(source, pretrained, out, overrides, seed, validate_timeout, say=progress)
    finally:
        restore()  # the caller's signal handlers again


def _load(source: Path, pretrained: bool, out: Path, device: torch.device, quiet: bool):
    """(network, its run's config, where it came from as `network_origin`)."""
    if pretrained:
        model, config, record = load_pretrained(source, device)
        return model, config, network_origin(source, out, record["step"], weights_sha256=record["weights_sha256"])
    model, config, step, checkpoint = load_newest_ema_model(source, device, quiet=quiet)
    return model, config, network_origin(source, out, step, checkpoint=checkpoint)


def _generate(source: Path, pretrained: bool, out: Path, overrides: tuple[str, ...], seed: int,
              validate_timeout: float, say: Callable[[str], None]) -> GenerationResult:
    rank, world, device = process_group()
    make_folder(out, "the sample folder (--out)")
    model, config, origin = _load(source, pretrained, out, device, quiet=rank != 0)
    config = sampling_config(config, overrides)
    plan = SamplerPlan.from_config(config.noise, config.sampler)
    settings = config.generate
    specs = plan_shards(settings.num_samples, settings.shard_size)
    image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    speed = NetworkSpeed.from_sampler(config.sampler, device)
    attrs = {**sampler_attrs(config, origin, seed), **speed.attrs(),
             "num_samples": settings.num_samples, "shard_size": settings.shard_size}
    score = score_function(model, speed)
    lock = FolderLock(out, "generate", what="a generation",
                      fix="two generations into one folder would redraw each other's shards: wait for that one, "
                          "or pick another --out")
    if rank == 0:
        lock.acquire()
    try:
        # Keep this rank's valid shards made the same way (and, where a manifest of this origin lists them,
        # with the bytes it recorded); draw the others, saying why.
        mine = [spec for spec in specs if spec.index % world == rank]
        valid, redraw = validate_shards(out, mine, image_shape=image_shape, timeout=validate_timeout)
        recorded = _recorded_checksums(out, attrs)
        index_of = {spec.start: spec.index for spec in mine}
        for info in valid:
            why = _origin_or_bytes_changed(info, attrs, recorded)
            if why:
                redraw[index_of[info.start]] = why
        kept = [spec.index for spec in mine if spec.index not in redraw]
        generated = []
        with showing_progress(sum(spec.stop - spec.start for spec in mine if spec.index not in kept), "generate",
                              "samples") as bar:
            say = _above(bar, say)
            for spec in mine:
                if spec.index in kept:
                    continue
                if shard_path(out, spec).is_dir():
                    raise ShardError(shard_path(out, spec), "is a folder where a shard goes", "remove it and rerun")
                if redraw[spec.index] != "missing":
                    say(f"rank {rank}: redrawing {shard_path(out, spec).name}: {redraw[spec.index]}")
                if preemption.requested():  # at most the shard being drawn is lost; a rerun keeps the written ones
                    raise preemption.Preempted(f"stop requested ({preemption.requested()}) before shard "
                                               f"{spec.index}; {len(generated)} shard(s) written this time; rerun "
                                               "to complete")
                images = _draw(score, config, plan, spec, seed, device, bar.update)
                require_free_space(out, images.nbytes + (1 << 16), f"shard {shard_path(out, spec).name}",
                                   "free some space or pass another --out; the shards written so far are kept")
                write_shard(shard_path(out, spec), spec, images, {**attrs, "versions": _versions()})
                generated.append(spec.index)
                say(f"rank {rank}: wrote {shard_path(out, spec).name} (samples {spec.start}..{spec.stop - 1})")
        barrier()

        # Check the whole set and write the manifest.
        if rank == 0:
            infos, problems = validate_shards(out, specs, image_shape=image_shape, timeout=validate_timeout)
            if problems:
                raise RuntimeError(f"shards still invalid after generation: {problems}")
            check_coverage(infos, settings.num_samples)
            entries = [manifest_entry(info.path, spec, info.images_sha256) for spec, info in zip(specs, infos)]
            write_manifest(out, entries, attrs)
            write_view(out, infos, attrs)
        barrier()
    finally:
        lock.release()
    return GenerationResult(out, generated, kept)


def _above(bar, say: Callable[[str], None]) -> Callable[[str], None]:
    """`say` printing above the bar (tqdm.write) instead of through it, when it is print."""
    return (lambda message: bar.write(message, file=sys.stdout)) if say is print and not bar.disable else say


def _recorded_checksums(out: Path, attrs: dict) -> dict[str, str]:
    """{file: sha256} from a manifest of this very origin in `out`; empty when there is none (or another's)."""
    try:
        manifest = read_manifest(out)
    except ShardError:
        return {}
    if origin_difference(manifest["meta"], attrs):
        return {}
    return {entry["file"]: entry.get("sha256") for entry in manifest["shards"]}


def _origin_or_bytes_changed(info, attrs: dict, recorded: dict[str, str]) -> str | None:
    """Why a structurally valid shard cannot be kept, or None."""
    difference = origin_difference(info.attrs, attrs)
    if difference:
        return f"made another way ({difference})"
    if info.path.name in recorded and file_sha256(info.path) != recorded[info.path.name]:
        return "its bytes differ from the checksum the manifest recorded for it"
    return None
