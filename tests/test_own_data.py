"""Your own data: image folders and zips (hpc_ncsn.image_folder) and CIFAR-10 from a local archive (hpc_ncsn.cifar10),
with real PNG/JPEG files and a real tar.gz of pickle batches written by the tests."""

import io
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from hpc_ncsn.cli import main
from hpc_ncsn.cifar10 import BATCHES, FOLDER, UNVERIFIED, official_md5
from hpc_ncsn.config import ConfigError, load_config
from hpc_ncsn.data import holdout_split, load_dataset, load_images, load_training_data
from hpc_ncsn.errors import UserError
from hpc_ncsn.heldout import heldout_data

pytestmark = pytest.mark.usefixtures("digits_cache")  # a fresh HPC_NCSN_CACHE: the decoded arrays land there


def colour(rgb, size=(8, 8)) -> Image.Image:
    return Image.new("RGB", size, tuple(rgb))


def folder_config(path, *more):
    return load_config(None, ["data.name=folder", f"data.path={path}", "model.attn_resolutions=[]", *more])


def write_images(folder, count: int) -> list[tuple[int, int, int]]:
    """`count` solid-colour PNGs in nested folders; returns the colours in sorted-name order."""
    colours = [(17 * i % 256, 101 * i % 256, 53 * i % 256) for i in range(count)]
    for i, rgb in enumerate(colours):
        target = folder / f"part{i % 3}" / f"img{i:03d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        colour(rgb, (10 + i % 4, 9 + i % 5)).save(target)
    names = sorted(f"part{i % 3}/img{i:03d}.png" for i in range(count))
    return [colours[int(name[-7:-4])] for name in names]


def test_a_folder_is_read_recursively_in_name_order_and_grey_is_the_601_luma(tmp_path):
    colours = write_images(tmp_path / "imgs", 12)
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    rgb = load_images(folder_config(tmp_path / "imgs", "data.channels=3", "data.image_size=8").data)
    assert rgb.shape == (12, 3, 8, 8) and rgb.dtype == torch.uint8
    assert torch.equal(rgb[:, :, 3, 3], torch.tensor(colours, dtype=torch.uint8))  # solid colours survive resizing
    grey = load_images(folder_config(tmp_path / "imgs", "data.channels=1", "data.image_size=8").data)
    luma = [round((r * 299 + g * 587 + b * 114) / 1000) for r, g, b in colours]
    assert (grey[:, 0, 3, 3].int() - torch.tensor(luma)).abs().max() <= 1  # PIL rounds its fixed-point luma


def test_crop_takes_the_centred_square_and_exact_refuses_another_size(tmp_path):
    image = Image.new("RGB", (96, 32), (255, 0, 0))  # red | green (the centred 32×32 and 8 columns more) | blue
    image.paste((0, 255, 0), (24, 0, 72, 32))
    image.paste((0, 0, 255), (72, 0, 96, 32))
    image.save(tmp_path / "wide.jpg", quality=100)
    cropped = load_images(folder_config(tmp_path, "data.channels=3", "data.image_size=8").data)
    assert cropped.shape == (1, 3, 8, 8)
    assert cropped[0, 1].min() >= 250 and cropped[0, 0].max() <= 5 and cropped[0, 2].max() <= 5  # all green
    with pytest.raises(UserError, match=r"wide.jpg is 96×32, not data.image_size=8 square.*data.fit=crop"):
        load_images(folder_config(tmp_path, "data.channels=3", "data.image_size=8", "data.fit=exact").data)


def test_a_zip_reads_as_its_folder_and_the_cache_is_reused(tmp_path):
    write_images(tmp_path / "imgs", 7)
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted((tmp_path / "imgs").rglob("*.png")):
            handle.write(path, path.relative_to(tmp_path / "imgs"))
    from_folder = load_images(folder_config(tmp_path / "imgs", "data.channels=3", "data.image_size=8").data)
    from_zip = load_images(folder_config(archive, "data.channels=3", "data.image_size=8").data)
    assert torch.equal(from_folder, from_zip)
    (tmp_path / "imgs" / "part0" / "img000.png").unlink()  # the folder changed: not the cached array any more
    assert len(load_images(folder_config(tmp_path / "imgs", "data.channels=3", "data.image_size=8").data)) == 6


def test_bad_folders_are_one_line_each(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no .png/.jpg/.jpeg file"):
        load_images(folder_config(tmp_path / "empty").data)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(UserError, match=r"broken/a.png cannot be read as an image.*remove or replace it"):
        load_images(folder_config(tmp_path / "broken").data)
    with pytest.raises(ConfigError, match="data.name=folder needs data.path="):
        load_config(None, ["data.name=folder"])
    with pytest.raises(ConfigError, match="no test split.*evaluate.reference=train"):
        load_dataset(folder_config(tmp_path / "broken").data, "test")
    assert main(["plan", "--config", "configs/debug.yaml", "data.name=folder",
                 f"data.path={tmp_path / 'missing'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing does not exist" in err[0]


def test_training_and_the_heldout_dsm_split_a_folder_as_they_split_digits(tmp_path):
    write_images(tmp_path / "imgs", 20)
    config = folder_config(tmp_path / "imgs", "data.channels=3", "data.image_size=8")
    every = load_images(config.data)
    train_rows, held_rows = holdout_split(20)
    assert len(held_rows) == 2 and not set(train_rows.tolist()) & set(held_rows.tolist())
    assert torch.equal(load_training_data(config), every[train_rows])
    held, where = heldout_data(config)
    assert torch.equal(held, every[held_rows].float() / 255) and "never trained on" in where


# CIFAR-10 from a local archive -----------------------------------------------------------------------------

def cifar_archive(path, per_batch: int = 4) -> dict:
    """A tar.gz in the official layout (cifar-10-batches-py/, pickled dicts of uint8 N × 3072 and labels)."""
    rng = np.random.default_rng(0)
    batches = {name: {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                      "labels": [int(x) for x in rng.integers(0, 10, per_batch)], "batch_label": name}
               for name in BATCHES}
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per_batch}
    with tarfile.open(path, "w:gz") as archive:
        for name, entry in {**batches, "batches.meta": meta}.items():
            data = pickle.dumps(entry)
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return batches


def test_fetch_cifar10_refuses_another_archive_naming_the_official_md5(tmp_path, capsys):
    cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    assert official_md5() == "c58f30108f718f92721af3b95e74349a"  # what torchvision publishes (and the Toronto page)
    code = main(["fetch", "cifar10", "--from", str(tmp_path / "cifar-10-python.tar.gz"), "--cache", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "is not the official cifar-10-python.tar.gz's c58f30108f718f92721af3b95e74349a" in err[0]
    assert "--no-verify" in err[0] and not (tmp_path / "data" / FOLDER).exists()


def test_a_format_valid_archive_with_no_verify_loads_through_torchvision(tmp_path, capsys):
    batches = cifar_archive(tmp_path / "small.tar.gz")
    assert main(["fetch", "cifar10", "--from", str(tmp_path / "small.tar.gz"), "--cache", str(tmp_path),
                 "--no-verify"]) == 0
    assert (tmp_path / "data" / FOLDER / UNVERIFIED).is_file()
    config = load_config(None, ["data.name=cifar10", "data.channels=3", "data.image_size=32",
                                "model.attn_resolutions=[16]", f"data.data_root={tmp_path / 'data'}"])
    images, labels = load_dataset(config.data, "test")
    expected = torch.from_numpy(batches["test_batch"]["data"]).reshape(-1, 3, 32, 32)
    assert torch.equal(images, expected) and labels.tolist() == batches["test_batch"]["labels"]
    assert len(load_images(config.data, "train")) == 5 * 4
    assert "placed with --no-verify" in capsys.readouterr().err


def test_an_archive_that_is_not_cifar_is_refused_before_anything_is_placed(tmp_path, capsys):
    with tarfile.open(tmp_path / "other.tar.gz", "w:gz") as archive:
        data = pickle.dumps({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]})
        for name in BATCHES + ("batches.meta",):
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    assert main(["fetch", "cifar10", "--from", str(tmp_path / "other.tar.gz"), "--cache", str(tmp_path),
                 "--no-verify"]) == 2
    assert "not N × 3072 uint8" in capsys.readouterr().err and not (tmp_path / "data" / FOLDER).exists()


def test_plan_measures_sigma_1_on_a_folder(tmp_path, capsys):
    for i in range(20):  # half black, half white: the largest distance is between a black and a white image
        colour((255, 255, 255) if i % 2 else (0, 0, 0)).save(tmp_path / f"{i:02d}.png")
    assert main(["plan", "--config", "configs/debug.yaml", "data.name=folder", f"data.path={tmp_path}",
                 "data.channels=3", "data.image_size=4", "model.attn_resolutions=[]"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["sigma_max"] == pytest.approx((3 * 4 * 4) ** 0.5, rel=1e-6)  # √(C·H·W) at model scale [0, 1]


def test_a_zip_larger_than_its_bound_decompressed_is_refused_unread(tmp_path, monkeypatch):
    from hpc_ncsn import image_folder

    with zipfile.ZipFile(tmp_path / "big.zip", "w", zipfile.ZIP_DEFLATED) as handle:
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64)).save(buffer, "PNG", compress_level=0)  # ≥ 12 kB of pixels
        handle.writestr("a.png", buffer.getvalue())
    monkeypatch.setattr(image_folder, "MAX_ZIP_BYTES", 4096)
    with pytest.raises(UserError, match=r"big.zip: its images would take .* decompressed, over the"):
        load_images(folder_config(tmp_path / "big.zip").data)
