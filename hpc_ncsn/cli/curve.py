"""`curve`: FID over training of one run, outside a sweep: every EMA snapshot sampled and scored, the curve written
beside the samples and sent to the run's trackers (hpc_ncsn.evaluate.curve, hpc_ncsn.train.trackers.log_curve)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import load_config
from ..distributed import is_main_process, setup_process
from ..errors import UserError
from .samples import add_extractor_args, evaluate_settings

__all__ = ["CURVE_EPILOG", "add_curve_args", "cmd_curve"]

CURVE_EPILOG = ("examples: hpc-ncsn curve --run-dir runs/debug                 # after train.eval_every=K\n"
                "          hpc-ncsn curve --run-dir runs/debug --num-samples 2000 sampler.step_rule=snr\n"
                "          torchrun --nproc_per_node 4 -m hpc_ncsn curve --run-dir runs/cifar10")


def cmd_curve(args: argparse.Namespace) -> int:
    config_file = args.run_dir / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"--run-dir {args.run_dir}: no config.yaml; give the folder `hpc-ncsn train` wrote "
                        "(train.out_dir)")
    config = load_config(config_file)
    settings = evaluate_settings(config, args)
    num_samples = args.num_samples or config.train.eval_samples
    out = args.out or args.run_dir / "over_training"
    trackers = "" if args.no_trackers else config.train.log_with
    if args.dry_run:
        from ..checkpoint import snapshots

        print(json.dumps({"run": str(args.run_dir), "snapshots": [step for step, _ in snapshots(args.run_dir)],
                          "num_samples": num_samples, "seed": args.seed, "overrides": args.overrides,
                          "out": str(out), "trackers": trackers}, indent=2))
        return 0
    setup_process()
    from ..evaluate.curve import CURVE, score_snapshots

    curve = score_snapshots(args.run_dir, out, config.data, settings, num_samples=num_samples,
                            overrides=tuple(args.overrides), seed=args.seed,
                            progress=lambda line: print(line, file=sys.stderr))
    if is_main_process():
        sent = []
        if trackers:
            from ..train.trackers import log_curve

            sent = log_curve(args.run_dir, config, curve)
        print(json.dumps({"curve": curve, "file": str(out / CURVE), "trackers": sent}, indent=2))
    return 0


def add_curve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", type=Path, required=True,
                        help="a run folder trained with train.eval_every=K (its snapshots/step-*/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where each snapshot's samples and the curve (fid_vs_step.json) go (default: "
                             "RUN/over_training)")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="samples per snapshot (default: the run's train.eval_samples)")
    parser.add_argument("--seed", type=int, default=0, help="sample i's noise depends on (seed, i) only")
    parser.add_argument("--no-trackers", action="store_true",
                        help="do not send the curve to the run's trackers (train.log_with)")
    add_extractor_args(parser)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="sampler.*, noise.* or generate.* settings that differ from the run's")
    parser.add_argument("--dry-run", action="store_true", help="print what would be sampled and scored and exit")
