"""Run a sweep (arm × seed × any other config key): train → sample → evaluate → table.

Stages (on Slurm, each a job array submitted with submitit, depending on the one before):
  train      one task per distinct network (the snr arm reuses the geometric arm's network)
  sample     one task per cell: shards of samples from the EMA weights, then FID/KID/IS
  aggregate  one task: the ablation table (mean, std and 95% CI over seeds), plots and report.html

--cluster slurm   Slurm job arrays (sbatch through submitit); training may span nodes × GPUs
--cluster local   submitit's local executor: each task in its own process on this machine, as soon as
                  the tasks it depends on have ended (a cell samples once its own network is trained)
--cluster debug   submitit's debug executor: every task in this process, one after the other
                  (breakpoints work; a failing task opens pdb post mortem when stdin is a terminal)

Rerunning the same command on the same --out skips finished tasks, reruns failed
or unfinished ones (a training resumes from its checkpoint, a sampling keeps its
valid shards) and rewrites the table. While jobs of the sweep are still queued or
running on Slurm, a rerun submits nothing and attaches to them; two launchers on one
folder cannot run at once (a lock file, see docs/sweeps.md). More seeds, arms or axis
values (after the saved ones) grow the sweep: only the new cells run; --extend
train.steps=N trains its networks longer; anything else (a different sweep, live
or not) is refused in one line, by --dry-run too (hpc_ncsn.sweep.grow; docs/sweeps.md, Growing a sweep).

states (--status): pending, running, done, failed, cancelled (SIGTERM: scancel or
--cancel), preempted (USR2 and requeued), lost (the job vanished without a word:
killed, out of memory, node failure; or a job that left the queue before its task
started). A rerun resumes cancelled and lost tasks.

exit status: 0 every task done and the table written (--cluster slurm without --wait:
submitted), 1 a task not done (failed, cancelled, lost), 2 a refusal (one line), 3 Slurm did not answer for
--scheduler-patience-s seconds (what is queued is unknown; the jobs may still run).

examples:
  python launch/sweep.py                                   # the local debug sweep on digits
  python launch/sweep.py --cluster slurm --arms geometric,linear,snr --seeds 0,1,2,3,4 \\
      --config configs/cifar10.yaml --partition gpu --nodes 2 --gpus-per-node 4 --time-train 2880 \\
      train.mixed_precision=bf16
  python launch/sweep.py --cluster slurm --profile cluster.yaml --time-train 600   # settings in a file
  python launch/sweep.py --arms geometric,snr --seeds 0,1,2 train.steps=2000
  python launch/sweep.py --axis sampler.steps_per_level=5,10   # a third axis
  python launch/sweep.py --cluster slurm --python 'apptainer exec --nv hpc_ncsn.sif python' ...  # in a container
  python launch/sweep.py --seeds 0,1,2 --out runs/sweep-debug   # grow it: only the new cells run
  python launch/sweep.py --extend train.steps=1000 --out runs/sweep-debug   # train its networks longer
  python launch/sweep.py --status --out runs/sweep-debug
  python launch/sweep.py --cancel --out runs/sweep-debug
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..audit import END_NOISE_LIMIT, OVERRIDE_FLAG
from ..config import ARMS, DEBUG_CONFIG, ConfigError, config_path
from ..locks import FolderLock
from . import scheduler, slurm
from .cost import describe_cost, logged_rate, sweep_cost
from .limits import Limits, array_plan, read_limits
from .local import check_python, run_here
from .grow import EXTENDABLE, Decision, SweepMismatch, prepare, reconcile
from .plan import ARM_AXIS, LEGACY_ARM_AXIS, SEED_AXIS, Plan, SweepSpec, audit_plan, plan
from .plots import planned_files
from .profile import PROFILE_KEYS, merge_options, read_profile, record_options
from .slurm import SlurmOptions
from .status import describe, final_report, format_status
from .tasks import SampleTask

__all__ = ["CLUSTERS", "SweepMismatch", "add_arguments", "main", "slurm_options"]

CLUSTERS = ("slurm", "local", "debug")


def _split(text: str, flag: str) -> list[str]:
    """'a,[1,2],"x,y"' → ['a', '[1,2]', '"x,y"']: only commas outside brackets, braces and quotes split."""
    items, current, closing, quote = [], "", [], ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{":
            closing.append("]" if char == "[" else "}")
        elif char in "]}":
            if not closing or closing.pop() != char:
                raise ConfigError(f"{flag} {text!r}: unbalanced {char!r}; close each [ with ] and each {{ with }}")
        elif char == "," and not closing:
            items.append(current)
            current = ""
            continue
        current += char
    if closing or quote:
        raise ConfigError(f"{flag} {text!r}: an unclosed {quote or closing[-1]!r}; close it (e.g. "
                          "--axis model.channel_mults=[1,2],[1,2,2])")
    return [*items, current]


def _values(text: str, flag: str) -> list:
    """'a,b' → ['a', 'b']; numbers become numbers, [1,2] a list (YAML-like); commas inside brackets do not split."""
    import yaml

    try:
        return [yaml.safe_load(item) for item in _split(text, flag) if item.strip()]
    except yaml.YAMLError as error:
        problem = str(getattr(error, "problem", None) or "not YAML").splitlines()[0]
        raise ConfigError(f"{flag} {text!r}: a value is not valid YAML ({problem}); write V1,V2 with YAML values "
                          "such as 5, 1e-4, linear or [1,2]") from None


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
    grid.add_argument("--extend", action="append", default=[], metavar="train.steps=N",
                      help="train the networks of the sweep in --out longer: each resumes from its checkpoint to N "
                           "steps, and every cell that samples one is sampled and scored again (the earlier results "
                           "move to history/steps-<S>/); recorded in sweep.json's history")
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
    slurm.add_argument("--profile", type=Path, default=None, metavar="FILE",
                       help="a YAML file of these options by field name (partition, account, qos, constraint, "
                            "time_train, gpus_per_node, setup, sbatch, python, ...); a flag given here wins over it")
    slurm.add_argument("--partition", help="sbatch --partition")
    slurm.add_argument("--account", help="sbatch --account")
    slurm.add_argument("--qos", help="sbatch --qos")
    slurm.add_argument("--constraint", help="sbatch --constraint, e.g. a100|h100")
    slurm.add_argument("--time-train", type=int, default=None,
                       help=f"training time limit, minutes (default {SlurmOptions.time_train})")
    slurm.add_argument("--time-sample", type=int, default=None,
                       help=f"sampling + evaluation time limit, minutes (default {SlurmOptions.time_sample})")
    slurm.add_argument("--nodes", type=int, default=None, help="nodes per training task (default 1)")
    slurm.add_argument("--sample-nodes", type=int, default=None, help="nodes per sampling task (default 1)")
    slurm.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node (0, the default: CPU-only jobs)")
    slurm.add_argument("--tasks-per-node", type=int, default=None,
                       help="processes per node (default: one per GPU, else 1)")
    slurm.add_argument("--cpus-per-task", type=int, default=None, help="sbatch --cpus-per-task")
    slurm.add_argument("--mem-gb", type=int, default=None, help="memory per node, GB")
    slurm.add_argument("--signal-delay-s", type=int, default=None,
                       help="seconds before the time limit at which Slurm sends USR2 (save, requeue) (default "
                            f"{SlurmOptions.signal_delay_s})")
    slurm.add_argument("--array-parallelism", type=int, default=None,
                       help=f"array tasks running at once (default {SlurmOptions.array_parallelism})")
    slurm.add_argument("--max-array-size", type=int, default=None, metavar="N",
                       help="Slurm's MaxArraySize: a stage of more tasks is split into arrays of at most N "
                            "(default: what scontrol show config says, read once per launch)")
    slurm.add_argument("--max-submit-jobs", type=int, default=None, metavar="N",
                       help="the most jobs you may have queued at once (your QOS's MaxSubmitJobs, which scontrol "
                            "does not show); a sweep that needs more is refused before anything is submitted "
                            "(default: only slurm.conf's MaxJobCount)")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --sbatch exclusive=true --sbatch reservation=ml "
                            "(repeatable)")
    slurm.add_argument("--setup", action="append", default=[], metavar="COMMAND",
                       help="a line run before each task, e.g. 'module load cuda' (repeatable)")
    slurm.add_argument("--max-requeues", type=int, default=None,
                       help="requeues per task (USR2 at the time limit, node failures) before it is failed "
                            f"(default {SlurmOptions.max_requeues})")
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
    """The --cluster slurm flags over the --profile file as the Slurm driver's record (built once, here)."""
    flags = {key: getattr(args, key, None) for key in PROFILE_KEYS}
    return merge_options(read_profile(args.profile) if args.profile else {}, flags)


# The numeric flags' lower bounds (a flag left unset keeps its default): the Slurm driver's, and the launcher's own.
_AT_LEAST = {**slurm.LOWEST, "local_parallel": 1, "timeout_min": 1}


def check_numbers(args: argparse.Namespace) -> None:
    """ConfigError for a numeric flag below its bound, before anything is planned or submitted."""
    for name, least in _AT_LEAST.items():
        value = getattr(args, name)
        if value is not None and value < least:
            meaning = " (0: a task is never requeued)" if name == "max_requeues" else ""
            raise ConfigError(f"--{name.replace('_', '-')} {value}: must be >= {least}{meaning}")
    if not args.poll_s > 0:
        raise ConfigError(f"--poll-s {args.poll_s}: must be a positive number of seconds")


def _arm_keys(arms: list) -> dict[str, str]:
    """The config keys a cell's arm or seed sets (an axis or override of one would be overwritten or would
    overwrite it): key → the flag that owns it."""
    keys = {"train.seed": "--seeds", "noise.ladder": "--arms", "sampler.step_rule": "--arms"}
    return keys | {f"sampler.{key}": "--arms" for arm in arms for key, _ in ARMS[arm].sampler}


def build_spec(args: argparse.Namespace) -> SweepSpec:
    axes = {ARM_AXIS: _values(args.arms, "--arms"), SEED_AXIS: _values(args.seeds, "--seeds")}
    unknown = [arm for arm in axes[ARM_AXIS] if arm not in ARMS]
    if unknown:
        raise ConfigError(f"--arms: unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
    owned = _arm_keys(axes[ARM_AXIS])
    for item in args.overrides:
        key = item.partition("=")[0].strip()
        if key in owned:
            raise ConfigError(f"{item!r}: each cell sets {key} from its {owned[key][2:-1]}, which would overwrite "
                              f"this; use {owned[key]}")
    for item in args.axis:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values or not key:
            raise ConfigError(f"--axis {item!r}: write KEY=V1,V2 (e.g. sampler.steps_per_level=5,10)")
        if key in axes or key == LEGACY_ARM_AXIS:
            raise ConfigError(f"--axis {item!r}: {key} is already an axis; give its values with "
                              f"{'--seeds' if key == SEED_AXIS else '--arms'}")
        if key in owned:
            raise ConfigError(f"--axis {item!r}: each cell sets {key} from its {owned[key][2:-1]}; an axis over it "
                              f"would mislabel the cells: use {owned[key]}")
        axes[key] = _values(values, f"--axis {key}")
    config = config_path(args.config).resolve()
    if not config.is_file():
        raise ConfigError(f"--config {args.config}: no such file; pass a YAML config such as configs/debug.yaml")
    extend = []
    for item in args.extend:
        key, sep, value = item.partition("=")
        if key not in EXTENDABLE or not sep or not value:
            raise ConfigError(f"--extend {item!r}: write {' or '.join(EXTENDABLE)}=N, N above the sweep's own, e.g. "
                              "--extend train.steps=4000")
        extend.append(item)
    return SweepSpec.from_config(config, axes, (*args.overrides, *extend),
                                 tuple(item.strip() for item in args.anchors.split(",") if item.strip()),
                                 tuple(item.strip() for item in args.allow_unstable.split(",") if item.strip()))


def prepare_folder(decision: Decision, audits: dict | None = None) -> Decision:
    """Inside the launcher's lock: check that the folder still holds what `decision` was made on, then record it
    (sweep.json and the sampler audit, AUDIT_FILE; an extension's history first: hpc_ncsn.sweep.grow.prepare)."""
    now = reconcile(decision.root, decision.spec, extend=decision.steps is not None)
    if now.kind not in ("same", decision.kind):  # "same": another launcher recorded this very change meanwhile
        raise SweepMismatch(f"the sweep in {decision.root} changed while this command started; rerun it")
    prepare(now, audits)
    return now


def print_plan(sweep: Plan, audits: dict, decision: Decision) -> None:
    """--dry-run: what a real run does (the same decision, hpc_ncsn.sweep.grow), the audit and the tasks it starts."""
    print(f"sweep folder: {sweep.root}")
    for line in decision.describe(sweep):
        print(line)
    print("sampler audit (the chain's noise at the last level, exact score, in σ_L):")
    for row, record in audits.items():
        noise = "" if record["end_noise"] is None else f"{record['end_noise']:.3g} σ_L, "
        print(f"  {row}: {noise}{record['verdict']}")
    runs = {(task.stage, task.name) for task in decision.todo([*sweep.train, *sweep.sample])}

    def state(task) -> str:
        return "runs" if (task.stage, task.name) in runs else "done, kept"

    print(f"train ({len(sweep.train)} tasks, {len(decision.todo(sweep.train))} to run):")
    for task in sweep.train:
        print(f"  {task.name}: {task.folder} [{state(task)}]")
    print(f"sample + evaluate ({len(sweep.sample)} cells, {len(decision.todo(sweep.sample))} to run):")
    for task in sweep.sample:
        source = f"network of {task.train.name}" if task.train is not None else f"anchor ({task.kind})"
        shares = isinstance(task, SampleTask) and task.shares()
        where = f"the samples of {task.same_as.parent.name}, drawn once ({task.because})" if shares \
            else f"samples in {task.folder}"
        print(f"  {task.name}: {source}, {where} [{state(task)}]")
    print("aggregate: " + ", ".join(planned_files(sweep)))
    redrawn = frozenset(task.name for task in decision.reset if task.stage == "sample")
    work = sweep_cost(sweep.root, decision.todo(sweep.train), decision.todo(sweep.sample), redrawn)
    for line in describe_cost(work, sweep.spec.config, logged_rate(sweep.train)):
        print(line)


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
    check_numbers(args)
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
    options = slurm_options(args)  # a bad --profile is one line before the plan is built
    decision = reconcile(root, build_spec(args), extend=bool(args.extend))  # a refusal: the same for --dry-run
    sweep = plan(decision.spec, root)
    audits = audit_plan(sweep)  # refuses an arm whose chain would not settle, before anything is written
    if options.python is not None:
        if args.cluster == "debug":
            raise ConfigError("--python: --cluster debug runs every task in the launcher's own process; use "
                              "--cluster local or slurm, or run the launcher itself with that Python")
        print(f"tasks start with: {check_python(options.python)}", flush=True)
    if args.cluster != "slurm":
        if args.dry_run:
            print_plan(sweep, audits, decision)
            return 0
        with FolderLock(root, "sweep", what=f"launch/sweep.py --cluster {args.cluster}",
                        fields={"cluster": args.cluster},
                        fix="wait for that sweep, or stop it with: " + f"{script} --cancel --out {root}"):
            prepare_folder(decision, audits)
            return run_here(root, sweep, args.cluster, parallel=args.local_parallel,
                            timeout_min=args.timeout_min, max_requeues=options.max_requeues, python=options.python)
    return _on_slurm(root, decision, sweep, options, audits, dry_run=args.dry_run, wait=args.wait,
                     poll_s=args.poll_s, patience_s=args.scheduler_patience_s, script=script,
                     profile=args.profile)


def _print_arrays(root: Path, sweep: Plan, options: SlurmOptions, limits: Limits, decision: Decision) -> None:
    """--dry-run: each stage's arrays within Slurm's limits and the sbatch script of its first."""
    stages = [(stage, decision.todo(tasks)) for stage, tasks in sweep.stages()]
    for k, (stage, arrays, parallelism) in enumerate(array_plan(stages, limits, options.array_parallelism)):
        params = slurm.slurm_parameters(options, stage, root.name) | {"array_parallelism": parallelism}
        if k:
            params["dependency"] = "afterany:<previous>"  # every array of the stage before
        split = (f"{sum(map(len, arrays))} tasks in {len(arrays)} arrays of at most {limits.max_array_size} "
                 f"(MaxArraySize, from {limits.source}), the first" if len(arrays) > 1 else "array")
        print(f"--- {stage} stage: {split} of {len(arrays[0])} ---\n"
              f"{slurm.sbatch_text(root, params, len(arrays[0]), options.python)}")


def _on_slurm(root: Path, decision: Decision, sweep: Plan, options: SlurmOptions, audits: dict, *, dry_run: bool,
              wait: bool, poll_s: float, patience_s: float, script: str, profile: Path | None = None) -> int:
    """--cluster slurm: print the plan and the sbatch scripts (dry run), or submit (or attach) and maybe wait."""
    limits = read_limits(options.max_array_size, options.max_submit_jobs)  # once per launch
    if dry_run:
        print_plan(sweep, audits, decision)
        _print_arrays(root, sweep, options, limits, decision)
        return 0
    slurm.check_submission(root, sweep, options, limits)  # before anything is written
    cancel_hint = f"{script} --cancel --out {root}"
    with FolderLock(root, "sweep", what="launch/sweep.py --cluster slurm (submitting)", fields={"cluster": "slurm"},
                    fix="retry in a moment"):
        queue = slurm.observed_queue(root, sweep, patience_s)
        if queue is None:  # never submitted from here: the user's other jobs still count against Slurm's limits
            queue = scheduler.patient_queue(patience_s)
        live = slurm.live_jobs(root, sweep, queue)
        if live and decision.kind != "same":
            raise SweepMismatch(f"{root}: {len(live)} job(s) of its earlier submission are still queued or running, "
                                f"and this command would {decision.kind.replace('+', ' and ')} the sweep; wait for them "
                                f"(status: {script} --status --out {root}) or cancel them ({cancel_hint}), then rerun")
        if live:
            print(f"{len(live)} job(s) of an earlier submission are still queued or running; attaching to them "
                  f"instead of submitting again (status: {script} --status --out {root})", flush=True)
        else:
            prepare_folder(decision, audits)
            record_options(root, options, profile)
            submitted = slurm.submit(root, sweep, options, limits, queued=len(queue or {}))
            if not submitted:
                print("every task is done; nothing to submit")
    if not wait:
        print(f"watch: {script} --status --out {root}   (or squeue --me)\ncancel: {cancel_hint}\n"
              "rerun the same command to resume what failed, was cancelled or was lost")
        return 0
    return _report(root, slurm.wait(root, sweep, poll_s, cancel_hint, patience_s))


def _report(root: Path, rows: list[dict]) -> int:
    """--wait's end (hpc_ncsn.sweep.status.final_report), with the job ids of each stage."""
    latest, _ = slurm.submitted_tasks(root)
    return final_report(root, rows, {"jobs": {stage: sorted({j.split("_")[0] for j in ids.values()})
                                              for stage, ids in latest.items()}})
