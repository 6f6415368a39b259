"""Statistics as the .npz pytorch-fid and EDM exchange (`hpc-ncsn stats`), and any two inputs compared
(`hpc-ncsn compare`): FID of two Gaussians' files against its closed form, files other tools read, and a sample
folder, its PNGs and its statistics giving one another's numbers."""

import json

import numpy as np
import pytest

from hpc_ncsn.cli import main
from hpc_ncsn.config import EvaluateConfig
from hpc_ncsn.data import load_images
from hpc_ncsn.samples.export import export_png
from hpc_ncsn.samples.real import write_real_shards
from helpers import DIGITS


@pytest.fixture(autouse=True)
def command_threads(monkeypatch):
    """The commands run in this process set the thread variables (as every entry point does); put them back."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, "1")


def gaussian_npz(path, mu, sigma):
    np.savez(path, mu=mu, sigma=sigma)  # what pytorch-fid's --save-stats and EDM's fid.py ref write
    return path


def test_fid_of_two_gaussians_files_is_the_closed_form(tmp_path, capsys):
    """Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ commute, so FID = |μ1 − μ2|² + Σ_i (√a_i − √b_i)² exactly."""
    rng = np.random.default_rng(7)
    dim = 40
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    a, b = rng.uniform(0.1, 4.0, dim), rng.uniform(0.1, 4.0, dim)
    mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
    first = gaussian_npz(tmp_path / "a.npz", mu1, q @ np.diag(a) @ q.T)
    second = gaussian_npz(tmp_path / "b.npz", mu2, q @ np.diag(b) @ q.T)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)

    assert main(["compare", str(first), str(second), "--out", str(tmp_path / "report.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fid"] == pytest.approx(expected, rel=1e-9)
    assert report["kid_mean"] is None and "feature vectors" in report["kid_unavailable"]
    assert json.loads((tmp_path / "report.json").read_text())["fid"] == report["fid"]
    # Same covariance, means apart by a known vector: the mean term alone.
    third = gaussian_npz(tmp_path / "c.npz", mu1 + 0.5, q @ np.diag(a) @ q.T)
    assert main(["compare", str(first), str(third)]) == 0
    assert json.loads(capsys.readouterr().out)["fid"] == pytest.approx(0.25 * dim, rel=1e-9)


def test_a_wrong_input_is_one_line_naming_it(tmp_path, capsys):
    first = gaussian_npz(tmp_path / "a.npz", np.zeros(3), np.eye(3))
    other = gaussian_npz(tmp_path / "b.npz", np.zeros(4), np.eye(4))
    np.savez(tmp_path / "junk.npz", means=np.zeros(3))
    (tmp_path / "stats.txt").write_text("mu")
    for argv, said in ((["compare", str(first), str(other)], "a.npz holds 3-d statistics"),
                       (["compare", str(first), str(tmp_path / "junk.npz")], "not a statistics .npz with 'mu'"),
                       (["compare", str(first), str(tmp_path / "stats.txt")], "is not an .npz file"),
                       (["compare", str(first), str(tmp_path / "nowhere")], "does not exist"),
                       (["compare", str(first), "data:valid"], "data:train or data:test")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and said in err and err.count("\n") == 1, (argv, err)


def test_stats_writes_what_other_tools_read_and_compare_agrees_across_input_kinds(tmp_path, digits_cache, capsys):
    """A sample folder's .npz holds exactly mu (D,) and sigma (D, D) float64 (readable without pickle, as
    pytorch-fid's `f['mu'][:]` and EDM's `dict(np.load(f))` read it); the folder against its own .npz is FID 0; two
    folders compared directly, their PNG exports and their .npz files give one FID; KID needs vectors on both sides."""
    from hpc_ncsn.evaluate.compare import compare
    from hpc_ncsn.evaluate.extractors import DIGITS_EXTRACTOR

    ours = write_real_shards(DIGITS, tmp_path / "ours", 40, 20, split="train", seed=1)
    theirs = write_real_shards(DIGITS, tmp_path / "theirs", 30, 20, split="train", seed=2)
    for folder, name in ((ours, "ours.npz"), (theirs, "theirs.npz")):
        assert main(["stats", str(folder), "--out", str(tmp_path / name), "--cache", str(tmp_path / "ref")]) == 0
    written = json.loads(capsys.readouterr().out.splitlines()[0])
    assert written["n"] == 40 and written["dim"] == 64 and written["extractor"] == DIGITS_EXTRACTOR
    with np.load(tmp_path / "ours.npz", allow_pickle=False) as data:
        assert sorted(data.files) == ["mu", "sigma"]
        assert data["mu"].shape == (64,) and data["sigma"].shape == (64, 64) and data["sigma"].dtype == np.float64

    settings = EvaluateConfig(extractor=DIGITS_EXTRACTOR, kid_subsets=5, kid_subset_size=20, fid_infinity=False)
    common = dict(cache_dir=tmp_path / "ref")
    itself = compare(ours, tmp_path / "ours.npz", DIGITS, settings, **common)
    assert abs(itself["fid"]) < 1e-6 and itself["kid_mean"] is None
    files = compare(tmp_path / "ours.npz", tmp_path / "theirs.npz", DIGITS, settings, **common)["fid"]
    folders = compare(ours, theirs, DIGITS, settings, **common)
    assert folders["fid"] == pytest.approx(files, rel=1e-9) and folders["fid"] > 1
    assert folders["kid_mean"] is not None and folders["precision"] is not None  # both sides have vectors
    assert folders["reference_source"] == str(theirs) and folders["n_reference"] == 30
    export_png(ours, tmp_path / "png")
    pngs = compare(tmp_path / "png", tmp_path / "theirs.npz", DIGITS, settings, **common)
    assert pngs["fid"] == pytest.approx(files, rel=1e-9)
    reverse = compare(tmp_path / "theirs.npz", tmp_path / "png", DIGITS, settings, **common)
    assert reverse["fid"] == pytest.approx(files, rel=1e-9) and reverse["n_reference"] == 40
    data = compare(tmp_path / "ours.npz", "data:train", DIGITS, settings, **common)
    assert data["fid"] > 0 and data["n_reference"] == len(load_images(DIGITS, "train"))
    # The data set's statistics as a file (debug.yaml: the digits at 16×16, the digits classifier): the same FID.
    assert main(["stats", "--config", "configs/debug.yaml", "--out", str(tmp_path / "digits.npz"),
                 "--cache", str(tmp_path / "ref")]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "data:train"
    assert compare(tmp_path / "ours.npz", tmp_path / "digits.npz", DIGITS, settings, **common)["fid"] == \
        pytest.approx(data["fid"], rel=1e-9)
