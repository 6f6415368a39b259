"""What the tests share: the tiny settings of the real pipeline, the digits evaluator tests score, a free port, a
corrupted shard, a small filesystem."""

import contextlib
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

import torch

from hpc_ncsn.config import DataConfig

# A 2-level U-Net of width 8 on 8×8 digits: seconds on a CPU.
TINY_NETWORK = ["data.image_size=8", "model.base_channels=8", "model.channel_mults=[1,2]", "model.attn_resolutions=[]"]

# The tiny pipeline: 6 σ levels, 4 training steps, one checkpoint.
TINY = [
    *TINY_NETWORK, "noise.sigma_max=8.5", "noise.num_levels=6", "sampler.steps_per_level=2", "sampler.step_lr=1e-4",
    "train.batch_size=16", "train.sample_images=4", "train.log_every=2", "train.steps=4",
    "train.checkpoint_every=4", "train.sample_every=1000",
]

# The training tests' runs: dropout on (a resume must restore the RNG that draws it), 10 σ levels, a warm-up;
# each test sets its steps and checkpoints.
TINY_TRAINING = [
    *TINY_NETWORK, "model.dropout=0.1", "noise.sigma_max=8.5", "noise.num_levels=10", "sampler.steps_per_level=2",
    "sampler.step_lr=1e-4", "train.batch_size=16", "train.sample_images=4", "train.log_every=2",
    "train.warmup_steps=3", "train.lr=2e-3", "train.sample_every=1000",
]


# The offline digits at 16×16, one channel: what evaluator tests score with the digits classifier.
DIGITS = DataConfig(name="digits", image_size=16, channels=1)


def free_port() -> int:
    """A TCP port on the loopback that nobody listens on now (for a process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def flip_image_byte(path, offset: int = 37) -> None:
    """Change one byte inside an HDF5 shard's image data, leaving the file's structure intact."""
    import h5py

    with h5py.File(path, "r") as handle:
        start = handle["images"].id.get_offset()
    with open(path, "r+b") as raw:
        raw.seek(start + offset)
        value = raw.read(1)[0]
        raw.seek(start + offset)
        raw.write(bytes([value ^ 0x01]))


def small_filesystem(tmp_path: Path, size: str) -> Path:
    """A tmpfs of `size` mounted under tmp_path (needs root and mount rights; the test is skipped without)."""
    mount = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()}); the full-disk test needs one")
    return mount


@contextlib.contextmanager
def read_only_mount(source: Path, target: Path):
    """`source` seen read-only at `target` (a read-only bind mount: even root cannot write there); the test is
    skipped where mounts are not allowed."""
    target.mkdir(parents=True)
    done = subprocess.run(["mount", "--bind", str(source), str(target)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot bind-mount here ({done.stderr.strip()}); the read-only test needs it")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True, text=True, check=True)
        yield target
    finally:
        subprocess.run(["umount", str(target)], capture_output=True)


class UInt8Images(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) images as the Dataset torch-fidelity's calculate_metrics reads."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]


# The only wall-clock limit a test sets on a process or a wait: a guard against a hang, never a speed check. A test
# fails on it only when something is stuck; at load 10 on 2 cores, the slowest subprocess here took about 5 min.
HANG_GUARD_S = 1800


def network_calls(config) -> int:
    """Network evaluations per sample of a config's sampler (a Config), counted by running it on one sample with a
    score that counts its calls: a direct count, for figures the product derives from its own formulas."""
    from hpc_ncsn.sampling import SamplerPlan, sample

    calls = []

    def score(x, sigma):
        calls.append(len(x))
        return torch.zeros_like(x)

    sample(score, torch.zeros(1, 1, 4, 4), SamplerPlan.from_config(config.noise, config.sampler), seed=0,
           indices=torch.arange(1))
    return sum(calls)
