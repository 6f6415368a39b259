"""Run a sweep (arm × seed × any other config key): train → sample → evaluate → table.

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
valid shards) and rewrites the table. While jobs of the sweep are still queued or
running on Slurm, a rerun submits nothing and attaches to them (a different sweep is
refused, live or not); two launchers on one folder cannot run at once (a lock file, see
docs/sweeps.md).

states (--status): pending, running, done, failed, cancelled (SIGTERM: scancel or
--cancel), preempted (USR2 and requeued), lost (the job vanished without a word:
killed, out of memory, node failure; or a job that left the queue before its task
started). A rerun resumes cancelled and lost tasks.

exit status: 0 done (with --wait: every task done and the table written), 1 a task
ended failed, cancelled or lost, 2 a refusal (one line), 3 Slurm did not answer for
--scheduler-patience-s seconds (what is queued is unknown; the jobs may still run).

examples:
  python launch/sweep.py                                   # the local debug sweep on digits
  python launch/sweep.py --cluster slurm --arms geometric,linear,snr --seeds 0,1,2,3,4 \\
      --config configs/cifar10.yaml --partition gpu --nodes 2 --gpus-per-node 4 --time-train 2880 \\
      train.mixed_precision=bf16
  python launch/sweep.py --arms geometric,snr --seeds 0,1,2 train.steps=2000
  python launch/sweep.py --axis sampler.steps_per_level=5,10   # a third axis
  python launch/sweep.py --cluster slurm --python 'apptainer exec --nv hpc_ncsn.sif python' ...  # in a container
  python launch/sweep.py --status --out runs/sweep-debug
  python launch/sweep.py --cancel --out runs/sweep-debug
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..audit import END_NOISE_LIMIT, OVERRIDE_FLAG
from ..config import ARMS, DEBUG_CONFIG, ConfigError
from ..files import atomic_write
from ..errors import UserError
from ..locks import FolderLock
from . import scheduler, slurm
from .local import check_python, run_here
from .plan import ARM_AXIS, AUDIT_FILE, SEED_AXIS, SPEC_FILE, Plan, SweepSpec, audit_plan, plan
from .slurm import SlurmOptions
from .status import by_state, describe, format_status, todo

__all__ = ["CLUSTERS", "SweepMismatch", "add_arguments", "main", "slurm_options"]

CLUSTERS = ("slurm", "local", "debug")


class SweepMismatch(UserError, ValueError):
    """The sweep folder holds another sweep, or none; the message says which folder and what to do."""


def _values(text: str) -> list:
    """'a,b' → ['a', 'b']; numbers become numbers (YAML-like)."""
    import yaml

    return [yaml.safe_load(item) for item in text.split(",") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    grid = parser.add_argument_group("the grid")
    grid.add_argument("--config", type=Path, default=DEBUG_CONFIG,
                      help="base config (default: configs/debug.yaml, digits on a CPU)")
    grid.add_argument("--arms", "--schedules", dest="arms", default="geometric,linear,snr",
                      help=f"comma-separated arms, from {', '.join(ARMS)} (default: all three; --schedules is "
                           "the same flag under its earlier name)")
    grid.add_argument("--seeds", default="0,1", help="comma-separated seeds (default: 0,1)")
    grid.add_argument("--axis", action="append", default=[], metavar="KEY=V1,V2",
                      help="a further axis over any config key, e.g. sampler.steps_per_level=5,10 (repeatable)")
    grid.add_argument("--anchors", default="", metavar="real,untrained",
                      help="calibration rows, one per seed, scored like the cells: 'real' (N held-out real images: "
                           "the FID floor at this N) and 'untrained' (the initialised network's samples: the "
                           "ceiling) (default: none)")
    grid.add_argument(OVERRIDE_FLAG, dest="allow_unstable", default="", metavar="ARMS",
                      help="run these arms (comma-separated, or 'all') although the sampler audit refuses them "
                           f"(their Langevin chain would end above {END_NOISE_LIMIT:g} σ_L with the exact score); "
                           "recorded in sweep.json and shown in the table")
    grid.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                      help="config overrides for every cell, e.g. train.steps=500 generate.num_samples=1000")
    where = parser.add_argument_group("where and how")
    where.add_argument("--out", type=Path, default=None,
                       help="sweep folder (default: runs/sweep-<config name>)")
    where.add_argument("--cluster", choices=CLUSTERS, default="local", help="where tasks run (default: local)")
    where.add_argument("--local-parallel", type=int, default=None,
                       help="--cluster local: tasks running at once, sharing the CPUs for their threads (default: "
                            "one per CPU, at most 8, without a GPU; 1 with a GPU)")
    where.add_argument("--python", metavar="COMMAND", default=None,
                       help="the command that starts Python in each task, e.g. 'apptainer exec --nv hpc_ncsn.sif "
                            "python' (--cluster slurm and local; default: the launcher's own interpreter); it is "
                            "run once before anything is submitted, and must import this version of hpc_ncsn")
    where.add_argument("--timeout-min", type=int, default=24 * 60,
                       help="--cluster local: per-task time limit in minutes")
    slurm = parser.add_argument_group("--cluster slurm (what lands in the sbatch scripts; see --dry-run)")
    slurm.add_argument("--partition", help="sbatch --partition")
    slurm.add_argument("--account", help="sbatch --account")
    slurm.add_argument("--qos", help="sbatch --qos")
    slurm.add_argument("--constraint", help="sbatch --constraint, e.g. a100|h100")
    slurm.add_argument("--time-train", type=int, default=SlurmOptions.time_train, help="training time limit, minutes")
    slurm.add_argument("--time-sample", type=int, default=SlurmOptions.time_sample,
                       help="sampling + evaluation time limit, minutes")
    slurm.add_argument("--nodes", type=int, default=SlurmOptions.nodes, help="nodes per training task")
    slurm.add_argument("--sample-nodes", type=int, default=SlurmOptions.sample_nodes, help="nodes per sampling task")
    slurm.add_argument("--gpus-per-node", type=int, default=SlurmOptions.gpus_per_node,
                       help="GPUs per node (0: CPU-only jobs)")
    slurm.add_argument("--tasks-per-node", type=int, default=None,
                       help="processes per node (default: one per GPU, else 1)")
    slurm.add_argument("--cpus-per-task", type=int, default=None, help="sbatch --cpus-per-task")
    slurm.add_argument("--mem-gb", type=int, default=None, help="memory per node, GB")
    slurm.add_argument("--signal-delay-s", type=int, default=SlurmOptions.signal_delay_s,
                       help="seconds before the time limit at which Slurm sends USR2 (save, requeue)")
    slurm.add_argument("--array-parallelism", type=int, default=SlurmOptions.array_parallelism,
                       help="array tasks running at once")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --sbatch exclusive=true --sbatch reservation=ml "
                            "(repeatable)")
    slurm.add_argument("--setup", action="append", default=[], metavar="COMMAND",
                       help="a line run before each task, e.g. 'module load cuda' (repeatable)")
    slurm.add_argument("--max-requeues", type=int, default=SlurmOptions.max_requeues,
                       help="requeues per task (USR2 at the time limit, node failures) before it is failed "
                            "(default %(default)s)")
    slurm.add_argument("--wait", action="store_true",
                       help="wait until every job of the sweep has left the queue, with a one-line progress "
                            "summary every --poll-s seconds, then print the table (otherwise submit and return)")
    slurm.add_argument("--poll-s", type=float, default=60.0, help="--wait: seconds between progress lines")
    slurm.add_argument("--scheduler-patience-s", type=float, default=600.0,
                       help="--wait, --status: how long to keep asking a Slurm that does not answer (squeue fails: a "
                            "busy or restarting controller), with growing pauses, before giving up with exit status "
                            f"{scheduler.UNANSWERED_EXIT} (default %(default)s)")
    actions = parser.add_argument_group("actions")
    actions.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    actions.add_argument("--status", action="store_true", help="print every task's state and exit")
    actions.add_argument("--cancel", action="store_true",
                         help="stop the sweep's queued and running jobs (they save first); a rerun resumes them")


def slurm_options(args: argparse.Namespace) -> SlurmOptions:
    """The --cluster slurm flags as the Slurm driver's record (built once, here)."""
    return SlurmOptions(
        partition=args.partition, account=args.account, qos=args.qos, constraint=args.constraint,
        time_train=args.time_train, time_sample=args.time_sample, nodes=args.nodes, sample_nodes=args.sample_nodes,
        gpus_per_node=args.gpus_per_node, tasks_per_node=args.tasks_per_node, cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb, signal_delay_s=args.signal_delay_s, array_parallelism=args.array_parallelism,
        sbatch=tuple(args.sbatch), setup=tuple(args.setup), max_requeues=args.max_requeues, python=args.python)


def build_spec(args: argparse.Namespace) -> SweepSpec:
    axes = {ARM_AXIS: _values(args.arms), SEED_AXIS: _values(args.seeds)}
    unknown = [arm for arm in axes[ARM_AXIS] if arm not in ARMS]
    if unknown:
        raise ConfigError(f"--arms: unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
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
    return SweepSpec.from_config(config, axes, tuple(args.overrides),
                                 tuple(item.strip() for item in args.anchors.split(",") if item.strip()),
                                 tuple(item.strip() for item in args.allow_unstable.split(",") if item.strip()))


def _saved_spec(root: Path) -> SweepSpec | None:
    """The spec in the folder's sweep.json (an older one read as migrated), None if there is none yet."""
    path = root / SPEC_FILE
    return SweepSpec.from_json(path.read_text()) if path.is_file() else None


def prepare_folder(root: Path, spec: SweepSpec, audits: dict | None = None) -> None:
    """Write sweep.json (and the sampler audit, AUDIT_FILE), or check that a rerun asks for the same sweep."""
    saved = _saved_spec(root)
    if saved is None:
        spec.save(root)
        if audits is not None:
            atomic_write(root / AUDIT_FILE, json.dumps(audits, indent=2, sort_keys=True) + "\n")
        return
    changes = saved.differences(spec)
    if changes:
        raise SweepMismatch(f"{root} holds another sweep ({root / SPEC_FILE}); saved → requested: "
                            + "; ".join(changes) + "; rerun with the same config and options, or pick a new --out")


def print_plan(sweep: Plan, audits: dict) -> None:
    print(f"sweep folder: {sweep.root}")
    print("sampler audit (the chain's noise at the last level, exact score, in σ_L):")
    for row, record in audits.items():
        noise = "" if record["end_noise"] is None else f"{record['end_noise']:.3g} σ_L, "
        print(f"  {row}: {noise}{record['verdict']}")
    print(f"train ({len(sweep.train)} tasks, {len(todo(sweep.root, sweep.train))} to run):")
    for task in sweep.train:
        print(f"  {task.name}: {task.folder}")
    print(f"sample + evaluate ({len(sweep.sample)} cells, {len(todo(sweep.root, sweep.sample))} to run):")
    for task in sweep.sample:
        source = f"network of {task.train.name}" if task.train is not None else f"anchor ({task.kind})"
        print(f"  {task.name}: {source}, samples in {task.folder}")
    print("aggregate: table.md, table.csv, table.json, fid.png, loss_per_level.png, samples.png"
          + (", fid_vs_step.png" if sweep.spec.base["train"]["eval_every"] else ""))


def _named_like_saved(root: Path, spec: SweepSpec) -> SweepSpec:
    """The requested spec, with the cell names of the same sweep saved in `root` (one made before the arm axis
    had its name keeps its folders); prepare_folder refuses a different sweep."""
    saved = _saved_spec(root)
    return spec if saved is None or saved.differences(spec) else spec.named_like(saved)


def _sweep_root(args: argparse.Namespace) -> Path:
    return (args.out or Path("runs") / f"sweep-{args.config.stem}").resolve()


def _saved_plan(root: Path) -> Plan:
    return plan(SweepSpec.load(root), root)


def main(args: argparse.Namespace, script: str = "python launch/sweep.py") -> int:
    """The sweep command on parsed arguments (hpc_ncsn.cli parses them)."""
    try:
        return _main(args, script)
    except scheduler.Unanswered as error:  # not a refusal: the state of the jobs is unknown
        print(f"error: {error}", file=sys.stderr)
        return scheduler.UNANSWERED_EXIT


def _main(args: argparse.Namespace, script: str) -> int:
    root = _sweep_root(args)
    if args.status:
        saved = _saved_plan(root)  # the saved sweep
        queue = slurm.observed_queue(root, saved, args.scheduler_patience_s,  # stdout: the table alone
                                     say=lambda line: print(line, file=sys.stderr, flush=True))
        print(format_status(describe(saved, queue, slurm.submitted_tasks(root)[0])))
        return 0
    if args.cancel:
        print(slurm.cancel(root, _saved_plan(root)))
        return 0
    spec = _named_like_saved(root, build_spec(args))
    sweep = plan(spec, root)
    audits = audit_plan(sweep)  # refuses an arm whose chain would not settle, before anything is written
    if args.python is not None:
        if args.cluster == "debug":
            raise ConfigError("--python: --cluster debug runs every task in the launcher's own process; use "
                              "--cluster local or slurm, or run the launcher itself with that Python")
        print(f"tasks start with: {check_python(args.python)}", flush=True)
    if args.cluster != "slurm":
        if args.dry_run:
            print_plan(sweep, audits)
            return 0
        with FolderLock(root, "sweep", what=f"launch/sweep.py --cluster {args.cluster}",
                        fields={"cluster": args.cluster},
                        fix="wait for that sweep, or stop it with: " + f"{script} --cancel --out {root}"):
            prepare_folder(root, spec, audits)
            return run_here(root, sweep, args.cluster, parallel=args.local_parallel,
                            timeout_min=args.timeout_min, max_requeues=args.max_requeues, python=args.python)
    return _on_slurm(root, spec, sweep, slurm_options(args), audits, dry_run=args.dry_run, wait=args.wait,
                     poll_s=args.poll_s, patience_s=args.scheduler_patience_s, script=script)


def _on_slurm(root: Path, spec: SweepSpec, sweep: Plan, options: SlurmOptions, audits: dict, *, dry_run: bool,
              wait: bool, poll_s: float, patience_s: float, script: str) -> int:
    """--cluster slurm: print the plan and the sbatch scripts (dry run), or submit (or attach) and maybe wait."""
    if dry_run:
        print_plan(sweep, audits)
        for stage, tasks in sweep.stages():
            params = slurm.slurm_parameters(options, stage, root.name)
            if stage != sweep.stages()[0][0]:
                params["dependency"] = "afterany:<previous>"
            count = len(todo(root, tasks))
            print(f"--- {stage} stage: array of {count} ---\n{slurm.sbatch_text(root, params, count, options.python)}")
        return 0
    slurm.check_submission(root, sweep, options)  # before anything is written
    cancel_hint = f"{script} --cancel --out {root}"
    with FolderLock(root, "sweep", what="launch/sweep.py --cluster slurm (submitting)", fields={"cluster": "slurm"},
                    fix="retry in a moment"):
        prepare_folder(root, spec, audits)  # a different sweep is refused, live jobs or not
        live = slurm.live_jobs(root, sweep, slurm.observed_queue(root, sweep, patience_s))
        if live:
            print(f"{len(live)} job(s) of an earlier submission are still queued or running; attaching to them "
                  f"instead of submitting again (status: {script} --status --out {root})", flush=True)
        else:
            submitted = slurm.submit(root, sweep, options)
            if not submitted:
                print("every task is done; nothing to submit")
    if not wait:
        print(f"watch: {script} --status --out {root}   (or squeue --me)\ncancel: {cancel_hint}\n"
              "rerun the same command to resume what failed, was cancelled or was lost")
        return 0
    return _report(root, slurm.wait(root, sweep, poll_s, cancel_hint, patience_s))


def _report(root: Path, rows: list[dict]) -> int:
    """--wait's end: the table and one JSON line (the jobs, and every task under its state's key); 0 only when
    every task is done and the table is written."""
    table = root / "table.md"
    print(table.read_text() if table.is_file() else "(no table)")
    latest, _ = slurm.submitted_tasks(root)
    states = by_state(rows)
    print(json.dumps({"sweep": str(root), "jobs": {stage: sorted({j.split("_")[0] for j in ids.values()})
                                                   for stage, ids in latest.items()},
                      "table": str(table) if table.is_file() else None, **states}))
    return 0 if table.is_file() and len(states["done"]) == len(rows) else 1
