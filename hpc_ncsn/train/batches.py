"""What a training step reads: the data set on the device, the step's global batch, this rank's slices.

Everything random in a batch is a function of (seed, step) (hpc_ncsn.rng's training
streams): the data order (a fresh permutation per epoch), the flips, the noise levels
and the noise of the whole global batch; each rank takes its slice. So the data
position is the step, a resumed run replays what an uninterrupted one reads, and
the global batch does not depend on the number of processes.
"""

from __future__ import annotations

import functools

import torch

from .. import rng
from ..config import Config, ConfigError, TrainConfig
from ..data import load_images, to_model_scale, toy_mixture
from ..heldout import training_rows

__all__ = ["batch_indices", "global_batch", "load_training_data", "micro_batch_size", "micro_slices"]


def load_training_data(config: Config) -> torch.Tensor:
    """The training set: uint8 images (N, C, H, W), or float toy points (N, 2) drawn with the run seed. A data set
    without a test split loses its held-out rows here (hpc_ncsn.heldout.training_rows): no run trains on them."""
    if config.data.name == "toy2d":
        mixture = toy_mixture(config.data.toy_means, config.data.toy_weights, config.data.toy_std)
        return mixture.sample(config.data.toy_size, torch.Generator().manual_seed(config.train.seed)).float()
    images = load_images(config.data)
    rows = training_rows(config, images.shape[0])
    return images if rows is None else images[rows]


@functools.lru_cache(maxsize=4)
def _epoch_order(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the data that epoch `epoch` reads (drawn once, then reused by its steps)."""
    return torch.randperm(num_items, generator=rng.generator(seed, rng.EPOCH_ORDER, epoch))


def batch_indices(num_items: int, global_batch: int, step: int, seed: int) -> torch.Tensor:
    """Data indices of the global batch of `step`: epochs of fresh permutations, read in order."""
    positions = torch.arange(step * global_batch, (step + 1) * global_batch)
    epochs, offsets = positions // num_items, positions % num_items
    first, last = step * global_batch // num_items, ((step + 1) * global_batch - 1) // num_items
    if first == last:
        return _epoch_order(num_items, seed, first)[offsets]
    out = torch.empty(global_batch, dtype=torch.int64)
    for epoch in range(first, last + 1):
        mask = epochs == epoch
        out[mask] = _epoch_order(num_items, seed, epoch)[offsets[mask]]
    return out


def global_batch(data: torch.Tensor, train: TrainConfig, num_levels: int, step: int):
    """(x, levels, noise) of the whole global batch of `step`, model scale, on the device `data` lives on.

    The data stay there as uint8; indices go over in one small copy, and the flips,
    levels and noise are drawn there by a generator seeded from (seed, step): on a
    GPU nothing waits for it, and a given device type gives the same batch every time.
    """
    device = data.device
    index = batch_indices(data.shape[0], train.batch_size, step, train.seed)
    if device.type == "cuda":
        index = index.pin_memory().to(device, non_blocking=True)
    generator = rng.generator(train.seed, rng.BATCH, step, device)
    x = data[index]
    if x.dtype == torch.uint8:
        x = to_model_scale(x)
    if train.random_flip and x.ndim == 4:
        flip = torch.rand(x.shape[0], generator=generator, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    levels = torch.randint(0, num_levels, (x.shape[0],), generator=generator, device=device)
    noise = torch.randn(x.shape, generator=generator, device=device)
    return x, levels, noise


def micro_batch_size(train: TrainConfig, world: int) -> int:
    """Examples per rank and micro-batch; the global batch must split evenly over ranks × accumulation."""
    per_step = world * train.grad_accum
    if train.batch_size % per_step:
        raise ConfigError(
            f"train.batch_size={train.batch_size} must be divisible by processes × grad_accum = "
            f"{world} × {train.grad_accum}; choose a multiple of {per_step}"
        )
    return train.batch_size // per_step


def micro_slices(train: TrainConfig, world: int, rank: int) -> list[slice]:
    """This rank's slice of the global batch for each of the `grad_accum` micro-batches."""
    micro = micro_batch_size(train, world)
    return [slice((k * world + rank) * micro, (k * world + rank + 1) * micro) for k in range(train.grad_accum)]
