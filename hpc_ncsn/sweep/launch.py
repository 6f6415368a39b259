"""Run a sweep (schedule × seed × any other config key): train → sample → evaluate → table.

Stages, each a job array submitted with submitit, each depending on the one before:
  train      one task per distinct network (the snr arm reuses the geometric arm's network)
  sample     one task per cell: shards of samples from the EMA weights, then FID/KID/IS
  aggregate  one task: the ablation table (mean, std and 95% CI over seeds) and plots

--cluster slurm   Slurm job arrays (sbatch through submitit); training may span nodes × GPUs
--cluster local   submitit's local executor: each task in its own process on this machine
--cluster debug   submitit's debug executor: every task in this process, one after the other
                  (breakpoints work; a failing task opens pdb post mortem when stdin is a terminal)

Rerunning the same command on the same --out skips finished tasks, reruns failed
or unfinished ones (a training resumes from its checkpoint, a sampling keeps its
valid shards) and rewrites the table.

examples:
  python launch/sweep.py                                   # the local debug sweep on digits
  python launch/sweep.py --cluster slurm --schedules geometric,linear,snr --seeds 0,1,2,3,4 \\
      --config configs/cifar10.yaml --partition gpu --nodes 2 --gpus-per-node 4 --time-train 2880 \\
      train.mixed_precision=bf16
  python launch/sweep.py --schedules geometric,snr --seeds 0,1,2 train.steps=2000
  python launch/sweep.py --axis sampler.steps_per_level=5,10   # a third axis
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

from .. import preemption
from ..config import ARMS, ConfigError
from ..distributed import is_main_process
from ..files import atomic_write
from .plan import ARM_AXIS, SEED_AXIS, SPEC_FILE, Plan, SweepSpec, plan
from .status import describe, format_status, read_status, run_tracked
from .tasks import AggregateTask, SampleTask, Task, TrainTask

__all__ = ["CLUSTERS", "SweepMismatch", "add_arguments", "job", "main", "sbatch_text"]

CLUSTERS = ("slurm", "local", "debug")


class SweepMismatch(ValueError):
    """The sweep folder holds another sweep, or none; the message says which folder and what to do."""
DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "debug.yaml"


def _values(text: str) -> list:
    """'a,b' → ['a', 'b']; numbers become numbers (YAML-like)."""
    import yaml

    return [yaml.safe_load(item) for item in text.split(",") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    grid = parser.add_argument_group("the grid")
    grid.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                      help="base config (default: configs/debug.yaml, digits on a CPU)")
    grid.add_argument("--schedules", default="geometric,linear,snr",
                      help=f"comma-separated arms, from {', '.join(ARMS)} (default: all three)")
    grid.add_argument("--seeds", default="0,1", help="comma-separated seeds (default: 0,1)")
    grid.add_argument("--axis", action="append", default=[], metavar="KEY=V1,V2",
                      help="a further axis over any config key, e.g. sampler.steps_per_level=5,10 (repeatable)")
    grid.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                      help="config overrides for every cell, e.g. train.steps=500 generate.num_samples=1000")
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


def build_spec(args: argparse.Namespace) -> SweepSpec:
    axes = {ARM_AXIS: _values(args.schedules), SEED_AXIS: _values(args.seeds)}
    unknown = [arm for arm in axes[ARM_AXIS] if arm not in ARMS]
    if unknown:
        raise ConfigError(f"--schedules: unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    for item in args.axis:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--axis {item!r}: write KEY=V1,V2 (e.g. sampler.steps_per_level=5,10)")
        if key in axes:
            raise ConfigError(f"--axis {item!r}: {key} is already an axis; give its values once")
        axes[key] = _values(values)
    config = args.config.resolve()
    if not config.is_file():
        raise ConfigError(f"--config {args.config}: no such file; pass a YAML config such as configs/debug.yaml")
    return SweepSpec.from_config(config, axes, tuple(args.overrides))


def prepare_folder(root: Path, spec: SweepSpec) -> None:
    """Write sweep.json, or check that a rerun asks for the same sweep."""
    path = root / SPEC_FILE
    if path.is_file():
        changes = SweepSpec.from_json(path.read_text()).differences(spec)
        if changes:
            raise SweepMismatch(f"{root} holds another sweep ({path}); saved → requested: " + "; ".join(changes)
                                + "; rerun with the same config and options, or pick a new --out")
        return
    spec.save(root)


def todo(sweep: Plan, tasks: list[Task]) -> list[Task]:
    """The tasks that are not done yet (the table is always rewritten)."""
    return [task for task in tasks
            if isinstance(task, AggregateTask) or (status := read_status(sweep.root, task)) is None
            or status.state != "done"]


def print_plan(sweep: Plan) -> None:
    print(f"sweep folder: {sweep.root}")
    print(f"train ({len(sweep.train)} tasks, {len(todo(sweep, sweep.train))} to run):")
    for task in sweep.train:
        print(f"  {task.name}: {task.folder}")
    print(f"sample + evaluate ({len(sweep.sample)} cells, {len(todo(sweep, sweep.sample))} to run):")
    for task in sweep.sample:
        print(f"  {task.name}: network of {task.train.name}, samples in {task.folder}")
    print("aggregate: table.md, table.csv, table.json, fid.png, loss_per_level.png, samples.png")


def job(root: str, task: Task):
    """What a submitted job runs: the task, with its job id and log recorded, requeued when preempted."""
    import submitit

    env = submitit.JobEnvironment()
    if env.num_tasks > 1:  # one process per GPU (or CPU slot): torch.distributed's variables for Accelerate
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    try:
        return run_tracked(Path(root), task, lambda: task.run(Path(root)), job_id=env.job_id,
                           log=str(env.paths.stdout))
    except preemption.Preempted as stop:
        if not os.environ.get("SLURM_JOB_ID"):
            raise
        if is_main_process():
            problem = preemption.requeue(env.job_id)  # JOB_TASK for array tasks
            print(f"{stop}; requeueing {env.job_id}" + (f" (scontrol: {problem})" if problem else ""), flush=True)
        sys.exit(-1)  # no result: submitit waits for the requeued run


def _run_jobs(executor, root: Path, tasks: list[Task], parallel: int) -> dict[str, str]:
    """Run `tasks` with a submitit executor, `parallel` at a time; {task name: error} of the failed ones."""
    failures = {}
    for start in range(0, len(tasks), parallel):
        wave = tasks[start:start + parallel]
        jobs = executor.map_array(job, [str(root)] * len(wave), wave)
        for task, submitted in zip(wave, jobs):
            print(f"[{task.stage}] {task.name}: job {submitted.job_id}, log {submitted.paths.stdout}", flush=True)
        for task, submitted in zip(wave, jobs):
            try:
                submitted.result()
                print(f"[{task.stage}] {task.name}: done", flush=True)
            except Exception as error:  # noqa: BLE001 - a failed task is reported, its siblings go on
                text = str(error).strip()
                failures[task.name] = text.splitlines()[-1] if text else repr(error)
                print(f"[{task.stage}] {task.name}: FAILED ({failures[task.name]}); log {submitted.paths.stderr}",
                      flush=True)
    return failures


def run_here(root: Path, sweep: Plan, args: argparse.Namespace) -> int:
    """--cluster local or debug: the stages one after the other on this machine; prints the table."""
    import submitit

    if args.cluster == "local":
        executor = submitit.LocalExecutor(folder=root / "logs" / "%j")
        executor.update_parameters(timeout_min=args.timeout_min)
        parallel = max(args.local_parallel, 1)
    else:
        executor = submitit.DebugExecutor(folder=root / "logs" / "%j")
        parallel = 1
    started = time.time()
    timings, failures = {}, {}
    for stage, tasks in sweep.stages():
        t0 = time.time()
        pending = todo(sweep, tasks)
        if pending:
            failures[stage] = _run_jobs(executor, root, pending, parallel)
        timings[stage] = round(time.time() - t0, 1)
    print()
    print((root / "table.md").read_text() if (root / "table.md").is_file() else "(no table)")
    print(json.dumps({"sweep": str(root), "seconds": timings, "total_seconds": round(time.time() - started, 1),
                      "failed": {stage: sorted(names) for stage, names in failures.items() if names}}))
    return 1 if any(failures.values()) else 0


def _sbatch_extra(items: list[str]) -> dict:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--sbatch {item!r}: write KEY=VALUE (an sbatch long option without the dashes)")
        extra[key.replace("-", "_")] = True if value.lower() == "true" else value
    return extra


def slurm_parameters(args: argparse.Namespace, stage: str) -> dict:
    """submitit SlurmExecutor parameters of one stage."""
    resources = {  # nodes, GPUs per node, time limit in minutes
        TrainTask.stage: (args.nodes, args.gpus_per_node, args.time_train),
        SampleTask.stage: (args.sample_nodes, args.gpus_per_node, args.time_sample),
        AggregateTask.stage: (1, 0, 30),
    }
    nodes, gpus, minutes = resources[stage]
    tasks = 1 if stage == AggregateTask.stage else (args.tasks_per_node or max(gpus, 1))
    params = {"job_name": f"ncsn-{stage}", "time": minutes, "nodes": nodes, "ntasks_per_node": tasks,
              "signal_delay_s": args.signal_delay_s, "array_parallelism": args.array_parallelism,
              "partition": args.partition, "account": args.account, "qos": args.qos, "constraint": args.constraint,
              "cpus_per_task": args.cpus_per_task, "mem": f"{args.mem_gb}GB" if args.mem_gb else None,
              "gpus_per_node": gpus or None, "setup": list(args.setup) or None,
              "additional_parameters": _sbatch_extra(args.sbatch) or None}
    return {key: value for key, value in params.items() if value is not None}


def submit_slurm(root: Path, sweep: Plan, args: argparse.Namespace) -> dict:
    """Submit the stages as dependent job arrays; returns {stage: {'array': id, 'tasks': {name: id}}}."""
    import submitit

    submitted, previous = {}, None
    for stage, tasks in sweep.stages():
        pending = todo(sweep, tasks)
        if not pending:
            continue
        executor = submitit.SlurmExecutor(folder=root / "logs" / "%j")
        params = slurm_parameters(args, stage)
        if previous is not None:  # afterany: a failed task must not block its siblings' later stages
            params["dependency"] = f"afterany:{previous}"
        executor.update_parameters(**params)
        jobs = executor.map_array(job, [str(root)] * len(pending), pending)
        previous = jobs[0].job_id.split("_")[0]
        submitted[stage] = {"array": previous, "tasks": {task.name: j.job_id for task, j in zip(pending, jobs)}}
        print(f"[{stage}] submitted array {previous}: {len(pending)} task(s)", flush=True)
    record = root / "submitted.json"
    history = json.loads(record.read_text()) if record.is_file() else []
    history.append({"time": time.time(), "jobs": submitted})
    atomic_write(record, json.dumps(history, indent=2) + "\n")
    return submitted


def wait_slurm(submitted: dict, poll_s: float = 5.0) -> None:
    """Wait until the aggregation job has left the queue (squeue no longer lists it)."""
    final = submitted.get(AggregateTask.stage, {}).get("array")
    while final:
        listed = subprocess.run(["squeue", "-h", "-j", final, "-o", "%i"], capture_output=True, text=True)
        if listed.returncode == 0 and not listed.stdout.strip():
            return
        time.sleep(poll_s)


def sbatch_text(root: Path, params: dict, count: int) -> str:
    """The sbatch script submitit writes for an array of `count` tasks with `params`, without Slurm.

    submitit has no public way to render its script without submitting it; its executor
    renders it with submitit.slurm.slurm._make_sbatch_string, which this calls.
    tests/test_sweep_plan.py pins the text (golden test), so a submitit change that
    alters it shows there.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(command="python -u -m submitit.core._submit " + str(root / "logs" / "%j"),
                               folder=root / "logs" / "%j", map_count=count, **params)


def print_sbatch(root: Path, sweep: Plan, args: argparse.Namespace) -> None:
    """The sbatch scripts of the stages (for --dry-run); the dependency on the previous stage shows as <previous>."""
    for stage, tasks in sweep.stages():
        params = slurm_parameters(args, stage)
        if stage != TrainTask.stage:
            params["dependency"] = "afterany:<previous>"
        count = len(todo(sweep, tasks))
        print(f"--- {stage} stage: array of {count} ---\n{sbatch_text(root, params, count)}")


def run_slurm(root: Path, sweep: Plan, args: argparse.Namespace, script: str) -> int:
    submitted = submit_slurm(root, sweep, args)
    if not args.wait:
        print(f"watch: {script} --status --out {root}   (or squeue --me)\n"
              f"cancel: scancel {' '.join(job['array'] for job in submitted.values())}\n"
              f"rerun the same command to resume what failed or was cancelled")
        return 0
    wait_slurm(submitted)
    print((root / "table.md").read_text() if (root / "table.md").is_file() else "(no table)")
    failed = sorted(f"{row['stage']}/{row['task']}" for row in describe(sweep) if row["state"] == "failed")
    print(json.dumps({"sweep": str(root), "jobs": {stage: job["array"] for stage, job in submitted.items()},
                      "failed": failed}))
    return 1 if failed else 0


def main(args: argparse.Namespace, script: str = "python launch/sweep.py") -> int:
    """The sweep command on parsed arguments (hpc_ncsn.cli parses them)."""
    root = (args.out or Path("runs") / f"sweep-{args.config.stem}").resolve()
    if args.status:
        if not (root / SPEC_FILE).is_file():
            raise SweepMismatch(f"{root} holds no sweep (no {SPEC_FILE}); pass the --out of a launched sweep")
        print(format_status(describe(plan(SweepSpec.load(root), root))))  # the saved sweep, whatever the options
        return 0
    spec = build_spec(args)
    sweep = plan(spec, root)
    if args.dry_run:
        print_plan(sweep)
        if args.cluster == "slurm":
            print_sbatch(root, sweep, args)
        return 0
    prepare_folder(root, spec)
    if args.cluster == "slurm":
        return run_slurm(root, sweep, args, script)
    return run_here(root, sweep, args)
