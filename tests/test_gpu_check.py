"""bench/gpu_check.sh on a machine without CUDA (CUDA_VISIBLE_DEVICES hides any GPU): one line says so, the GPU
tests skip naming why, the other parts are skipped, the table and the JSON say what happened, exit 0."""

import json
import os
import subprocess
from pathlib import Path

from helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_check_without_cuda_skips_its_gpu_parts_with_a_clear_line_and_finishes(tmp_path):
    import sys

    out = tmp_path / "check"
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--out", str(out)], capture_output=True,
                            text=True, timeout=HANG_GUARD_S, env={**os.environ, "CUDA_VISIBLE_DEVICES": "",
                                                         "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    first = result.stdout.splitlines()[0]
    assert first.startswith("gpu_check: no CUDA device here") and "not run" in first
    record = json.loads((out / "gpu_check.json").read_text())
    assert record["cuda"] is False and [part["part"] for part in record["parts"]] == ["tests", "bench", "sweep"]
    tests = record["parts"][0]
    assert tests["outcome"] == "passed" and set(tests["counts"]) == {"skipped"} and tests["counts"]["skipped"] >= 6
    assert tests["skip_reasons"] == ["needs a CUDA GPU (torch.cuda.is_available() is False); bench/gpu_check.sh "
                                     "runs these on a GPU node"]
    assert all(part["outcome"] == "skipped: no CUDA device" for part in record["parts"][1:])
    assert "| tests | passed |" in result.stdout and "skipped: needs a CUDA GPU" in result.stdout
