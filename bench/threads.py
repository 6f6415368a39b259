#!/usr/bin/env python
"""Training speed of concurrent tasks on a Slurm cluster: the product's thread setting vs fixed ones.

    sudo slurm/local-cluster.sh start --nodes 2 && eval "$(slurm/local-cluster.sh env)"
    python bench/threads.py                       # 4 concurrent trainings per setting, configs/debug.yaml
    python bench/threads.py --tasks 4 --steps 40 --json threads.json

Each setting submits `--tasks` single-process training jobs at once (sbatch, one CPU
each unless --cpus-per-task) and reads their steps per second from metrics.jsonl
(the log windows after the first, so start-up is left out; the final sample grid,
one image, is outside the windows). Settings:

  product     nothing set: each task sets its threads from its allocation (hpc_ncsn.distributed.match_threads)
  1 thread    OMP_NUM_THREADS=1 exported by the user, which the product honours
  all cores   OMP_NUM_THREADS=<CPUs of the machine>: what PyTorch does when nobody sets it (the old default)

Needs a Slurm cluster (SLURM_CONF or the system's); run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def submit(out: Path, args, extra_env: dict) -> list[str]:
    jobs = []
    out.mkdir(parents=True, exist_ok=True)
    for k in range(args.tasks):
        run = out / f"task-{k}"
        command = (f"{sys.executable} {ROOT / 'train.py'} --config {args.config} train.steps={args.steps} "
                   f"train.log_every={args.log_every} train.checkpoint_every={args.steps} "
                   f"train.sample_every={10 * args.steps} train.sample_images=1 train.seed={k} train.out_dir={run}")
        exports = ",".join(["ALL", *(f"{key}={value}" for key, value in extra_env.items())])
        sbatch = ["sbatch", "--parsable", f"--export={exports}", f"--output={out}/task-{k}.log",
                  f"--cpus-per-task={args.cpus_per_task}", "--wrap", command]
        env = {key: value for key, value in os.environ.items() if key not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        jobs.append(subprocess.run(sbatch, capture_output=True, text=True, check=True, env=env).stdout.strip())
    return jobs


def wait(jobs: list[str]) -> None:
    while True:
        listed = subprocess.run(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i"], capture_output=True, text=True)
        if not listed.stdout.strip():
            return
        time.sleep(2)


def steps_per_s(run: Path, batch: int) -> float:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [record["images_per_s"] / batch for record in records[1:]]  # the first window holds the start-up
    return sum(rates) / len(rates)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "debug.yaml")
    parser.add_argument("--tasks", type=int, default=4, help="concurrent training jobs per setting")
    parser.add_argument("--steps", type=int, default=40, help="training steps per job")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--cpus-per-task", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if shutil.which("sbatch") is None:
        parser.error("no sbatch: start a cluster (sudo slurm/local-cluster.sh start --nodes 2) and "
                     "eval \"$(slurm/local-cluster.sh env)\"")
    sys.path.insert(0, str(ROOT))
    from hpc_ncsn.config import load_config

    batch = load_config(args.config).train.batch_size
    cores = os.cpu_count() or 1
    settings = [("product (threads from the allocation)", {}), ("1 thread (OMP_NUM_THREADS=1)", {"OMP_NUM_THREADS": "1"}),
                (f"all cores (OMP_NUM_THREADS={cores}, PyTorch's default)", {"OMP_NUM_THREADS": str(cores)})]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, env in settings:
            out = Path(scratch) / label.split()[0]
            started = time.time()
            wait(submit(out, args, env))
            missing = [k for k in range(args.tasks) if not (out / f"task-{k}" / "metrics.jsonl").is_file()]
            if missing:
                log = (out / f"task-{missing[0]}.log").read_text()[-2000:]
                raise SystemExit(f"training job {missing[0]} of '{label}' wrote no metrics; its log ends:\n{log}")
            rates = [steps_per_s(out / f"task-{k}", batch) for k in range(args.tasks)]
            rows.append({"setting": label, "tasks": args.tasks, "steps_per_s_per_task": sum(rates) / len(rates),
                         "steps_per_s_total": sum(rates), "wall_s": time.time() - started})
    base = rows[0]["steps_per_s_total"]
    print(f"hpc_ncsn thread benchmark, {time.strftime('%Y-%m-%d')}, {cores} CPU(s), {args.tasks} concurrent "
          f"training jobs of {args.config.name} (batch {batch}), {args.cpus_per_task} CPU(s) per task")
    print("| setting | steps/s per task | steps/s, all tasks | vs product | wall s |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['steps_per_s_per_task']:.2f} | {row['steps_per_s_total']:.2f} | "
              f"{row['steps_per_s_total'] / base:.2f}× | {row['wall_s']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
