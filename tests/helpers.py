"""What the tests share: the tiny settings of the real pipeline, the digits evaluator tests score, a free port, a
corrupted shard."""

import socket

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


class UInt8Images(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) images as the Dataset torch-fidelity's calculate_metrics reads."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index]
