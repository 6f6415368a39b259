"""`plan`, `toy` and `aggregate`: the noise plan, NCSN's 2-D toy, a sweep's table."""

from __future__ import annotations

import argparse
import json
import typing
from dataclasses import asdict, fields
from pathlib import Path

import yaml

from ..config import load_config
from ..errors import UserError
from ..toy import ToySettings
from .common import add_config_args

__all__ = ["add_aggregate_args", "add_plan_args", "add_toy_args", "cmd_aggregate", "cmd_plan", "cmd_toy"]


def cmd_plan(args: argparse.Namespace) -> int:
    config = None
    if args.dim is None:
        config = load_config(args.config, args.overrides)
        sigma_min = args.sigma_min if args.sigma_min is not None else config.noise.sigma_min
    elif args.config is not None or args.overrides:
        raise UserError("plan: give either --dim (with --sigma-max) or a data set through --config, not both")
    elif args.sigma_max is None:
        raise UserError("plan --dim needs --sigma-max (or use --config to measure σ_1 on a data set)")
    else:
        sigma_min = args.sigma_min if args.sigma_min is not None else 0.01
    if args.dry_run:
        print(json.dumps({"dim": args.dim, "data": config and asdict(config.data), "sigma_max": args.sigma_max,
                          "sigma_min": sigma_min, "steps": args.steps, "num_levels": args.num_levels}, indent=2))
        return 0
    from ..data import dataset_points
    from ..planning import max_pairwise_distance, plan_noise

    dim, sigma_max, method = args.dim, args.sigma_max, "given"
    if config is not None:
        points = dataset_points(config)
        dim = int(points[0].numel())
        if sigma_max is None:
            sigma_max, method = max_pairwise_distance(points)
    plan = plan_noise(dim=dim, sigma_max=sigma_max, sigma_min=sigma_min, steps_per_level=args.steps,
                      num_levels=args.num_levels, sigma_max_method=method)
    report = plan.to_dict()
    if config is not None:  # the sampler audit of the config's own arms, as they stand
        from ..audit import audit_config
        from ..config import ARMS, arm_overrides

        report["config_audit"] = {arm: _audit_summary(audit_config(
            load_config(args.config, [*args.overrides, *arm_overrides(arm)]), dim, arm=arm)) for arm in ARMS}
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def _audit_summary(record) -> dict:
    keys = ("step_rule", "steps_per_level", "step_lr", "snr", "end_noise", "r_min", "r_needed", "steps_needed",
            "verdict")
    return {key: record.to_dict()[key] for key in keys}


def _parse_json_list(text: str, what: str) -> list:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UserError(f"toy {what}: cannot parse {text!r} ({error})") from None
    if not isinstance(value, list):
        raise UserError(f"toy {what}: expected a list such as [[-5,-5],[5,5]], got {text!r}")
    return value


def cmd_toy(args: argparse.Namespace) -> int:
    from ..data import toy_mixture
    from ..files import atomic_write
    from ..toy import run_toy, save_toy_figure

    means = _parse_json_list(args.means, "--means")
    weights = _parse_json_list(args.weights, "--weights")
    try:
        mixture = toy_mixture(means, weights, args.std)
    except ValueError as error:
        raise UserError(f"toy: bad mixture ({error}); example: --means '[[-5,-5],[5,5]]' "
                        "--weights '[1,4]'") from None
    settings = ToySettings(**{f.name: getattr(args, f.name) for f in fields(ToySettings)})
    if args.dry_run:
        print(json.dumps({"means": means, "weights": weights, "std": args.std, "settings": asdict(settings),
                          "out": str(args.out)}, indent=2))
        return 0
    from ..progress import showing_progress

    with showing_progress(settings.total_steps, "toy (Langevin, then annealed)", "steps") as bar:
        report, samples = run_toy(mixture, settings, bar.update)
    figure = args.out / "toy_langevin.png"
    save_toy_figure(samples, mixture, report, figure)
    report["figure"] = str(figure)
    atomic_write(args.out / "toy_langevin.json", json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def cmd_aggregate(args: argparse.Namespace) -> int:
    from ..sweep.aggregate import aggregate
    from ..sweep.combine import aggregate_folders, combine
    from ..sweep.plan import REPORT_FILE, Plan
    from ..sweep.plots import planned_files

    folders = [*([args.sweep] if args.sweep else []), *args.folders]
    if not folders:
        raise UserError("aggregate: name a sweep folder (hpc-ncsn aggregate DIR, or --sweep DIR), or several with "
                        "--out DIR for one table of all")
    if len(folders) > 1 and args.out is None:
        raise UserError(f"aggregate: {len(folders)} sweep folders make one table in a folder of its own; add --out DIR")
    out = args.out or folders[0]
    if args.dry_run:
        joined = Plan.joined(out, *combine(folders))
        print(json.dumps({"sweeps": [str(folder) for folder in folders], "out": str(out),
                          "cells": [task.name for task in joined.sample], "writes": planned_files(joined)}, indent=2))
        return 0
    if len(folders) > 1 or out.resolve() != folders[0].resolve():
        aggregate_folders(folders, out, plots=not args.no_plots)
    else:
        aggregate(out, plots=not args.no_plots)
    print((out / "table.md").read_text(), end="")
    print(f"\nreport: {out / REPORT_FILE}")
    return 0


def add_toy_args(toy: argparse.ArgumentParser) -> None:
    toy.add_argument("--means", default="[[-5,-5],[5,5]]", help="mixture means, a list of [x, y]")
    toy.add_argument("--weights", default="[0.2,0.8]", help="mixture weights (normalized)")
    toy.add_argument("--std", type=float, default=1.0, help="component standard deviation")
    types = typing.get_type_hints(ToySettings)
    for setting in fields(ToySettings):
        toy.add_argument("--" + setting.name.replace("_", "-"), dest=setting.name, type=types[setting.name],
                         default=setting.default, help=setting.metadata["help"])
    toy.add_argument("--out", type=Path, default=Path("runs/toy"), help="folder for the JSON and the figure")
    toy.add_argument("--dry-run", action="store_true", help="print the settings and exit")


def add_plan_args(plan: argparse.ArgumentParser) -> None:
    add_config_args(plan)
    plan.add_argument("--dim", type=int, default=None, help="data dimension D (instead of a data set)")
    plan.add_argument("--sigma-max", type=float, default=None,
                      help="σ_1; default: the largest pairwise distance in the config's data set")
    plan.add_argument("--sigma-min", type=float, default=None, help="σ_L; default: the config's noise.sigma_min")
    plan.add_argument("--steps", type=int, default=5, help="Langevin steps per level T")
    plan.add_argument("--num-levels", type=int, default=None, help="fix L instead of choosing it by technique 2")
    plan.add_argument("--dry-run", action="store_true", help="print the inputs and exit")


def add_aggregate_args(agg: argparse.ArgumentParser) -> None:
    agg.add_argument("folders", nargs="*", type=Path, metavar="DIR",
                     help="sweep folders (each holds sweep.json); several make one table, refused where their cells "
                          "differ in more than the grid")
    agg.add_argument("--sweep", type=Path, default=None, help="a sweep folder (the same as one DIR)")
    agg.add_argument("--out", type=Path, default=None,
                     help="where the table goes (default: the one sweep folder; needed with several)")
    agg.add_argument("--no-plots", action="store_true",
                     help="write the tables (and report.html) without plots or sample grids")
    agg.add_argument("--dry-run", action="store_true", help="list the cells and outputs and exit")
