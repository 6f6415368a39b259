#!/usr/bin/env python
"""Run a sweep (schedule × seed × any other config key): train → sample → evaluate → table.

Stages, each a job array submitted with submitit, each depending on the one before:
  train      one task per distinct network (the snr arm reuses the geometric arm's network)
  sample     one task per cell: shards of samples from the EMA weights, then FID/KID/IS
  aggregate  one task: the ablation table (mean, std and 95% CI over seeds) and plots

--cluster slurm   Slurm job arrays (sbatch through submitit); training may span nodes × GPUs
--cluster local   submitit's local executor: each task in its own process on this machine
--cluster debug   everything in this process, one task after the other (breakpoints work;
                  submitit's debug executor opens pdb on a failure)

Rerunning the same command on the same --out skips finished tasks, reruns failed
or unfinished ones (a training resumes from its checkpoint, a sampling keeps its
valid shards) and rewrites the table.

examples:
  python launch/sweep.py                                   # the local debug sweep on digits
  python launch/sweep.py --cluster slurm --schedules geometric,linear,snr --seeds 0,1,2,3,4 \
      --config configs/cifar10.yaml --partition gpu --nodes 2 --gpus-per-node 4 --time-train 2880 \
      train.mixed_precision=bf16
  python launch/sweep.py --schedules geometric,snr --seeds 0,1,2 train.steps=2000
  python launch/sweep.py --axis noise.steps_per_level=5,10   # a third axis
  python launch/sweep.py --status --out runs/sweep-debug
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from hpc_ncsn.config import ConfigError  # noqa: E402
from hpc_ncsn.grid import Plan, SweepSpec, plan, read_status  # noqa: E402
from hpc_ncsn.pipeline import describe, format_status, run_task  # noqa: E402
from hpc_ncsn.preemption import Preempted  # noqa: E402
from hpc_ncsn.schedules import ARMS  # noqa: E402

CLUSTERS = ("slurm", "local", "debug")


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
    where.add_argument("--timeout-min", type=int, default=24 * 60,
                       help="--cluster local: per-task time limit in minutes")
    slurm = parser.add_argument_group("--cluster slurm (what lands in the sbatch scripts; see --dry-run)")
    slurm.add_argument("--partition", help="sbatch --partition")
    slurm.add_argument("--account", help="sbatch --account")
    slurm.add_argument("--qos", help="sbatch --qos")
    slurm.add_argument("--constraint", help="sbatch --constraint, e.g. a100|h100")
    slurm.add_argument("--time-train", type=int, default=24 * 60, help="training time limit, minutes")
    slurm.add_argument("--time-sample", type=int, default=4 * 60, help="sampling + evaluation time limit, minutes")
    slurm.add_argument("--nodes", type=int, default=1, help="nodes per training task")
    slurm.add_argument("--sample-nodes", type=int, default=1, help="nodes per sampling task")
    slurm.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (0: CPU-only jobs)")
    slurm.add_argument("--tasks-per-node", type=int, default=None,
                       help="processes per node (default: one per GPU, else 1)")
    slurm.add_argument("--cpus-per-task", type=int, default=None, help="sbatch --cpus-per-task")
    slurm.add_argument("--mem-gb", type=int, default=None, help="memory per node, GB")
    slurm.add_argument("--signal-delay-s", type=int, default=120,
                       help="seconds before the time limit at which Slurm sends USR2 (save, requeue)")
    slurm.add_argument("--array-parallelism", type=int, default=64, help="array tasks running at once")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --sbatch exclusive=true --sbatch reservation=ml "
                            "(repeatable)")
    slurm.add_argument("--setup", action="append", default=[], metavar="COMMAND",
                       help="a line run before each task, e.g. 'module load cuda' (repeatable)")
    slurm.add_argument("--wait", action="store_true",
                       help="wait for the aggregation and print the table (otherwise submit and return)")
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
    """The tasks of a stage that are not done yet (the table is always rewritten)."""
    if stage == "aggregate":
        return ["table"]
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
    """What a submitit job runs: the task, with its job id and log recorded, requeued when preempted."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:  # one process per GPU (or CPU slot): torch.distributed's variables for Accelerate
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    try:
        return run_task(stage, Path(root), name, job_id=env.job_id, log=str(env.paths.stdout))
    except Preempted as stop:
        slurm_job = os.environ.get("SLURM_JOB_ID")
        if slurm_job and env.global_rank == 0:
            target = env.job_id  # ARRAY_TASK for array tasks
            print(f"{stop}; requeueing {target}", flush=True)
            done = subprocess.run(["scontrol", "requeue", target], capture_output=True, text=True)
            if done.returncode:  # e.g. already requeued from outside (scontrol requeue sends SIGTERM first)
                print(f"scontrol requeue {target}: {done.stderr.strip()}", flush=True)
        if slurm_job:
            sys.exit(-1)  # no result: submitit waits for the requeued run
        raise


def run_stage_local(root: Path, stage: str, names: list[str], args: argparse.Namespace) -> dict[str, str]:
    """Run a stage's tasks with submitit's local executor, `--local-parallel` at a time; {name: error}."""
    import submitit

    executor = submitit.LocalExecutor(folder=root / "logs" / "%j")
    executor.update_parameters(timeout_min=args.timeout_min)
    failures, parallel = {}, max(args.local_parallel, 1)
    for start in range(0, len(names), parallel):
        wave = names[start : start + parallel]
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


def _sbatch_extra(items: list[str]) -> dict:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--sbatch {item!r}: write KEY=VALUE (an sbatch long option without the dashes)")
        extra[key.replace("-", "_")] = True if value.lower() == "true" else value
    return extra


def slurm_parameters(args: argparse.Namespace, stage: str) -> dict:
    """submitit SlurmExecutor parameters of one stage."""
    nodes = {"train": args.nodes, "sample": args.sample_nodes, "aggregate": 1}[stage]
    gpus = args.gpus_per_node if stage != "aggregate" else 0
    tasks = 1 if stage == "aggregate" else (args.tasks_per_node or max(gpus, 1))
    minutes = {"train": args.time_train, "sample": args.time_sample, "aggregate": 30}[stage]
    params = {"job_name": f"ncsn-{stage}", "time": minutes, "nodes": nodes, "ntasks_per_node": tasks,
              "signal_delay_s": args.signal_delay_s, "array_parallelism": args.array_parallelism,
              "partition": args.partition, "account": args.account, "qos": args.qos, "constraint": args.constraint,
              "cpus_per_task": args.cpus_per_task, "mem": f"{args.mem_gb}GB" if args.mem_gb else None,
              "gpus_per_node": gpus or None, "setup": list(args.setup) or None,
              "additional_parameters": _sbatch_extra(args.sbatch) or None}
    return {key: value for key, value in params.items() if value is not None}


def submit_slurm(root: Path, sweep: Plan, args: argparse.Namespace) -> dict:
    """Submit the stages as dependent job arrays; returns {stage: array job id}."""
    import submitit

    submitted, previous = {}, None
    for stage in ("train", "sample", "aggregate"):
        names = todo(sweep, stage)
        if not names:
            continue
        executor = submitit.SlurmExecutor(folder=root / "logs" / "%j")
        params = slurm_parameters(args, stage)
        if previous is not None:  # afterany: a failed task must not block its siblings' later stages
            params["dependency"] = f"afterany:{previous}"
        executor.update_parameters(**params)
        jobs = executor.map_array(_submitted, [stage] * len(names), [str(root)] * len(names), names)
        previous = jobs[0].job_id.split("_")[0]
        submitted[stage] = {"array": previous, "tasks": dict(zip(names, (job.job_id for job in jobs)))}
        print(f"[{stage}] submitted array {previous}: {len(names)} task(s)", flush=True)
    record = root / "submitted.json"
    history = json.loads(record.read_text()) if record.is_file() else []
    history.append({"time": time.time(), "jobs": submitted})
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(history, indent=2) + "\n")
    os.replace(tmp, record)
    return submitted


def wait_slurm(submitted: dict, poll_s: float = 5.0) -> None:
    """Wait until the aggregation job has left the queue (squeue no longer lists it)."""
    final = submitted.get("aggregate", {}).get("array")
    while final:
        listed = subprocess.run(["squeue", "-h", "-j", final, "-o", "%i"], capture_output=True, text=True)
        if listed.returncode == 0 and not listed.stdout.strip():
            return
        time.sleep(poll_s)


def print_sbatch(root: Path, sweep: Plan, args: argparse.Namespace) -> None:
    """The sbatch scripts of the stages, as submitit writes them, without submitting (for --dry-run).

    Uses submitit's own script writer (submitit.slurm.slurm._make_sbatch_string) so that no
    Slurm is needed to look; the dependency on the previous stage is shown as <previous>.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    for stage in ("train", "sample", "aggregate"):
        count = len(todo(sweep, stage))
        params = slurm_parameters(args, stage)
        if stage != "train":
            params["dependency"] = "afterany:<previous>"
        text = _make_sbatch_string(command="python -u -m submitit.core._submit " + str(root / "logs" / "%j"),
                                   folder=root / "logs" / "%j", map_count=count, **params)
        print(f"--- {stage} stage: array of {count} ---\n{text}")


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
        if not (root / "sweep.json").is_file():
            print(f"{root} holds no sweep (no sweep.json); pass the --out of a launched sweep", file=sys.stderr)
            return 2
        print(format_status(describe(root)))  # the saved sweep, whatever the other options say
        return 0
    if args.dry_run:
        print_plan(sweep)
        if args.cluster == "slurm":
            print_sbatch(root, sweep, args)
        return 0
    prepare_folder(root, spec)
    if args.cluster == "slurm":
        submitted = submit_slurm(root, sweep, args)
        if not args.wait:
            print(f"watch: python {Path(__file__).name} --status --out {root}   (or squeue --me)\n"
                  f"cancel: scancel {' '.join(job['array'] for job in submitted.values())}\n"
                  f"rerun the same command to resume what failed or was cancelled")
            return 0
        wait_slurm(submitted)
        print((root / "table.md").read_text() if (root / "table.md").is_file() else "(no table)")
        rows = describe(root)
        failed = sorted(f"{row['stage']}/{row['task']}" for row in rows if row["state"] == "failed")
        print(json.dumps({"sweep": str(root), "jobs": {stage: job["array"] for stage, job in submitted.items()},
                          "failed": failed}))
        return 1 if failed else 0
    started = time.time()
    timings, failures = {}, {}
    for stage in ("train", "sample", "aggregate"):
        names = todo(sweep, stage)
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
