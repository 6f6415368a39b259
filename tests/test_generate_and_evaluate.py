"""Generation into shards and evaluation, with real processes, real HDF5 files and torch-fidelity."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_ncsn.config import arm_overrides, load_config
from hpc_ncsn.samples.shards import ShardError, file_sha256, read_manifest, read_shard
from hpc_ncsn.samples.validation import validate_shard
from helpers import HANG_GUARD_S, TINY, UInt8Images, free_port

pytestmark = pytest.mark.slow  # real processes: train.py, hpc-ncsn generate/evaluate, torchrun

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HPC_NCSN_CACHE": str(tmp_path / "cache")}


def check(cmd: list[str], environment: dict, timeout: int = HANG_GUARD_S) -> str:
    result = subprocess.run(cmd, env=environment, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    out = folder / "run"
    check([sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/debug.yaml"), *TINY,
           f"train.out_dir={out}"], env(folder))
    return out


def generate_cmd(run: Path, out: Path, *extra: str, launcher: tuple[str, ...] = ()) -> list[str]:
    args = ["generate", "--run-dir", str(run), "--out", str(out), "--num-samples", "12", "--shard-size", "5",
            "--batch-size", "4", *extra]
    return [*launcher, "-m", "hpc_ncsn", *args] if launcher else [sys.executable, "-m", "hpc_ncsn", *args]


def shard_digests(folder: Path) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in sorted(folder.glob("shard-*.h5"))}


def test_generation_writes_valid_shards_and_a_manifest(trained_run, tmp_path):
    out = tmp_path / "samples"
    check(generate_cmd(trained_run, out), env(tmp_path))
    assert sorted(shard_digests(out)) == ["shard-00000.h5", "shard-00001.h5", "shard-00002.h5"]
    images, indices, attrs = read_shard(out / "shard-00002.h5")
    assert images.dtype == np.uint8 and images.shape == (2, 8, 8, 1)
    assert indices.tolist() == [10, 11]
    assert attrs["arm"] == "geometric" and attrs["checkpoint"] == "step-00000004"
    assert attrs["sampler"]["step_rule"] == "ncsn" and attrs["noise"]["ladder"] == "geometric"
    manifest = json.loads((out / "manifest.json").read_text())
    assert [entry["count"] for entry in manifest["shards"]] == [5, 5, 2]
    assert {entry["file"]: entry["sha256"] for entry in manifest["shards"]} == shard_digests(out)

    # samples.h5: the folder as one file, for h5py/h5dump users; it still reads after the folder moves.
    import h5py

    moved = out.rename(tmp_path / "moved")
    with h5py.File(moved / "samples.h5", "r") as view:
        assert view["images"].is_virtual and view["images"].shape == (12, 8, 8, 1)
        assert np.array_equal(view["images"][()], np.concatenate([read_shard(moved / f"shard-0000{k}.h5")[0]
                                                                   for k in range(3)]))
        assert view["indices"][()].tolist() == list(range(12))
        assert view.attrs["num_samples"] == 12 and view.attrs["arm"] == "geometric"
        assert json.loads(view.attrs["sampler"]) == manifest["meta"]["sampler"]


def test_two_processes_write_byte_identical_shards(trained_run, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    check(generate_cmd(trained_run, one), env(tmp_path))
    torchrun = (str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()))
    check(generate_cmd(trained_run, two, launcher=torchrun), env(tmp_path))
    assert shard_digests(one) == shard_digests(two)


def test_rerun_regenerates_only_missing_or_invalid_shards_identically(trained_run, tmp_path):
    out = tmp_path / "samples"
    check(generate_cmd(trained_run, out), env(tmp_path))
    original = shard_digests(out)
    (out / "shard-00000.h5").unlink()
    data = (out / "shard-00001.h5").read_bytes()
    (out / "shard-00001.h5").write_bytes(data[: len(data) // 2])
    with pytest.raises(ShardError, match="shard-00001.h5"):
        validate_shard(out / "shard-00001.h5")
    mtime = (out / "shard-00002.h5").stat().st_mtime_ns
    report = json.loads(check(generate_cmd(trained_run, out), env(tmp_path)).strip().splitlines()[-1])
    assert sorted(report["generated"]) == [0, 1] and report["kept"] == [2]
    assert (out / "shard-00002.h5").stat().st_mtime_ns == mtime
    assert shard_digests(out) == original


def test_changed_sampler_regenerates_everything(trained_run, tmp_path):
    out = tmp_path / "samples"
    check(generate_cmd(trained_run, out), env(tmp_path))
    report = json.loads(check(generate_cmd(trained_run, out, "sampler.step_rule=snr"), env(tmp_path)).splitlines()[-1])
    assert sorted(report["generated"]) == [0, 1, 2]
    assert read_shard(out / "shard-00000.h5")[2]["arm"] == "snr"


def test_sampler_presets_on_the_same_network_record_their_nfe_and_default_shards_no_new_keys(trained_run, tmp_path):
    check(generate_cmd(trained_run, tmp_path / "langevin"), env(tmp_path))
    meta = read_manifest(tmp_path / "langevin")["meta"]
    # Folders drawn before the sampler kinds existed recorded no such keys; a default one still records none.
    assert not set(meta["sampler"]) & {"kind", "ladder", "num_levels", "sigma_max", "sigma_min", "rho",
                                       "corrector_steps"}
    assert meta["network_evaluations"] == 6 * 2 + 1  # TINY: L = 6, T = 2, the final step
    for arm, nfe in (("edm", 35), ("ancestral", 6), ("linear-sampled", 13)):
        out = tmp_path / arm
        overrides = [item for item in arm_overrides(arm) if not item.startswith("noise.")]
        check(generate_cmd(trained_run, out, *overrides), env(tmp_path))
        meta = read_manifest(out)["meta"]
        assert (meta["arm"], meta["network_evaluations"]) == (arm, nfe)
        assert read_shard(out / "shard-00000.h5")[2]["network_evaluations"] == nfe
        assert shard_digests(out) != shard_digests(tmp_path / "langevin")


def test_bf16_network_precision_is_recorded_redraws_the_shards_and_stays_close(trained_run, tmp_path):
    out = tmp_path / "samples"
    check(generate_cmd(trained_run, out, "--precision", "fp32"), env(tmp_path))
    fp32 = {p.name: read_shard(p)[0] for p in sorted(out.glob("shard-*.h5"))}
    assert read_shard(out / "shard-00000.h5")[2]["network_precision"] == "fp32"
    report = json.loads(check(generate_cmd(trained_run, out, "--precision", "bf16", "--channels-last"),
                              env(tmp_path)).splitlines()[-1])
    assert sorted(report["generated"]) == [0, 1, 2] and report["kept"] == []
    for name, images in fp32.items():
        fast, _, attrs = read_shard(out / name)
        assert attrs["network_precision"] == "bf16"
        difference = np.abs(fast.astype(int) - images.astype(int))
        # Measured: mean 0.07–0.15 levels, largest 8–14 (of 255) over the three shards.
        assert 0 < difference.mean() < 1 and difference.max() <= 64, (difference.mean(), difference.max())
    # auto: bf16 where this CPU computes it natively (the bf16 shards kept), else fp32 (all redrawn)
    from hpc_ncsn.network import native_bf16

    native = native_bf16(torch.device("cpu"))
    report = json.loads(check(generate_cmd(trained_run, out, "--precision", "auto"), env(tmp_path)).splitlines()[-1])
    assert (report["kept"], report["generated"]) == (([0, 1, 2], []) if native else ([], [0, 1, 2]))
    assert read_shard(out / "shard-00000.h5")[2]["network_precision"] == ("bf16" if native else "fp32")


def test_settings_that_change_only_the_speed_keep_the_shards(trained_run, tmp_path):
    out = tmp_path / "samples"
    check(generate_cmd(trained_run, out), env(tmp_path))
    report = json.loads(check(generate_cmd(trained_run, out, "--channels-last"), env(tmp_path)).splitlines()[-1])
    assert report["generated"] == [] and report["kept"] == [0, 1, 2]


def test_the_run_config_supplies_what_the_command_line_leaves_out(trained_run, tmp_path):
    out = tmp_path / "samples"
    command = [sys.executable, "-m", "hpc_ncsn", "generate", "--run-dir", str(trained_run), "--out", str(out),
               "generate.num_samples=7", "generate.shard_size=4"]  # batch size: the run's generate.batch_size
    check(command, env(tmp_path))
    assert sorted(shard_digests(out)) == ["shard-00000.h5", "shard-00001.h5"]
    assert json.loads((out / "manifest.json").read_text())["meta"]["num_samples"] == 7


def test_killed_generator_leaves_no_bad_final_shard_and_rerun_completes_identically(trained_run, tmp_path):
    reference = tmp_path / "reference"
    check(generate_cmd(trained_run, reference), env(tmp_path))
    out = tmp_path / "killed"
    process = subprocess.Popen(generate_cmd(trained_run, out), env=env(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + HANG_GUARD_S  # a hang guard only: a busy machine may take minutes to reach a shard
    while time.time() < deadline and process.poll() is None:
        if out.is_dir() and any(out.glob("shard-00000.h5")):
            break
        time.sleep(0.001)
    process.send_signal(signal.SIGKILL)
    process.wait()
    for shard in out.glob("shard-*.h5"):
        validate_shard(shard)  # every final-named shard is complete
    check(generate_cmd(trained_run, out), env(tmp_path))
    assert shard_digests(out) == shard_digests(reference)
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def evaluate_cmd(samples: Path, *extra: str, launcher: tuple[str, ...] = ()) -> list[str]:
    args = ["evaluate", "--samples", str(samples), "--batch-size", "5", *extra]
    return [*launcher, "-m", "hpc_ncsn", *args] if launcher else [sys.executable, "-m", "hpc_ncsn", *args]


def test_generation_and_evaluation_report_progress_in_a_job_log(trained_run, tmp_path):
    """Not a terminal (a Slurm log): whole progress lines with counts, rate and ETA on stderr; results on stdout."""
    def stderr_lines(cmd: list[str]) -> list[str]:
        result = subprocess.run(cmd, env=env(tmp_path), capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "\r" not in result.stderr
        return result.stderr.splitlines()

    samples = tmp_path / "samples"
    generated = stderr_lines(generate_cmd(trained_run, samples))
    assert [line for line in generated if line.startswith("generate:")][-1].split("|")[2].startswith(" 12/12 samples")
    scored = stderr_lines(evaluate_cmd(samples))
    reference = [line for line in scored if line.startswith("reference statistics (train):")]
    assert reference[-1].split("|")[2].startswith(" 1797/1797 images [")
    assert [line for line in scored if line.startswith("evaluate:")][-1].split("|")[2].startswith(" 12/12 images")
    # A rerun draws nothing and finds the reference statistics cached: no bars to speak of.
    assert not [line for line in stderr_lines(evaluate_cmd(samples)) if line.startswith("reference statistics")]
    assert not [line for line in stderr_lines(generate_cmd(trained_run, samples)) if line.startswith("generate:")]


def test_fid_from_one_and_two_processes_agree(trained_run, tmp_path):
    samples = tmp_path / "samples"
    check(generate_cmd(trained_run, samples), env(tmp_path))
    check(evaluate_cmd(samples, "--out", str(tmp_path / "one.json")), env(tmp_path))
    torchrun = (str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()))
    check(evaluate_cmd(samples, "--out", str(tmp_path / "two.json"), launcher=torchrun), env(tmp_path))
    one, two = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    assert one["n"] == two["n"] == 12 and one["n_reference"] == 1797
    # The float64 sums do not depend on the process count (test_scores: 1e-12). The float32 extractor does depend on
    # the threads each process gets (here 2 for one process, 1 each for two): measured 1.3e-8 (FID) and 2.7e-8
    # (KID) relative, against 2e-15 and 0 between 1 and 2 processes of one thread each. What float32 promises is
    # features equal to ~1e-7 relative (a few roundings of 6e-8); the scores are quadratic in them, so 1e-6.
    assert one["fid"] > 0 and one["fid"] == pytest.approx(two["fid"], rel=1e-6)
    assert one["kid_mean"] == pytest.approx(two["kid_mean"], rel=1e-6)
    assert one["is_mean"] == pytest.approx(two["is_mean"], rel=1e-6)
    # Rank 0 computes these from the gathered vectors: the same with any number of processes (FID∞ to the rounding
    # of the FIDs it extrapolates from, which may be far larger than it).
    scale = max(one["fid_infinity_fit"]["fids"])
    assert one["fid_infinity"] == pytest.approx(two["fid_infinity"], rel=1e-6, abs=1e-6 * scale)
    assert [one[key] for key in ("precision", "recall", "coverage")] == [two[key] for key in ("precision", "recall",
                                                                                             "coverage")]
    assert "biased upward" in one["warning"] and one["extractor"] == "digits-classifier"


def test_our_fid_matches_torch_fidelity_calculate_metrics(tmp_path, monkeypatch):
    """Same images, same registered digits extractor: our pipeline vs torch-fidelity's own."""
    import torch_fidelity

    from hpc_ncsn.data import load_images
    from hpc_ncsn.evaluate.extractors import extract_features, load_extractor, register_extractors
    from hpc_ncsn.evaluate.scores import FeatureStats, frechet_distance, kernel_inception_distance

    monkeypatch.setenv("HPC_NCSN_CACHE", str(tmp_path / "cache"))
    images = load_images(load_config(None, ["data.image_size=16", "data.channels=3"]).data)
    first, second = images[:300], images[1000:1300]
    register_extractors()
    extractor = load_extractor("digits-classifier", None, torch.device("cpu"))
    stats = []
    for part in (first, second):
        features, _ = extract_features(extractor, part)
        stats.append(FeatureStats.empty(features.shape[1]).update(features).to_numpy())
    ours = frechet_distance(*stats[0], *stats[1])
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8Images(first), input2=UInt8Images(second), fid=True, kid=True, kid_subset_size=100,
        kid_subsets=10, feature_extractor="digits-classifier", cuda=False, verbose=False, cache=False,
        save_cpu_ram=True)
    # torch-fidelity takes the trace term from eigvals of the non-symmetric Σ1Σ2, ours from a symmetric
    # eigendecomposition: with numpy 2.4's OpenBLAS the two differ by 1.1e-6 relative here.
    assert ours == pytest.approx(theirs["frechet_inception_distance"], rel=5e-6)
    f1, _ = extract_features(extractor, first)
    f2, _ = extract_features(extractor, second)
    kid, _ = kernel_inception_distance(f1.numpy(), f2.numpy(), subsets=10, subset_size=100)
    assert kid == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-5)


def test_evaluator_refuses_bad_images_with_the_reason(tmp_path):
    from hpc_ncsn.evaluate.extractors import extract_features, load_extractor

    os.environ.setdefault("HPC_NCSN_CACHE", str(tmp_path / "cache"))
    extractor = load_extractor("digits-classifier", None, torch.device("cpu"))
    cases = [
        (torch.rand(4, 3, 16, 16), "uint8"),
        (torch.full((4, 3, 16, 16), float("nan")), "NaN"),
        (torch.zeros(4, 16, 16, dtype=torch.uint8), "4-D"),
        (torch.zeros(4, 2, 16, 16, dtype=torch.uint8), "channel"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "at least 2"),
        (torch.full((4, 3, 16, 16), 300, dtype=torch.int16), "0..255"),
    ]
    for images, reason in cases:
        with pytest.raises(ValueError, match=reason):
            extract_features(extractor, images)


def test_evaluator_refuses_incomplete_sample_folders(trained_run, tmp_path):
    samples = tmp_path / "samples"
    check(generate_cmd(trained_run, samples), env(tmp_path))
    (samples / "shard-00001.h5").write_bytes(b"")
    result = subprocess.run(evaluate_cmd(samples), env=env(tmp_path), capture_output=True, text=True,
                            timeout=HANG_GUARD_S)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: " in result.stderr and "shard-00001.h5" in result.stderr and "rerun generation" in result.stderr


def test_stop_signal_ends_generation_between_shards_and_a_rerun_completes_identically(trained_run, tmp_path):
    # One image per shard, 241 network evaluations each: the signal (sent as the first shard appears) lands while
    # most of the 10 shards are still to be drawn; the stopped, resumed and uninterrupted runs draw 20 in all.
    slow = ("--num-samples", "10", "--shard-size", "1", "sampler.steps_per_level=40")
    command = lambda out: [sys.executable, "-m", "hpc_ncsn", "generate", "--run-dir", str(trained_run),  # noqa: E731
                           "--out", str(out), "--batch-size", "4", *slow]
    out = tmp_path / "stopped"
    process = subprocess.Popen(command(out), env=env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    # Wait for the first shard however long a busy machine takes to reach it; the deadline only guards a hang.
    deadline = time.time() + HANG_GUARD_S
    while time.time() < deadline and process.poll() is None and not (out / "shard-00000.h5").exists():
        time.sleep(0.005)
    process.send_signal(signal.SIGUSR2)  # Slurm's warning before a time limit or preemption
    _, stderr = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 75, stderr[-2000:]
    assert "stop requested (SIGUSR2)" in stderr
    written = sorted(out.glob("shard-*.h5"))
    assert 1 <= len(written) < 10 and not (out / "manifest.json").exists()
    for shard in written:
        validate_shard(shard)
    check(command(out), env(tmp_path))
    reference = tmp_path / "reference"
    check(command(reference), env(tmp_path))
    assert shard_digests(out) == shard_digests(reference) and len(shard_digests(out)) == 10
