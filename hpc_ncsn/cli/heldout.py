"""`heldout`: the held-out DSM loss of a run's EMA weights, a checkpoint's or a snapshot's."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["HELDOUT_EPILOG", "add_heldout_args", "cmd_heldout"]

HELDOUT_EPILOG = ("examples: hpc-ncsn heldout --run-dir runs/debug\n"
                  "          hpc-ncsn heldout --run-dir runs/debug/snapshots/step-00000500 --sigma-max 50 "
                  "--sigma-min 0.01")


def add_heldout_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, required=True,
                        help="a run folder (its newest checkpoint), a checkpoint folder or a snapshot folder "
                             "(snapshots/step-*/); heldout_dsm.json is written there")
    parser.add_argument("--sigma-max", type=float, default=None,
                        help="top σ of the 20-point grid (default: the run's train.heldout_sigma_max; 0: the "
                             "network's noise.sigma_max); give a sweep's networks one grid")
    parser.add_argument("--sigma-min", type=float, default=None,
                        help="bottom σ of the grid (default: the run's train.heldout_sigma_min; 0: the network's "
                             "noise.sigma_min)")
    parser.add_argument("--examples", type=int, default=None,
                        help="held-out examples (default: the run's train.heldout_examples)")
    parser.add_argument("--batch-size", type=int, default=256, help="examples per network call")


def cmd_heldout(args: argparse.Namespace) -> int:
    from ..heldout import read_heldout_dsm
    from ..train.heldout import score_checkpoint

    path = score_checkpoint(args.run_dir, sigma_max=args.sigma_max, sigma_min=args.sigma_min,
                            examples=args.examples, batch_size=args.batch_size)
    record = read_heldout_dsm(path)
    print(json.dumps({key: record[key] for key in ("step", "mean", "mean_se", "num_examples", "precision")}))
    print(f"written: {path}")
    return 0
