"""`stats` and `compare`: Inception statistics as the .npz pytorch-fid and EDM exchange, and any two inputs scored.

An input is a sample folder, a folder of images, a statistics .npz (`mu`, `sigma`) or `data:train` /
`data:test` (the config's data set); hpc_ncsn.evaluate.compare does the work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import load_config
from ..distributed import setup_process
from .samples import add_extractor_args, evaluate_settings

__all__ = ["COMPARE_EPILOG", "STATS_EPILOG", "add_compare_args", "add_stats_args", "cmd_compare", "cmd_stats"]

STATS_EPILOG = ("examples: hpc-ncsn stats data:train --config configs/fashion.yaml --out fashion-train.npz\n"
                "          hpc-ncsn stats runs/debug/samples --out runs/debug/stats.npz\n"
                "          python -m pytorch_fid runs/png fashion-train.npz     # the file other tools read")
COMPARE_EPILOG = ("examples: hpc-ncsn compare runs/a/samples runs/b/samples\n"
                  "          hpc-ncsn compare runs/debug/png cifar10-32x32.npz --config configs/cifar10.yaml\n"
                  "          hpc-ncsn compare a.npz b.npz                       # FID of two statistics files")


def _config(inputs: list, config: Path | None):
    """--config; else the run config of the first sample folder among the inputs; else the built-in defaults."""
    from ..evaluate.compare import read_input
    from ..evaluate.evaluator import config_for

    if config is not None:
        return load_config(config)
    for item in map(read_input, inputs):
        if item.kind == "samples":
            return config_for(item.path)
    return load_config(None)


def cmd_stats(args: argparse.Namespace) -> int:
    config = _config([args.source] if args.source else [], args.config)
    settings = evaluate_settings(config, args)
    source = args.source or f"data:{settings.reference}"
    if args.dry_run:
        from ..evaluate.compare import read_input

        print(json.dumps({"source": source, "kind": read_input(source).kind, "out": str(args.out),
                          "extractor": settings.extractor or None, "weights": settings.weights or None}, indent=2))
        return 0
    setup_process()
    from ..evaluate.compare import write_statistics

    record = write_statistics(source, args.out, config.data, settings, args.cache)
    if record is not None:
        print(json.dumps(record))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    config = _config([args.a, args.b], args.config)
    settings = evaluate_settings(config, args)
    if args.dry_run:
        from ..evaluate.compare import read_input

        print(json.dumps({"a": vars(read_input(args.a)), "b": vars(read_input(args.b)),
                          "out": str(args.out) if args.out else None}, indent=2))
        return 0
    setup_process()
    from ..evaluate.compare import compare

    report = compare(args.a, args.b, config.data, settings, out=args.out, cache_dir=args.cache)
    if report is not None:
        print(json.dumps(report, indent=2))
        if report.get("warning"):
            print(f"warning: {report['warning']}", file=sys.stderr)
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="config whose data set (data:SPLIT, image sizes) and evaluate.* section apply (default: "
                             "the run config of a sample folder given, else the built-in defaults)")
    add_extractor_args(parser)
    parser.add_argument("--dry-run", action="store_true", help="print what would be read and written and exit")


def add_stats_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", default=None,
                        help="a sample folder, a folder of images, or data:train / data:test (default: "
                             "data:<evaluate.reference>)")
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write (mu (D,), sigma (D, D), float64)")
    _common(parser)


def add_compare_args(parser: argparse.ArgumentParser) -> None:
    for name, role in (("a", "the samples"), ("b", "the reference")):
        parser.add_argument(name, help=f"{role}: a sample folder, a folder of images, a statistics .npz or "
                                       "data:train / data:test")
    parser.add_argument("--out", type=Path, default=None, help="also write the report JSON here")
    _common(parser)
