"""Train a noise-conditional score network with denoising score matching.

    python train.py --config configs/debug.yaml                       # one process
    accelerate launch --num_processes 4 train.py --config configs/cifar10.yaml train.mixed_precision=bf16
    python train.py --config configs/debug.yaml --dry-run              # print the resolved config

A run folder (train.out_dir) that already holds checkpoints is resumed from the
newest complete one: rerunning the same command continues an interrupted run.
On SIGUSR2 or SIGTERM (a scheduler's warning) the run saves a checkpoint at the
next step and exits with status 75 (EX_TEMPFAIL): requeue it (slurm/train.sbatch does).
"""

import argparse
import sys
from pathlib import Path

from hpc_ncsn.config import ConfigError, config_to_yaml, load_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=None, help="YAML config, e.g. configs/debug.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.steps=500 train.lr=2e-4")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(config_to_yaml(config), end="")
        return 0
    from hpc_ncsn.preemption import EXIT_CODE, Preempted
    from hpc_ncsn.training import train

    try:
        out = train(config)
    except Preempted as stop:
        print(f"preempted: {stop}", file=sys.stderr)
        return EXIT_CODE
    print(f"run folder: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
