#!/usr/bin/env python
"""Run a sweep (schedule × seed × any other config key): train → sample → evaluate → table.

Stages, each an array of tasks submitted with submitit:
  train      one task per distinct network (the snr arm reuses the geometric arm's network)
  sample     one task per cell: shards of samples from the EMA weights, then FID/KID/IS
  aggregate  one task: the ablation table (mean, std and 95% CI over seeds) and plots

--cluster local   submitit's local executor: each task in its own process on this machine
--cluster debug   everything in this process, one task after the other (breakpoints work;
                  submitit's debug executor opens pdb on a failure)

Rerunning the same command on the same --out skips finished tasks, reruns failed
or unfinished ones (a training resumes from its checkpoint, a sampling keeps its
valid shards) and rewrites the table.

examples:
  python launch/sweep.py                                   # the local debug sweep on digits
  python launch/sweep.py --schedules geometric,snr --seeds 0,1,2 train.steps=2000
  python launch/sweep.py --axis noise.steps_per_level=5,10   # a third axis
  python launch/sweep.py --status --out runs/sweep-debug
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from hpc_ncsn.config import ConfigError  # noqa: E402
from hpc_ncsn.grid import Plan, SweepSpec, plan, read_status  # noqa: E402
from hpc_ncsn.pipeline import describe, format_status, run_task  # noqa: E402
from hpc_ncsn.schedules import ARMS  # noqa: E402

CLUSTERS = ("local", "debug")


def _values(text: str) -> list:
    """'a,b' → ['a', 'b']; numbers become numbers (YAML-like)."""
    import yaml

    return [yaml.safe_load(item) for item in text.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    grid = parser.add_argument_group("the grid")
    grid.add_argument("--config", type=Path, default=ROOT / "configs" / "debug.yaml",
                      help="base config (default: configs/debug.yaml, digits on a CPU)")
    grid.add_argument("--schedules", default="geometric,linear,snr",
                      help=f"comma-separated arms, from {', '.join(ARMS)} (default: all three)")
    grid.add_argument("--seeds", default="0,1", help="comma-separated seeds (default: 0,1)")
    grid.add_argument("--axis", action="append", default=[], metavar="KEY=V1,V2",
                      help="a further axis over any config key, e.g. noise.steps_per_level=5,10 (repeatable)")
    grid.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                      help="config overrides for every cell, e.g. train.steps=500 eval.num_samples=1000")
    where = parser.add_argument_group("where and how")
    where.add_argument("--out", type=Path, default=None,
                       help="sweep folder (default: runs/sweep-<config name>)")
    where.add_argument("--cluster", choices=CLUSTERS, default="local", help="where tasks run (default: local)")
    where.add_argument("--local-parallel", type=int, default=1,
                       help="--cluster local: tasks running at once (default 1: a small machine's cores are "
                            "better spent on one task's threads)")
    where.add_argument("--timeout-min", type=int, default=24 * 60, help="per-task time limit in minutes")
    actions = parser.add_argument_group("actions")
    actions.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    actions.add_argument("--status", action="store_true", help="print every task's state and exit")
    return parser


def build_spec(args: argparse.Namespace) -> SweepSpec:
    axes = {"schedule": _values(args.schedules), "seed": _values(args.seeds)}
    unknown = [arm for arm in axes["schedule"] if arm not in ARMS]
    if unknown:
        raise SystemExit(f"--schedules: unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    for item in args.axis:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise SystemExit(f"--axis {item!r}: write KEY=V1,V2 (e.g. noise.steps_per_level=5,10)")
        axes[key] = _values(values)
    config = args.config.resolve()
    if not config.is_file():
        raise SystemExit(f"--config {args.config}: no such file")
    return SweepSpec.from_config(config, axes, tuple(args.overrides))


def prepare_folder(root: Path, spec: SweepSpec) -> None:
    """Write sweep.json, or check that a rerun asks for the same sweep."""
    path = root / "sweep.json"
    if path.is_file():
        changes = SweepSpec.from_json(path.read_text()).differences(spec)
        if changes:
            raise SystemExit(f"{root} holds another sweep ({path}); saved → requested:\n  " + "\n  ".join(changes)
                             + "\nrerun with the same config and options, or pick a new --out")
        return
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(spec.to_json())
    os.replace(tmp, path)


def todo(sweep: Plan, stage: str) -> list[str]:
    tasks = sweep.train if stage == "train" else sweep.sample
    names = []
    for task in tasks:
        status = read_status(sweep.root, stage, task.name)
        if status is None or status.state != "done":
            names.append(task.name)
    return names


def print_plan(sweep: Plan) -> None:
    print(f"sweep folder: {sweep.root}")
    print(f"train ({len(sweep.train)} tasks, {len(todo(sweep, 'train'))} to run):")
    for task in sweep.train:
        print(f"  {task.name}: {' '.join(task.overrides)}")
    print(f"sample + evaluate ({len(sweep.sample)} cells, {len(todo(sweep, 'sample'))} to run):")
    for task in sweep.sample:
        print(f"  {task.name}: network of {task.train}, samples in {task.folder}")
    print("aggregate: table.md, table.csv, table.json, fid.png, loss_per_level.png, samples.png")


def _submitted(stage: str, root: str, name: str):
    """What a submitit job runs: the task, with its job id and log path recorded."""
    import submitit

    env = submitit.JobEnvironment()
    return run_task(stage, Path(root), name, job_id=env.job_id, log=str(env.paths.stdout))


def run_stage_local(root: Path, stage: str, names: list[str], args: argparse.Namespace) -> dict[str, str]:
    """Run a stage's tasks with submitit's local executor, `--local-parallel` at a time; {name: error}."""
    import submitit

    executor = submitit.LocalExecutor(folder=root / "logs" / "%j")
    executor.update_parameters(timeout_min=args.timeout_min)
    failures = {}
    for start in range(0, len(names), max(args.local_parallel, 1)):
        wave = names[start : start + max(args.local_parallel, 1)]
        jobs = executor.map_array(_submitted, [stage] * len(wave), [str(root)] * len(wave), wave)
        for name, job in zip(wave, jobs):
            print(f"[{stage}] {name}: job {job.job_id}, log {job.paths.stdout}", flush=True)
        for name, job in zip(wave, jobs):
            try:
                job.result()
                print(f"[{stage}] {name}: done", flush=True)
            except Exception as error:  # noqa: BLE001 - a failed task is reported, its siblings go on
                failures[name] = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
                print(f"[{stage}] {name}: FAILED ({failures[name]}); log {job.paths.stderr}", flush=True)
    return failures


def run_stage_debug(root: Path, stage: str, names: list[str]) -> dict[str, str]:
    failures = {}
    for name in names:
        print(f"[{stage}] {name}: running in this process", flush=True)
        try:
            run_task(stage, root, name)
        except Exception as error:  # noqa: BLE001 - recorded in the status file; siblings go on
            failures[name] = f"{type(error).__name__}: {error}"
            print(f"[{stage}] {name}: FAILED ({failures[name]})", flush=True)
    return failures


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = (args.out or Path("runs") / f"sweep-{args.config.stem}").resolve()
    try:
        spec = build_spec(args)
        sweep = plan(spec, root)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    if args.status:
        print(format_status(describe(root)))  # the saved sweep, whatever the other options say
        return 0
    if args.dry_run:
        print_plan(sweep)
        return 0
    prepare_folder(root, spec)
    started = time.time()
    timings, failures = {}, {}
    for stage in ("train", "sample", "aggregate"):
        names = todo(sweep, stage) if stage != "aggregate" else ["table"]
        t0 = time.time()
        if names:
            if args.cluster == "local":
                failures[stage] = run_stage_local(root, stage, names, args)
            else:
                failures[stage] = run_stage_debug(root, stage, names)
        timings[stage] = round(time.time() - t0, 1)
    print()
    print((root / "table.md").read_text() if (root / "table.md").is_file() else "(no table)")
    print(json.dumps({"sweep": str(root), "seconds": timings, "total_seconds": round(time.time() - started, 1),
                      "failed": {stage: sorted(names) for stage, names in failures.items() if names}}))
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
