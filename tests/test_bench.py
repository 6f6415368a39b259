"""bench/bench.py at tiny sizes: a smoke check that every section runs and reports sane figures (no timing asserts)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_prints_and_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--train-batch-sizes", "8", "--train-steps", "1",
         "--sample-batch", "4", "--sample-evaluations", "5", "--images", "16", "--batch-sizes", "8",
         "--peak-tflops", "1", "--json", str(out)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HPC_NCSN_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    groups = {row["group"] for row in rows}
    assert groups == {"train", "sample", "shards", "features", "statistics", "projected"}
    train = [row for row in rows if row["group"] == "train"]
    sample = [row for row in rows if row["group"] == "sample"]
    assert [row["what"] for row in train] == ["mixed_precision=bf16, batch 8", "baseline fp32, batch 8"]
    assert [row["what"].split(",")[0] for row in sample] == ["geometric", "linear", "snr"]
    for row in train + sample:
        assert row["images_per_s"] > 0 and 0 < row["mfu"] < 1
    # A training image costs three forward passes of the same network.
    per_image = lambda row: row["tflops"] / row["images_per_s"]  # noqa: E731
    assert abs(per_image(train[0]) / per_image(sample[0]) - 3.0) < 1e-6
    assert "| train      | baseline fp32, batch 8" in result.stdout
