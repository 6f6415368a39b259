"""`train` (= python train.py) and `config`: a run config, resolved, trained or printed."""

from __future__ import annotations

import argparse

from ..config import config_to_yaml, load_config
from ..distributed import setup_process
from .common import add_config_args

__all__ = ["TRAIN_HELP", "add_train_args", "cmd_config", "cmd_train"]

TRAIN_HELP = """Train a noise-conditional score network with denoising score matching.

    python train.py --config configs/debug.yaml                       # one process
    accelerate launch --num_processes 4 --mixed_precision bf16 train.py --config configs/debug.yaml
    python train.py --config configs/debug.yaml --dry-run              # print the resolved config

A run folder (train.out_dir) that already holds checkpoints is resumed from the
newest complete one: rerunning the same command continues an interrupted run.
--resume CHECKPOINT (train.resume_from) continues the training of that checkpoint (or
run folder) in a new train.out_dir; train.init_from=DIR starts a new training from given
weights (an `hpc-ncsn export --safetensors` folder, a checkpoint or a run folder).
On SIGUSR2 (a scheduler's time-limit warning) the run saves a checkpoint at the next
step and exits with status 75 (EX_TEMPFAIL): requeue it (slurm/train.sbatch does).
On SIGTERM (scancel) it saves the same way and exits with 143; nothing requeues it.
"""


def add_train_args(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser, "train.steps=500 train.lr=2e-4")
    parser.add_argument("--resume", type=str, default=None, metavar="CHECKPOINT",
                        help="continue the training of this checkpoint folder (or run folder: its newest) in "
                             "train.out_dir, optimizer and counters included (= train.resume_from=CHECKPOINT); the "
                             "folder's own checkpoints win once it has some")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, [*args.overrides, *([f"train.resume_from={args.resume}"] if args.resume else [])])
    if args.dry_run:
        print(config_to_yaml(config), end="")
        return 0
    setup_process()
    from ..train import train

    print(f"run folder: {train(config)}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    print(config_to_yaml(load_config(args.config, args.overrides)), end="")
    return 0
