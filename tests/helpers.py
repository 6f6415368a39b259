"""Shared settings of the tests that run the real pipeline at a tiny size."""

# A 2-level U-Net of width 8 on 8×8 digits, 6 σ levels, 4 training steps: seconds on a CPU.
TINY = [
    "data.image_size=8", "model.base_channels=8", "model.channel_mults=[1,2]", "model.attn_resolutions=[]",
    "noise.sigma_max=8.5", "noise.num_levels=6", "sampler.steps_per_level=2", "sampler.step_lr=1e-4",
    "train.batch_size=16", "train.sample_images=4", "train.log_every=2", "train.steps=4",
    "train.checkpoint_every=4", "train.sample_every=1000",
]


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
