#!/usr/bin/env python
"""The sweep's control plane at scale: plan, status files, --status and the table of sweeps of 60 to 6,000 cells.

    python bench/scale.py                      # 60, 600 and 6,000 cells (about 10 minutes on 2 cores)
    python bench/scale.py --cells 60,600 --json scale.json

Each sweep is 3 arms × 5 seeds × K values of train.lr (K = cells / 15), on configs/debug.yaml:
every lr trains its own networks, so 6,000 cells are 4,000 trainings, 6,000 samplings and the
table, 10,001 tasks. No training runs: the benchmark writes what finished tasks leave behind,
in their real formats, through the product's own writers (hpc_ncsn.sweep.status.write_status,
hpc_ncsn.samples.shards.write_shard and write_manifest, the evaluator's metrics.json fields,
a training's metrics.jsonl with its loss per level and its heldout_dsm.json), with made-up
numbers. Then it times, each as a user runs it (a fresh process, Python start-up included):

  plan      launch/sweep.py --dry-run (plan, sampler audit, print every task)
  write     writing the finished tasks' files (the product's writers, in this process)
  --status  launch/sweep.py --status
  table     hpc-ncsn aggregate (table.md/.csv/.json and the plots)

and prints one table with each figure's ratio to the smallest sweep's. `start-up` is an
import of the sweep command alone (the floor of every command above).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hpc_ncsn.sweep.plan import ARM_AXIS, SEED_AXIS, SweepSpec, audit_plan, plan  # noqa: E402

ARMS = ("geometric", "linear", "snr")
SEEDS = 5
CONFIG = ROOT / "configs" / "debug.yaml"


def grid(cells: int) -> dict[str, list]:
    """The axes of a sweep of `cells` cells: 3 arms × 5 seeds × cells/15 learning rates."""
    per = len(ARMS) * SEEDS
    if cells % per:
        raise SystemExit(f"--cells: {cells} is not a multiple of {per} (3 arms × 5 seeds)")
    return {ARM_AXIS: list(ARMS), SEED_AXIS: list(range(SEEDS)),
            "train.lr": [round(1e-3 * (1 + k / 1000), 9) for k in range(cells // per)]}


def sweep_arguments(axes: dict[str, list]) -> list[str]:
    return ["--arms", ",".join(axes[ARM_AXIS]), "--seeds", ",".join(map(str, axes[SEED_AXIS])),
            "--axis", "train.lr=" + ",".join(map(str, axes["train.lr"]))]


def write_results(root: Path, axes: dict[str, list]) -> tuple[int, int]:
    """sweep.json, audit.json and every task's files as a finished sweep leaves them (the table's task aside: the
    table is what is timed); (files written, the sweep's tasks)."""
    from hpc_ncsn.samples.shards import plan_shards, shard_path, write_manifest, write_shard
    from hpc_ncsn.sweep.status import TaskStatus, write_status

    spec = SweepSpec.from_config(CONFIG, axes)
    spec.save(root)
    sweep = plan(spec, root)
    (root / "audit.json").write_text(json.dumps(audit_plan(sweep), indent=2, sort_keys=True) + "\n")
    rng = np.random.default_rng(0)
    levels = spec.base["noise"]["num_levels"]
    files, now, job = 2, time.time(), 1000

    def finished(stage: str, name: str, index: int) -> None:
        write_status(root, TaskStatus(stage, name, "done", started=now - 60, finished=now, job_id=f"{job}_{index}",
                                      scheduler="slurm", log=str(root / "logs" / f"{job}_{index}.out"),
                                      heartbeat=now, progress={"done": 1, "total": 1, "unit": "shards"}))

    for index, task in enumerate(sweep.train):
        finished(task.stage, task.name, index)
        task.folder.mkdir(parents=True)
        lines = [{"step": step, "loss": float(rng.uniform(1, 2)),
                  "loss_per_level": rng.uniform(0.5, 2, levels).round(4).tolist()} for step in (25, 50)]
        (task.folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        sigmas = np.geomspace(8.5, 0.01, 20)
        (task.folder / "heldout_dsm.json").write_text(json.dumps({
            "sigmas": sigmas.tolist(), "per_sigma": rng.uniform(0.5, 2, 20).tolist(), "mean": 1.0, "step": 50}))
        files += 4
    job += 1
    spec_ = plan_shards(4, 4)[0]
    for index, task in enumerate(sweep.sample):
        finished(task.stage, task.name, index)
        images = rng.integers(0, 256, (4, 16, 16, 1), dtype=np.uint8)
        entry = write_shard(shard_path(task.folder, spec_), spec_, images, {"seed": task.seed})
        write_manifest(task.folder, [entry], {"cell": task.name})
        fid = float(rng.normal(50, 5))
        (task.folder / "metrics.json").write_text(json.dumps({
            "fid": fid, "kid_mean": float(rng.uniform(0, 0.1)), "kid_std": 0.01, "is_mean": float(rng.uniform(3, 5)),
            "is_std": 0.1, "n": 4, "precision": 0.5, "recall": 0.5, "density": 1.0, "coverage": 0.5,
            "fid_infinity": {"value": fid - 1}}, indent=2) + "\n")
        files += 4
    return files, len(sweep.train) + len(sweep.sample) + 1


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def command_seconds(*command: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one command of the product, as a user runs it (Python start-up included). On a
    shared machine the CPU seconds are the steadier figure: they do not count the waits for a core."""
    start, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, _children_cpu() - cpu


def measure(cells: int, folder: Path) -> dict:
    axes = grid(cells)
    root = folder / f"sweep-{cells}"
    row = {"cells": cells, "tasks": None}
    row["plan"], row["plan_cpu"] = command_seconds("launch/sweep.py", "--dry-run", *sweep_arguments(axes), "--out",
                                                   str(root))
    start, cpu = time.perf_counter(), time.process_time()
    row["files"], row["tasks"] = write_results(root, axes)
    row["write"], row["write_cpu"] = time.perf_counter() - start, time.process_time() - cpu
    row["status"], row["status_cpu"] = command_seconds("launch/sweep.py", "--status", "--out", str(root))
    row["table"], row["table_cpu"] = command_seconds("-m", "hpc_ncsn", "aggregate", "--sweep", str(root))
    table = json.loads((root / "table.json").read_text())
    assert len(table["cells"]) == cells and all(cell["state"] == "done" for cell in table["cells"]), \
        "the table does not hold every cell as done"
    return row


PHASES = (("plan", "plan (--dry-run)"), ("write", "write status + results"), ("status", "--status"),
          ("table", "table + plots"))


def print_table(rows: list[dict], startup: tuple[float, float]) -> None:
    base = rows[0]
    print(f"Python start-up and the sweep command's imports: {startup[0]:.2f} s wall, {startup[1]:.2f} s CPU (in "
          "every figure below but 'write')\n")
    print("| phase | " + " | ".join(f"{row['cells']:,} cells ({row['tasks']:,} tasks) | ×" for row in rows) + " |")
    print("|---" * (1 + 2 * len(rows)) + "|")
    for key, label in PHASES:
        for suffix, kind in (("", "wall s"), ("_cpu", "CPU s")):
            figures = " | ".join(f"{row[key + suffix]:.2f} | {row[key + suffix] / base[key + suffix]:.1f}"
                                 for row in rows)
            print(f"| {label}, {kind} | {figures} |")
    print(f"\n× : ratio to the {base['cells']}-cell sweep's figure ({rows[-1]['cells'] / base['cells']:.0f}× the cells "
          "at the largest)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", default="60,600,6000", help="sweep sizes, multiples of 15 (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--keep", type=Path, help="build the sweep folders here and keep them (default: a temporary "
                                                  "folder, removed)")
    args = parser.parse_args(argv)
    sizes = [int(item) for item in args.cells.split(",")]
    startup = command_seconds("-c", "import hpc_ncsn.sweep.launch")
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.keep or Path(temporary)
        rows = []
        for cells in sizes:
            rows.append(measure(cells, folder))
            print(f"{cells} cells: " + ", ".join(f"{key} {rows[-1][key]:.2f} s ({rows[-1][key + '_cpu']:.2f} s CPU)"
                                                 for key, _ in PHASES), flush=True)
    print()
    print_table(rows, startup)
    if args.json:
        args.json.write_text(json.dumps({"startup": {"wall": startup[0], "cpu": startup[1]}, "rows": rows},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
