"""Sample folders for other tools: PNG files torch-fidelity reads give our FID, the .npz and the Dataset hold the
shards' bytes, and a folder that fails its manifest is not exported."""

import json
import os

import numpy as np
import pytest
import torch

from hpc_ncsn.cli import main
from hpc_ncsn.config import EvaluateConfig
from hpc_ncsn.data import load_images
from hpc_ncsn.samples.real import write_real_shards
from hpc_ncsn.samples.shards import read_shard
from helpers import DIGITS, HANG_GUARD_S, read_only_mount

@pytest.fixture
def samples(tmp_path, digits_cache):
    return write_real_shards(DIGITS, tmp_path / "samples", 50, 20, split="train", seed=1)  # 3 shards: 20, 20, 10


def shard_images(folder) -> np.ndarray:
    return np.concatenate([read_shard(path)[0] for path in sorted(folder.glob("shard-*.h5"))])


@pytest.mark.slow  # torch-fidelity's own pass over the PNGs and the 1,797 reference digits
def test_exported_pngs_scored_by_torch_fidelity_give_our_fid(samples, tmp_path):
    import torch_fidelity

    from hpc_ncsn.evaluate.evaluator import evaluate
    from hpc_ncsn.evaluate.extractors import DIGITS_EXTRACTOR, register_extractors

    assert main(["export", "--samples", str(samples), "--png", str(tmp_path / "png")]) == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir())[:2] == ["000000.png", "000001.png"]
    ours = evaluate(samples, DIGITS, EvaluateConfig(extractor=DIGITS_EXTRACTOR, kid_subsets=5, kid_subset_size=20),
                    cache_dir=tmp_path / "reference")
    register_extractors()
    reference = load_images(DIGITS).expand(-1, 3, -1, -1).contiguous()

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(reference)

        def __getitem__(self, index):
            return reference[index]

    theirs = torch_fidelity.calculate_metrics(input1=str(tmp_path / "png"), input2=Images(), fid=True,
                                              feature_extractor=DIGITS_EXTRACTOR, cuda=False, verbose=False,
                                              cache=False, save_cpu_ram=True)
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)


def test_the_npz_and_the_dataset_hold_the_shards_bytes(samples, tmp_path):
    from hpc_ncsn.samples.export import ShardDataset

    assert main(["export", "--samples", str(samples), "--npz", str(tmp_path / "samples.npz")]) == 0
    images = shard_images(samples)
    assert np.array_equal(np.load(tmp_path / "samples.npz")["arr_0"], images)
    dataset = ShardDataset(samples)
    assert len(dataset) == 50 and dataset[0].shape == (1, 16, 16) and dataset[0].dtype == torch.uint8
    for index in (0, 19, 20, 41, 49):
        assert np.array_equal(dataset[index].numpy().transpose(1, 2, 0), images[index])
    with pytest.raises(IndexError):
        dataset[50]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=25)))
    assert batch.shape == (25, 1, 16, 16)


def test_a_folder_that_fails_its_manifest_is_not_exported_and_export_needs_a_target(samples, tmp_path, capsys):
    from helpers import flip_image_byte

    assert main(["export", "--samples", str(samples)]) == 2
    assert "pass one of --png DIR or --npz FILE" in capsys.readouterr().err
    flip_image_byte(samples / "shard-00001.h5")
    assert main(["export", "--samples", str(samples), "--npz", str(tmp_path / "x.npz")]) == 2
    assert "shard-00001.h5" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()


def test_statistics_npz_round_trip_and_a_wrong_one_is_named(samples, tmp_path, capsys):
    """--save-stats writes the samples' μ/Σ; --ref reads them back: a folder against its own statistics has FID 0,
    and another folder against them has the FID of the two sets of statistics."""
    from hpc_ncsn.evaluate.evaluator import evaluate, load_stats_npz
    from hpc_ncsn.evaluate.extractors import DIGITS_EXTRACTOR
    from hpc_ncsn.evaluate.scores import frechet_distance

    other = write_real_shards(DIGITS, tmp_path / "other", 40, 20, split="train", seed=2)
    settings = EvaluateConfig(extractor=DIGITS_EXTRACTOR, kid_subsets=5, kid_subset_size=20)
    common = dict(cache_dir=tmp_path / "reference")
    evaluate(samples, DIGITS, settings, save_stats=tmp_path / "a.npz", **common)
    evaluate(other, DIGITS, settings, save_stats=tmp_path / "b.npz", **common)
    itself = evaluate(samples, DIGITS, settings, reference_npz=tmp_path / "a.npz", **common)
    assert abs(itself["fid"]) < 1e-6 and itself["kid_mean"] is None and "KID needs" in itself["kid_unavailable"]
    against = evaluate(other, DIGITS, settings, reference_npz=tmp_path / "a.npz", **common)
    expected = frechet_distance(*load_stats_npz(tmp_path / "b.npz"), *load_stats_npz(tmp_path / "a.npz"))
    assert against["fid"] == pytest.approx(expected, rel=1e-12) and against["fid"] > 1
    np.savez(tmp_path / "wrong.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="2048-d, digits-classifier's features are 64-d"):
        evaluate(samples, DIGITS, settings, reference_npz=tmp_path / "wrong.npz", **common)
    np.savez(tmp_path / "junk.npz", means=np.zeros(3))
    with pytest.raises(ValueError, match="not a statistics .npz with 'mu' and 'sigma'"):
        evaluate(samples, DIGITS, settings, reference_npz=tmp_path / "junk.npz", **common)


def test_evaluate_images_of_a_png_folder_gives_the_shards_scores_and_names_a_bad_file(samples, tmp_path):
    """`hpc-ncsn evaluate --images DIR` (EDM's or any tool's PNGs) scores what `--samples` scores."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    root = Path(__file__).resolve().parent.parent

    def evaluate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hpc_ncsn", "evaluate", *args, "--config", str(config),
                               "--cache", str(tmp_path / "reference"), "--batch-size", "10"], capture_output=True,
                              text=True, timeout=HANG_GUARD_S, env={**os.environ, "PYTHONPATH": str(root)})

    config = tmp_path / "digits.yaml"
    config.write_text("data: {name: digits, image_size: 16, channels: 1}\n")
    assert main(["export", "--samples", str(samples), "--png", str(tmp_path / "png")]) == 0
    nested = tmp_path / "png" / "000000"  # EDM writes into subfolders of 1,000: 000000/000000.png ...
    nested.mkdir()
    for path in sorted((tmp_path / "png").glob("*.png"))[20:]:
        path.rename(nested / path.name)
    assert evaluate("--samples", str(samples), "--out", str(tmp_path / "shards.json")).returncode == 0
    assert evaluate("--images", str(tmp_path / "png"), "--out", str(tmp_path / "png.json")).returncode == 0
    shards, pngs = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("shards", "png"))
    assert pngs["n"] == shards["n"] == 50 and pngs["n_reference"] == shards["n_reference"]
    # The same images in the same extractor batches (10: the shards' 20, 20, 10 and the files' 50 split alike), but
    # in two processes: the float32 extractor may take another kernel or thread split in each, so its features agree
    # to float32 rounding (~1e-7 relative), not bit for bit. FID and KID are quadratic in the features: 1e-6 covers
    # that with margin. (Seen: 1.8e-12 apart on another CPU, where 1e-12 had been asked.)
    assert pngs["fid"] == pytest.approx(shards["fid"], rel=1e-6)
    assert pngs["kid_mean"] == pytest.approx(shards["kid_mean"], rel=1e-6)

    Image.new("RGB", (16, 16)).save(nested / "000050.png")
    for args, message in (
            (["--images", str(tmp_path / "png")], "000050.png: RGB 16×16, but digits images are L 16×16"),
            (["--images", str(tmp_path / "empty")], "empty: not a folder"),
            (["--samples", str(samples), "--reference", "test"],
             "data.name=digits has no test split (1,797 images in all); use evaluate.reference=train "
             "(--reference train)")):
        result = evaluate(*args)
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_evaluating_a_read_only_sample_folder_says_so_before_computing_and_out_puts_the_report_elsewhere(
        samples, tmp_path, capsys, monkeypatch):
    from hpc_ncsn.evaluate.extractors import DIGITS_EXTRACTOR

    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # the command sets them: put back
        value = os.environ.get(name)
        monkeypatch.setenv(name, value or "1")
        if value is None:
            monkeypatch.delenv(name)
    args = ["evaluate", "--extractor", DIGITS_EXTRACTOR, "--batch-size", "25", "--cache", str(tmp_path / "cache")]
    with read_only_mount(samples, tmp_path / "read-only") as read_only:
        assert main([*args, "--samples", str(read_only)]) == 2
        error = capsys.readouterr().err
        assert error == (f"error: cannot write the report {read_only / 'metrics.json'}: {read_only} is not writable "
                         "(Read-only file system); write it elsewhere (hpc-ncsn evaluate --out FILE)\n")
        assert not (tmp_path / "cache").exists()  # refused before the reference statistics were computed
        assert main([*args, "--samples", str(read_only), "--out", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n"] == 50 and report["fid"] > 0
