#!/usr/bin/env python
"""The GPU check: one prepared run for a short GPU allocation (under 8 minutes on one H100/H200).

    bench/gpu_check.sh [--out runs/gpu-check] [--inception-weights FILE] [--peak-tflops 989]

Three parts, each a fresh process with its own time limit (a part that runs out is
reported as such, and the next one starts):

  tests   pytest -m gpu tests/test_gpu.py: bf16 vs fp32 steps, fused optimizer + device data + compiled step,
          no host sync in a training step or a sampler call, kill + resume bit-exact, Philox CPU = GPU,
          the evaluator's real-Inception FID = torch-fidelity's                               (≤ 160 s)
  bench   bench/bench.py --device cuda on configs/cifar10.yaml: the measured peak, training (images/s, MFU),
          the sampler, the evaluator and FID on 50,000 images, and the peers in the same run  (≤ 160 s)
  sweep   launch/sweep.py --cluster local --seeds 0 on configs/debug.yaml, on the GPU, to the table (≤ 150 s)

It prints one table (each part's outcome, then the benchmark's rows and the sweep's table)
and writes OUT/gpu_check.json. Without CUDA it says so in one line, runs the tests (which
skip, naming why) and skips the other parts: the CPU run that tests/test_gpu_check.py makes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMITS = {"tests": 160, "bench": 160, "sweep": 150}  # seconds; 470 in all, with start-ups under 8 minutes


def run_part(name: str, command: list[str], log: Path, limit: int) -> dict:
    """Run one part with its time limit; its outcome, seconds and log."""
    start = time.perf_counter()
    with log.open("w") as out:
        try:
            done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=limit,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
            outcome = "passed" if done.returncode == 0 else f"failed (exit {done.returncode})"
        except subprocess.TimeoutExpired:
            outcome = f"timed out after {limit} s"
    return {"part": name, "outcome": outcome, "seconds": round(time.perf_counter() - start, 1), "log": str(log)}


def test_results(text: str) -> tuple[dict[str, int], list[str]]:
    """pytest's summary counts and its skip reasons (-rs), from its output."""
    counts = {word: int(number) for number, word in re.findall(r"(\d+) (passed|failed|skipped|error)", text)}
    reasons = sorted({line.split(": ", 1)[-1].strip() for line in text.splitlines() if line.startswith("SKIPPED")})
    return counts, reasons


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu-check", help="where logs and JSON go")
    parser.add_argument("--inception-weights", type=Path, default=None,
                        help="torch-fidelity's Inception .pth (the FID test and the benchmark's FID rows); "
                             "default: what 'hpc-ncsn fetch inception' placed in the cache")
    parser.add_argument("--peak-tflops", type=float, default=None, help="nominal bf16 peak (H100 SXM: 989)")
    args = parser.parse_args(argv)
    import torch

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if gpu else "no CUDA device"
    if not gpu:
        print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): the GPU tests skip, the GPU "
              "benchmark rows and the GPU sweep are not run", flush=True)
    if args.inception_weights:
        os.environ["HPC_NCSN_INCEPTION_WEIGHTS"] = str(args.inception_weights.resolve())
    python = sys.executable
    parts = [run_part("tests", [python, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu",
                                str(ROOT / "tests" / "test_gpu.py")], out / "tests.log", LIMITS["tests"])]
    counts, reasons = test_results((out / "tests.log").read_text())
    parts[0] |= {"counts": counts, "skip_reasons": reasons}
    bench_rows, sweep_table = [], None
    if gpu:
        weights = ["--inception-weights", str(args.inception_weights)] if args.inception_weights else []
        peak = ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
        parts.append(run_part("bench", [python, str(ROOT / "bench" / "bench.py"), "--device", "cuda", "--config",
                                        str(ROOT / "configs" / "cifar10.yaml"), "--what", "peak,train,sample,eval,peers",
                                        "--train-batch-sizes", "128", "--images", "50000", "--batch-sizes", "500",
                                        "--json", str(out / "bench.json"), *weights, *peak],
                              out / "bench.log", LIMITS["bench"]))
        if (out / "bench.json").is_file():
            bench_rows = json.loads((out / "bench.json").read_text())["rows"]
        sweep = out / "sweep"
        parts.append(run_part("sweep", [python, str(ROOT / "launch" / "sweep.py"), "--cluster", "local", "--out",
                                        str(sweep), "--config", str(ROOT / "configs" / "debug.yaml"), "--seeds", "0"],
                              out / "sweep.log", LIMITS["sweep"]))
        sweep_table = (sweep / "table.md").read_text() if (sweep / "table.md").is_file() else None
    else:
        parts += [{"part": name, "outcome": "skipped: no CUDA device", "seconds": 0.0, "log": None}
                  for name in ("bench", "sweep")]
    print(f"\nhpc_ncsn GPU check, {time.strftime('%Y-%m-%d %H:%M')}, {device}, torch {torch.__version__}\n")
    print("| part | outcome | seconds | detail |\n|---|---|---|---|")
    for part in parts:
        detail = ", ".join(f"{n} {word}" for word, n in part.get("counts", {}).items())
        print(f"| {part['part']} | {part['outcome']} | {part['seconds']:.1f} | {detail or part['log'] or ''} |")
    for reason in parts[0]["skip_reasons"]:
        print(f"\nskipped: {reason}")
    if bench_rows:
        print("\n| group | what | seconds | images/s | TFLOP/s | MFU | vs base | syncs |\n|---|---|---|---|---|---|---|---|")
        for row in bench_rows:
            cells = [row.get(key) for key in ("images_per_s", "tflops", "mfu", "speedup", "host_syncs")]
            shown = ["" if value is None else f"{value:,.4g}" for value in cells]
            print(f"| {row['group']} | {row['what']} | {row['seconds']:.3f} | " + " | ".join(shown) + " |")
    if sweep_table:
        print("\nThe local sweep's table:\n\n" + sweep_table.split("\n\n")[0])
    record = {"device": device, "torch": torch.__version__, "cuda": gpu, "parts": parts, "bench": bench_rows,
              "sweep_table": sweep_table}
    (out / "gpu_check.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwritten: {out / 'gpu_check.json'}")
    return 0 if all(part["outcome"] in ("passed", "skipped: no CUDA device") for part in parts) else 1


if __name__ == "__main__":
    sys.exit(main())
