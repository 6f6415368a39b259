"""`hpc-ncsn` (or `python -m hpc_ncsn`): the project's small commands.

    hpc-ncsn config --config configs/debug.yaml noise.schedule=linear   # resolved config
    hpc-ncsn plan --dim 3072 --sigma-max 50 --sigma-min 0.01 --steps 5 --num-levels 232
    hpc-ncsn plan --config configs/debug.yaml                           # σ_1 from the data
    hpc-ncsn toy --out runs/toy                                         # NCSN's toy, as numbers
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from pathlib import Path

import yaml

from .config import ConfigError, config_to_yaml, load_config
from .preemption import EXIT_CODE, Preempted
from .toy import ToySettings

__all__ = ["main"]


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config file (default: built-in defaults), e.g. configs/debug.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="overrides such as noise.sigma_max=50 data.image_size=16")


def _cmd_config(args: argparse.Namespace) -> int:
    print(config_to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .planning import max_pairwise_distance, plan_noise

    config = None
    if args.dim is None:
        config = load_config(args.config, args.overrides)
        sigma_min = args.sigma_min if args.sigma_min is not None else config.noise.sigma_min
    elif args.config is not None or args.overrides:
        raise SystemExit("plan: give either --dim (with --sigma-max) or a data set through --config, not both")
    elif args.sigma_max is None:
        raise SystemExit("plan --dim needs --sigma-max (or use --config to measure σ_1 on a data set)")
    else:
        sigma_min = args.sigma_min if args.sigma_min is not None else 0.01
    if args.dry_run:
        print(json.dumps({"dim": args.dim, "data": config and asdict(config.data), "sigma_max": args.sigma_max,
                          "sigma_min": sigma_min, "steps": args.steps, "num_levels": args.num_levels}, indent=2))
        return 0
    dim, sigma_max, method = args.dim, args.sigma_max, "given"
    if config is not None:
        points = _dataset_points(config.data)
        dim = int(points[0].numel())
        if sigma_max is None:
            sigma_max, method = max_pairwise_distance(points)
    plan = plan_noise(dim=dim, sigma_max=sigma_max, sigma_min=sigma_min, steps_per_level=args.steps,
                      num_levels=args.num_levels, sigma_max_method=method)
    print(json.dumps(plan.to_dict(), indent=2, ensure_ascii=False))
    return 0


def _dataset_points(data_cfg):
    from .data import load_images, to_model_scale, toy_mixture
    import torch

    if data_cfg.name == "toy2d":
        mixture = toy_mixture(data_cfg.toy_means, data_cfg.toy_weights, data_cfg.toy_std)
        return mixture.sample(data_cfg.toy_size, torch.Generator().manual_seed(0))
    return to_model_scale(load_images(data_cfg))


def _parse_json_list(text: str, what: str) -> list:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"{what}: cannot parse {text!r} ({error})") from None
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"{what}: expected a list such as [[-5,-5],[5,5]], got {text!r}")
    return value


def _cmd_toy(args: argparse.Namespace) -> int:
    from .data import toy_mixture
    from .toy import run_toy, save_toy_figure

    means = _parse_json_list(args.means, "--means")
    weights = _parse_json_list(args.weights, "--weights")
    try:
        mixture = toy_mixture(means, weights, args.std)
    except ValueError as error:
        raise SystemExit(f"toy: bad mixture ({error}); example: --means '[[-5,-5],[5,5]]' --weights '[1,4]'")
    settings = ToySettings(**{f.name: getattr(args, f.name) for f in fields(ToySettings)})
    if args.dry_run:
        print(json.dumps({"means": means, "weights": weights, "std": args.std, "settings": asdict(settings),
                          "out": str(args.out)}, indent=2))
        return 0
    report, samples = run_toy(mixture, settings)
    figure = args.out / "toy_langevin.png"
    save_toy_figure(samples, mixture, report, figure)
    report["figure"] = str(figure)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "toy_langevin.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from .generate import generate, resolve_checkpoint
    from .speed import NetworkSpeed

    speed = NetworkSpeed(args.precision, args.channels_last, args.compile)
    if args.dry_run:
        print(json.dumps({"checkpoint": str(resolve_checkpoint(args.run_dir)), "out": str(args.out),
                          "num_samples": args.num_samples, "shard_size": args.shard_size,
                          "batch_size": args.batch_size, "seed": args.seed, "overrides": args.overrides,
                          "speed": asdict(speed)}, indent=2))
        return 0
    result = generate(args.run_dir, args.out, num_samples=args.num_samples, shard_size=args.shard_size,
                      batch_size=args.batch_size, seed=args.seed, noise_overrides=tuple(args.overrides), speed=speed)
    print(json.dumps({"folder": str(result.folder), "generated": result.generated, "kept": result.kept}))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .metrics import evaluate, extractor_for
    from .shards import read_manifest

    run = Path(read_manifest(args.samples)["meta"]["run"])
    config = load_config(args.config or run / "config.yaml")
    extractor = extractor_for(config.data.name, args.extractor)
    out = args.out or args.samples / "metrics.json"
    if args.dry_run:
        print(json.dumps({"samples": str(args.samples), "data": asdict(config.data), "extractor": extractor,
                          "weights": str(args.weights) if args.weights else None, "out": str(out)}, indent=2))
        return 0
    from .features import cache_dir

    report = evaluate(args.samples, config.data, extractor_name=extractor, weights_path=args.weights,
                      cache_dir=args.cache or cache_dir() / "reference", batch_size=args.batch_size, out=out)
    if report is not None:
        print(json.dumps(report, indent=2))
        if report["warning"]:
            print(f"warning: {report['warning']}", file=sys.stderr)
    return 0


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from .aggregate import aggregate
    from .grid import SweepSpec, plan

    if args.dry_run:
        sweep = plan(SweepSpec.load(args.sweep), args.sweep)
        print(json.dumps({"sweep": str(args.sweep), "cells": [task.name for task in sweep.sample],
                          "writes": ["table.md", "table.csv", "table.json", "fid.png", "loss_per_level.png",
                                     "samples.png"]}, indent=2))
        return 0
    aggregate(args.sweep, plots=not args.no_plots)
    print((args.sweep / "table.md").read_text(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="hpc-ncsn", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", formatter_class=formatter,
                                 help="print the resolved config (YAML)",
                                 epilog="example: hpc-ncsn config --config configs/debug.yaml noise.schedule=linear")
    _add_config_args(config)
    config.set_defaults(handler=_cmd_config)

    plan = commands.add_parser(
        "plan", formatter_class=formatter,
        help="NCSNv2 noise plan (σ_1, γ, L, ε) as JSON",
        epilog="examples: hpc-ncsn plan --dim 3072 --sigma-max 50 --sigma-min 0.01 --steps 5 --num-levels 232\n"
               "          hpc-ncsn plan --config configs/debug.yaml",
    )
    _add_config_args(plan)
    plan.add_argument("--dim", type=int, default=None, help="data dimension D (instead of a data set)")
    plan.add_argument("--sigma-max", type=float, default=None,
                      help="σ_1; default: the largest pairwise distance in the config's data set")
    plan.add_argument("--sigma-min", type=float, default=None, help="σ_L; default: the config's noise.sigma_min")
    plan.add_argument("--steps", type=int, default=5, help="Langevin steps per level T")
    plan.add_argument("--num-levels", type=int, default=None,
                      help="fix L instead of choosing it by technique 2")
    plan.add_argument("--dry-run", action="store_true", help="print the inputs and exit")
    plan.set_defaults(handler=_cmd_plan)

    toy = commands.add_parser(
        "toy", formatter_class=formatter,
        help="NCSN's 2-D mixture toy: mode weights from Langevin vs annealed Langevin",
        epilog="example: hpc-ncsn toy --means '[[-5,-5],[5,5]]' --weights '[0.2,0.8]' --std 1 --out runs/toy",
    )
    toy.add_argument("--means", default="[[-5,-5],[5,5]]", help="mixture means, a list of [x, y]")
    toy.add_argument("--weights", default="[0.2,0.8]", help="mixture weights (normalized)")
    toy.add_argument("--std", type=float, default=1.0, help="component standard deviation")
    for setting in fields(ToySettings):
        toy.add_argument("--" + setting.name.replace("_", "-"), dest=setting.name, type=setting.type,
                         default=setting.default, help=setting.metadata["help"])
    toy.add_argument("--out", type=Path, default=Path("runs/toy"), help="folder for the JSON and the figure")
    toy.add_argument("--dry-run", action="store_true", help="print the settings and exit")
    toy.set_defaults(handler=_cmd_toy)

    gen = commands.add_parser(
        "generate", formatter_class=formatter,
        help="draw samples of a run's EMA model into HDF5 shards (resumable, multi-process)",
        epilog="examples: hpc-ncsn generate --run-dir runs/debug --out runs/debug/samples --num-samples 1000\n"
               "          torchrun --nproc_per_node 4 -m hpc_ncsn generate --run-dir runs/cifar10 "
               "--out runs/cifar10/samples --num-samples 50000",
    )
    gen.add_argument("--run-dir", type=Path, required=True, help="run folder (newest checkpoint) or a checkpoint folder")
    gen.add_argument("--out", type=Path, required=True, help="folder for shard-*.h5 and manifest.json")
    gen.add_argument("--num-samples", type=int, default=50_000, help="samples 0..N-1")
    gen.add_argument("--shard-size", type=int, default=1000, help="samples per shard (the unit of resumption)")
    gen.add_argument("--batch-size", type=int, default=250, help="samples per network evaluation batch")
    gen.add_argument("--seed", type=int, default=0, help="sample i's noise depends on (seed, i) only")
    gen.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                     help="the network's precision (bf16 autocast; the Langevin state stays float32)")
    gen.add_argument("--channels-last", action="store_true", help="run the network in channels_last layout")
    gen.add_argument("--compile", action="store_true",
                     help="torch.compile the network (falls back to eager with a warning if compiling fails)")
    gen.add_argument("overrides", nargs="*", metavar="noise.KEY=VALUE",
                     help="sampler settings different from the run's, e.g. noise.schedule=snr")
    gen.add_argument("--dry-run", action="store_true", help="print what would be generated and exit")
    gen.set_defaults(handler=_cmd_generate)

    ev = commands.add_parser(
        "evaluate", formatter_class=formatter,
        help="FID/KID/IS of sample shards against the training set (multi-process with torchrun)",
        epilog="examples: hpc-ncsn evaluate --samples runs/debug/samples\n"
               "          torchrun --nproc_per_node 4 -m hpc_ncsn evaluate --samples runs/cifar10/samples "
               "--weights weights-inception-2015-12-05.pth",
    )
    ev.add_argument("--samples", type=Path, required=True, help="folder written by `hpc-ncsn generate`")
    ev.add_argument("--config", type=Path, default=None,
                    help="config whose data set is the reference (default: the run's config.yaml)")
    ev.add_argument("--extractor", default=None,
                    help="torch-fidelity feature extractor (default: digits-classifier for digits, "
                         "inception-v3-compat otherwise)")
    ev.add_argument("--weights", type=Path, default=None,
                    help="local extractor weights (offline clusters: torch-fidelity's Inception .pth)")
    ev.add_argument("--cache", type=Path, default=None,
                    help="where reference statistics are cached (default: $HPC_NCSN_CACHE/reference, "
                         "else ~/.cache/hpc_ncsn/reference)")
    ev.add_argument("--batch-size", type=int, default=200, help="images per extractor batch")
    ev.add_argument("--out", type=Path, default=None, help="report JSON (default: SAMPLES/metrics.json)")
    ev.add_argument("--dry-run", action="store_true", help="print what would be evaluated and exit")
    ev.set_defaults(handler=_cmd_evaluate)

    agg = commands.add_parser(
        "aggregate", formatter_class=formatter,
        help="a sweep's metrics → the ablation table (Markdown, CSV, JSON) and plots",
        epilog="example: hpc-ncsn aggregate --sweep runs/sweep-debug",
    )
    agg.add_argument("--sweep", type=Path, required=True, help="sweep folder (holds sweep.json)")
    agg.add_argument("--no-plots", action="store_true", help="write the tables only")
    agg.add_argument("--dry-run", action="store_true", help="list the cells and outputs and exit")
    agg.set_defaults(handler=_cmd_aggregate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"preempted: {stop}", file=sys.stderr)
        return EXIT_CODE
    finally:
        if "torch.distributed" in sys.modules:  # generate/evaluate under torchrun: leave no gloo thread behind
            from .distributed import release

            release()


if __name__ == "__main__":
    raise SystemExit(main())
