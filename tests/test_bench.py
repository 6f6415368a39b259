"""bench/bench.py at tiny sizes: a smoke check that every section runs and reports sane figures (no timing asserts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # runs bench/bench.py in a real process


def test_benchmark_prints_and_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--train-batch-sizes", "8", "--train-steps", "1",
         "--sample-batch", "4", "--sample-evaluations", "5", "--images", "16", "--batch-sizes", "8",
         "--peak-tflops", "1", "--peak-size", "256", "--no-compile", "--ablate", "--scale-images", "16,32",
         "--json", str(out)],
        capture_output=True, text=True, timeout=HANG_GUARD_S,
        env={**os.environ, "HPC_NCSN_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    written = json.loads(out.read_text())
    rows = written["rows"]
    groups = {row["group"] for row in rows}
    assert groups == {"peak", "train", "sample", "shards", "features", "statistics", "projected", "evaluate",
                      "peer train", "peer sample", "peer eval", "scale eval"}
    # The measured peak is the denominator of every MFU: fp32 rows against the fp32 GEMM, bf16 rows the bf16 one.
    peak = {row["what"].split(":")[0]: row["tflops"] for row in rows if "attainable peak" in row["what"]}
    assert set(peak) == {"fp32", "bf16"}
    for precision, value in peak.items():  # the faster of the two products measured
        measured = [row["tflops"] for row in rows if row["group"] == "peak" and row["what"].startswith(f"{precision},")]
        assert len(measured) == 2 and value == max(measured) > 0
    for row in rows:
        if row.get("tflops") is not None and row["group"] != "peak":
            assert abs(row["mfu"] - row["tflops"] / peak[row["precision"]]) < 1e-12
            assert abs(row["mfu_nominal"] - row["tflops"]) < 1e-12  # --peak-tflops 1
    # Peers: the plain code, the plain code in our process setup, ours (fp32, fast), each with its ratio to the
    # plain code; every one ran in its own process.
    for group, count in (("peer train", 4), ("peer sample", 4), ("peer eval", 3)):
        peers = [row for row in rows if row["group"] == group]
        assert len(peers) == count and "speedup" not in peers[0]
        for row in peers[1:]:
            assert abs(row["speedup"] - row["images_per_s"] / peers[0]["images_per_s"]) < 1e-9
    assert [row["images"] for row in rows if row["group"] == "scale eval"] == [16, 32]
    assert written["profile"].count("\n| `") == 10 and "Top 10 operators" in result.stdout
    train = [row for row in rows if row["group"] == "train"]
    sample = [row for row in rows if row["group"] == "sample"]
    assert [row["what"] for row in train] == [
        "baseline fp32 eager, batch 8", "baseline + mixed_precision=bf16, batch 8",
        "baseline + fused_optimizer=True, batch 8", "baseline + channels_last=True, batch 8",
        "bf16, fused, no sync, batch 8"]  # channels_last only on a GPU (bench.fast_channels_last)
    assert [row["what"].split(",")[:2] for row in sample] == [
        [arm, setting] for arm in ("geometric", "linear", "snr") for setting in (" baseline fp32 eager", " bf16")]
    for row in train + sample:
        assert row["images_per_s"] > 0 and 0 < row["mfu_nominal"] < 1
    # Every fast row carries its ratio to the baseline timed just before it.
    for rows_of_kind in (train, sample[0:2], sample[2:4], sample[4:6]):
        base = rows_of_kind[0]
        assert "speedup" not in base
        for row in rows_of_kind[1:]:
            assert abs(row["speedup"] - row["images_per_s"] / base["images_per_s"]) < 1e-9
    # A training image costs three forward passes of the same network.
    per_image = lambda row: row["tflops"] / row["images_per_s"]  # noqa: E731
    assert abs(per_image(train[0]) / per_image(sample[0]) - 3.0) < 1e-6
    evaluate = next(row for row in rows if row["group"] == "evaluate")
    assert evaluate["images"] == 16 and evaluate["seconds"] > 0
    assert "| train       | baseline fp32 eager, batch 8" in result.stdout


def test_the_scale_benchmark_builds_finished_sweeps_and_times_each_phase(tmp_path):
    """bench/scale.py at 15 cells (one size keeps it cheap): real status files and results, every cell done."""
    out = tmp_path / "scale.json"
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--cells", "15", "--json", str(out),
                             "--keep", str(tmp_path / "sweeps")], capture_output=True, text=True, timeout=HANG_GUARD_S,
                            env={**os.environ, "HPC_NCSN_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    # 3 arms × 5 seeds × 1 learning rate: the snr arm shares the geometric networks, plus the table's task
    assert [(row["cells"], row["tasks"]) for row in rows] == [(15, 10 + 15 + 1)]
    assert all(row[key] > 0 for row in rows for key in ("plan", "write", "status", "table", "status_cpu"))
    table = json.loads((tmp_path / "sweeps" / "sweep-15" / "table.json").read_text())
    assert len(table["rows"]) == 3 and all(row["seeds_done"] == 5 for row in table["rows"])
    assert "| --status, CPU s |" in result.stdout
