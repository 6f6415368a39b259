"""Fault injection: damage done to real run folders, shards and filesystems, and what the commands do about it.

Each fault is a real file operation (a flipped byte, a copied or linked shard, an edited
manifest, a torn log line, a full filesystem, ...). For `evaluate` no fault may yield a
number; every refusal is one line `error: ...` with exit status 2 and no traceback.
docs/trust.md, "The faults the tests inject", has the table of these faults.
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from hpc_ncsn.files import file_sha256
from helpers import HANG_GUARD_S, TINY, flip_image_byte, small_filesystem

pytestmark = pytest.mark.slow  # real processes: train.py and hpc-ncsn generate/evaluate

ROOT = Path(__file__).resolve().parent.parent


def env(folder: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HPC_NCSN_CACHE": str(folder / "cache")}


def run(command: list[str], folder: Path, timeout: int = HANG_GUARD_S) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=env(folder), capture_output=True, text=True, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def refused(result: subprocess.CompletedProcess, *phrases: str) -> str:
    """The command stopped with one line `error: ...` (exit 2), without a traceback, naming all `phrases`."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and not line.startswith("warning") and not re.match(r"^train:\s+\d+%\|", line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])
    return lines[0]


def hpc_ncsn(*args: str) -> list[str]:
    return [sys.executable, "-m", "hpc_ncsn", *args]


def train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/debug.yaml"), *TINY,
            f"train.out_dir={out}", *extra]


def generate_cmd(run_dir: Path, out: Path, *extra: str) -> list[str]:
    return hpc_ncsn("generate", "--run-dir", str(run_dir), "--out", str(out), "--num-samples", "12",
                    "--shard-size", "5", "--batch-size", "4", *extra)


def evaluate_cmd(samples: Path, *extra: str) -> list[str]:
    return hpc_ncsn("evaluate", "--samples", str(samples), "--batch-size", "6", *extra)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """A trained run, its samples (seed 0) and another seed's samples, and the FID of the good folder."""
    folder = tmp_path_factory.mktemp("made")
    run_dir = folder / "run"
    ok(run(train_cmd(run_dir), folder))
    ok(run(generate_cmd(run_dir, folder / "samples"), folder))
    ok(run(generate_cmd(run_dir, folder / "seed1", "--seed", "1"), folder))
    report = json.loads(ok(run(evaluate_cmd(folder / "samples"), folder)).stdout)
    return {"folder": folder, "run": run_dir, "samples": folder / "samples", "seed1": folder / "seed1",
            "fid": report["fid"], "report": report}


def copy(made: dict, tmp_path: Path) -> Path:
    """A copy of the run and its samples side by side (shards name their run relative to themselves)."""
    shutil.copytree(made["run"], tmp_path / "run")
    samples = tmp_path / "samples"
    shutil.copytree(made["samples"], samples)
    (samples / "metrics.json").unlink()
    return samples


def no_number(samples: Path) -> None:
    assert not (samples / "metrics.json").exists()


def test_the_report_records_what_it_can_be_traced_to(made):
    report = made["report"]
    assert report["manifest_sha256"] == file_sha256(made["samples"] / "manifest.json")
    assert report["environment"]["threads_per_process"] >= 1 and report["environment"]["processes"] == 1
    assert {"torch", "numpy", "python", "hpc_ncsn"} <= report["environment"].keys()


def test_a_flipped_byte_in_image_data_is_refused_and_a_generate_rerun_redraws_it(made, tmp_path):
    samples = copy(made, tmp_path)
    flip_image_byte(samples / "shard-00001.h5")
    refused(run(evaluate_cmd(samples), made["folder"]), "shard-00001.h5", "checksum differs from the manifest")
    no_number(samples)
    # Also when the manifest is rewritten to the damaged file's checksum: the shard's own data checksum finds it.
    manifest = json.loads((samples / "manifest.json").read_text())
    manifest["shards"][1]["sha256"] = file_sha256(samples / "shard-00001.h5")
    (samples / "manifest.json").write_text(json.dumps(manifest))
    refused(run(evaluate_cmd(samples), made["folder"]), "shard-00001.h5",
            "image data differ from the checksum written with them")
    no_number(samples)
    result = ok(run(generate_cmd(tmp_path / "run", samples), made["folder"]))
    assert "redrawing shard-00001.h5: its image data differ from the checksum" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1])["generated"] == [1]
    report = json.loads(ok(run(evaluate_cmd(samples), made["folder"])).stdout)
    assert report["fid"] == made["fid"]


def test_a_rerun_redraws_a_shard_whose_bytes_differ_from_the_manifest(made, tmp_path):
    samples = copy(made, tmp_path)
    with h5py.File(samples / "shard-00002.h5", "r+", locking=False) as handle:
        handle.attrs["note"] = json.dumps("edited by hand")  # valid structure, data and origin; other bytes
    result = ok(run(generate_cmd(tmp_path / "run", samples), made["folder"]))
    assert "redrawing shard-00002.h5: its bytes differ from the checksum the manifest recorded" in result.stdout
    assert json.loads(ok(run(evaluate_cmd(samples), made["folder"])).stdout)["fid"] == made["fid"]


@pytest.mark.parametrize("how", ["copied", "linked", "copied, manifest edited to match"])
def test_a_shard_of_another_run_is_refused(made, tmp_path, how):
    samples = copy(made, tmp_path)
    target, foreign = samples / "shard-00000.h5", made["seed1"] / "shard-00000.h5"
    target.unlink()
    if how == "linked":
        target.symlink_to(foreign)
        refused(run(evaluate_cmd(samples), made["folder"]), "shard-00000.h5", "is a symbolic link")
    else:
        shutil.copy(foreign, target)
        if how == "copied":
            refused(run(evaluate_cmd(samples), made["folder"]), "shard-00000.h5", "checksum differs")
        else:
            manifest = json.loads((samples / "manifest.json").read_text())
            theirs = json.loads((made["seed1"] / "manifest.json").read_text())["shards"][0]
            manifest["shards"][0].update(sha256=theirs["sha256"], images_sha256=theirs["images_sha256"])
            (samples / "manifest.json").write_text(json.dumps(manifest))
            refused(run(evaluate_cmd(samples), made["folder"]), "shard-00000.h5", "a foreign shard",
                    "seed: 1, the folder's: 0")
    no_number(samples)


def test_an_edited_manifest_and_a_stray_shard_are_refused(made, tmp_path):
    samples = copy(made, tmp_path)
    manifest = json.loads((samples / "manifest.json").read_text())
    manifest["meta"]["num_samples"] = 10  # score a subset?
    (samples / "manifest.json").write_text(json.dumps(manifest))
    refused(run(evaluate_cmd(samples), made["folder"]), "manifest.json", "lists 3 shard(s)",
            "num_samples (10) and shard_size (5) make 2")
    no_number(samples)
    (tmp_path / "stray").mkdir()
    samples = copy(made, tmp_path / "stray")
    shutil.copy(samples / "shard-00002.h5", samples / "shard-00007.h5")
    refused(run(evaluate_cmd(samples), made["folder"]), "shard-00007.h5", "not in the folder's manifest")
    no_number(samples)


@pytest.mark.parametrize("change", ["data.image_size=16", "data.channels=3"])
def test_shards_of_another_image_size_or_channel_count_are_refused(made, tmp_path, change):
    samples = copy(made, tmp_path)
    config = tmp_path / "reference.yaml"
    config.write_text(ok(run(hpc_ncsn("config", "--config", str(tmp_path / "run" / "config.yaml"), change),
                             made["folder"])).stdout)
    refused(run(evaluate_cmd(samples, "--config", str(config)), made["folder"]), "shard-00000.h5",
            "images are (8, 8, 1) (H, W, C), expected")
    no_number(samples)


def test_a_folder_where_a_shard_goes_and_a_looping_out_link_are_one_line(made, tmp_path):
    samples = copy(made, tmp_path)
    (samples / "shard-00001.h5").unlink()
    (samples / "shard-00001.h5").mkdir()
    refused(run(generate_cmd(tmp_path / "run", samples), made["folder"]), "shard-00001.h5", "is a folder where a shard")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    refused(run(generate_cmd(made["run"], loop), made["folder"]), "leads nowhere")


def test_a_torn_log_line_and_an_empty_run_config_do_not_block_a_resume(made, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(made["run"], run_dir)
    with open(run_dir / "metrics.jsonl", "a") as log:
        log.write('{"step": 5, "loss": 3')  # a kill or a full disk in mid-line
    (run_dir / "config.yaml").write_text("")  # a config torn by an older version
    result = ok(run(train_cmd(run_dir, "train.steps=6"), made["folder"]))
    assert "resumed from" in result.stdout + result.stderr
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [2, 4, 6]
    assert "ladder: geometric" in (run_dir / "config.yaml").read_text()


def test_the_log_line_that_spans_a_resume_equals_an_uninterrupted_runs(tmp_path):
    """Checkpoints keep the per-level sums since the last log line (a Training driven as the loop does)."""
    from hpc_ncsn.config import load_config
    from hpc_ncsn.train import Training

    common = [*TINY, "train.log_every=3", "model.dropout=0.0"]

    def line(training, norm):
        record = training.log(norm, 0.0)
        return {key: value for key, value in record.items() if key != "images_per_s"}

    whole = Training.start(load_config(ROOT / "configs/debug.yaml", [*common, f"train.out_dir={tmp_path / 'a'}"]))
    lines = []
    for step in range(1, 7):
        norm = whole.step()
        if step % 3 == 0:
            lines.append(line(whole, norm))
    whole.close()
    config = load_config(ROOT / "configs/debug.yaml", [*common, f"train.out_dir={tmp_path / 'b'}"])
    first = Training.start(config)
    for step in range(1, 5):
        norm = first.step()
        if step == 3:
            assert line(first, norm) == lines[0]
    first.save()  # step 4: one step into the second log window
    first.close()
    second = Training.start(config)
    assert second.state.step == 4
    second.step()
    assert line(second, second.step()) == lines[1]
    second.close()


@pytest.fixture
def full_disk(tmp_path):
    mounts = []

    def make(size: str) -> Path:
        mounts.append(small_filesystem(tmp_path, size))
        return mounts[-1]

    yield make
    for mount in mounts:
        subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_stops_generation_and_training_in_one_line_leaving_no_temporaries(made, tmp_path, full_disk):
    small = full_disk("28k")
    result = run(generate_cmd(made["run"], small / "samples"), made["folder"])
    line = refused(result, "shard-0000")
    assert "not enough space" in line or "the disk is full" in line
    for shard in (small / "samples").glob("shard-*.h5"):  # what was written is whole
        assert h5py.File(shard, "r", locking=False).attrs["complete"]
    assert not [p for p in (small / "samples").iterdir() if ".tmp" in p.name]
    small = full_disk("300k")
    result = run(train_cmd(small / "run", "train.checkpoint_every=2"), made["folder"])
    refused(result, "the disk is full")
    assert not list((small / "run" / "checkpoints").glob(".tmp-*"))


@pytest.mark.parametrize("command, phrases", [
    (["config", "--config", "{broken}"], ("broken.yaml line", "fix the YAML")),
    (["sweep", "--seeds", "0,0", "--dry-run"], ("axis 'seed' repeats a value",)),
    (["config", "noise.sigma_max=inf"], ("noise.sigma_max: expected a finite number",)),
])
def test_config_mistakes_are_one_line(tmp_path, command, phrases):
    broken = tmp_path / "broken.yaml"
    broken.write_text("noise: [1, 2\n")
    result = run(hpc_ncsn(*[arg.replace("{broken}", str(broken)) for arg in command]), tmp_path)
    refused(result, *phrases)
