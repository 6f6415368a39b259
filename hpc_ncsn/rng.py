"""Random numbers: one scheme, keyed by what a number is for, never by which process draws it.

Two kinds of draws share it:

- Sampling: every noise value of sample k is Philox-4x32-10 (Salmon et al., SC 2011)
  of (seed, k, step, position), evaluated with tensor ops on the sample's device
  (`sample_normal`, `sample_uniform`). Sample k is the same whatever the batch it
  sits in or the number of processes that drew it.
- Training: the data order, the flips, the noise levels and the noise of a step's
  global batch come from torch.Generator seeded by `stream_seed(seed, stream, counter)`,
  a well-mixed 63-bit function of the run seed, what the draw is for (`EPOCH_ORDER`,
  `BATCH`) and the epoch or step. A resumed run replays exactly what an
  uninterrupted one draws, and the global batch does not depend on the world size.
"""

from __future__ import annotations

import math

import torch

from .config import SEED_LIMIT

__all__ = [
    "BATCH",
    "EPOCH_ORDER",
    "HELDOUT_NOISE",
    "LANGEVIN_INIT",
    "LANGEVIN_STEP",
    "generator",
    "philox4x32",
    "sample_normal",
    "sample_uniform",
    "stream_seed",
]

# Training streams (stream_seed).
EPOCH_ORDER, BATCH = 1, 2
# Sampling streams (Philox counter word 2).
LANGEVIN_STEP, LANGEVIN_INIT = 0, 1
# The held-out DSM loss's noise (hpc_ncsn.heldout): Philox draws keyed by (held-out example, σ index), so every
# network is scored on the same noise whatever the batch; also its stream_seed for drawing fresh toy points.
HELDOUT_NOISE = 16

_MASK32 = 0xFFFFFFFF
_PHILOX_M = (0xD2511F53, 0xCD9E8D57)
_PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def stream_seed(seed: int, stream: int, counter: int) -> int:
    """A 63-bit seed for torch.Generator from (run seed, stream id, counter), well mixed (SplitMix64's finalizer)."""
    value = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + counter * 0x94D049BB133111EB) % 2**64
    value ^= value >> 31
    value = (value * 0xD6E8FEB86659FD93) % 2**64
    return (value ^ (value >> 32)) % 2**63


def generator(seed: int, stream: int, counter: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch.Generator on `device` seeded with `stream_seed(seed, stream, counter)`."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, stream, counter))


def _mulhilo(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of a·b for uint32 values held in int64, without overflow."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    low = a_lo * b_lo
    mid = a_hi * b_lo + a_lo * b_hi
    lo_full = low + ((mid & 0xFFFF) << 16)
    hi = a_hi * b_hi + (mid >> 16) + (lo_full >> 32)
    return hi & _MASK32, lo_full & _MASK32


def philox4x32(counter: list[torch.Tensor], key: list[torch.Tensor], rounds: int = 10) -> list[torch.Tensor]:
    """Philox-4x32-`rounds` on int64 tensors holding uint32 words (broadcastable).

    counter: 4 words, key: 2 words. Returns 4 words of uniformly distributed bits.
    """
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_index in range(rounds):
        if round_index:
            k0 = (k0 + _PHILOX_W[0]) & _MASK32
            k1 = (k1 + _PHILOX_W[1]) & _MASK32
        hi0, lo0 = _mulhilo(c0, _PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, _PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def _random_words(seed: int, indices: torch.Tensor, step: int, stream: int, numel: int) -> torch.Tensor:
    """(N, 4·⌈numel/4⌉) int64 tensor of random uint32 words for samples `indices`."""
    device = indices.device
    blocks = torch.arange((numel + 3) // 4, device=device, dtype=torch.int64)[None, :]
    key = [indices.to(torch.int64)[:, None] & _MASK32, torch.full_like(indices, seed, dtype=torch.int64)[:, None]]
    zeros = torch.zeros_like(blocks)
    counter = [blocks, zeros + (step & _MASK32), zeros + stream, zeros + (step >> 32)]
    words = philox4x32(counter, key)
    return torch.stack(words, dim=-1).reshape(indices.shape[0], -1)


def _check_seed(seed: int, indices: torch.Tensor) -> None:
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"sampler seed must be in [0, 2**32), got {seed}")
    if indices.ndim != 1:
        raise ValueError(f"sample indices must be a 1-D tensor, got shape {tuple(indices.shape)}")


def sample_uniform(seed: int, indices: torch.Tensor, shape: tuple[int, ...], *, step: int = 0,
                   stream: int = LANGEVIN_INIT, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U(0, 1) values of shape (N, *shape) for sample `indices` of run `seed` (24-bit resolution)."""
    _check_seed(seed, indices)
    numel = math.prod(shape)
    words = _random_words(seed, indices, step, stream, numel)[:, :numel]
    return ((words >> 8).to(dtype) + 0.5).mul_(2.0**-24).reshape(indices.shape[0], *shape)


def sample_normal(seed: int, indices: torch.Tensor, shape: tuple[int, ...], *, step: int,
                  stream: int = LANGEVIN_STEP, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """N(0, 1) values of shape (N, *shape) for sample `indices` at Langevin `step` (Box–Muller)."""
    _check_seed(seed, indices)
    numel = math.prod(shape)
    half = (numel + 1) // 2
    words = _random_words(seed, indices, step, stream, 2 * half)[:, : 2 * half]
    uniform = ((words >> 8).to(dtype) + 0.5).mul_(2.0**-24)
    u1, u2 = uniform[:, :half], uniform[:, half:]
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    normal = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)[:, :numel]
    return normal.reshape(indices.shape[0], *shape)
