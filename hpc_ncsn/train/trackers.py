"""Experiment trackers (`train.log_with`: TensorBoard, W&B, MLflow, ... through Accelerate): which ones, checked
up front; started with the run config; fed what metrics.jsonl gets and the sample grids; closed once.

metrics.jsonl in the run folder stays the record; trackers are a view of it. The per-level losses reach them as
SIGMA_BINS means over consecutive parts of the ladder, not one series per level. A run's W&B identity (its id,
name and group) is written into the run folder the first time, so a requeued or rerun job continues the same W&B
run, offline (WANDB_MODE=offline: files under <run>/trackers/wandb, `wandb sync` later) or online.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from ..config import Config, ConfigError, config_to_dict
from ..distributed import is_main_process
from ..files import atomic_write

__all__ = ["CURVE_PREFIX", "SIGMA_BINS", "TRACKER_PROJECT", "WANDB_IDENTITY", "finish_trackers", "log_curve",
           "log_image", "sigma_bins", "start_trackers", "tracker_names", "tracker_record", "wandb_identity"]

TRACKER_PROJECT = "hpc_ncsn"  # the trackers' project; TensorBoard writes to <run>/trackers/hpc_ncsn
TRACKING_EXTRA = {"tensorboard": "pip install 'hpc_ncsn[tracking]'"}
SIGMA_BINS = 4  # per-level losses as this many series: loss_by_sigma/q0 (the largest σ) … q3 (the smallest)
CURVE_PREFIX = "fid_over_training"  # the curve's series: fid_over_training/fid, /kid_mean, against /step
WANDB_IDENTITY = "wandb.json"  # in <run>/trackers: the run's W&B id, name and group, kept across requeues


def tracker_names(log_with: str) -> list[str]:
    """`train.log_with` as Accelerate tracker names, each checked: known to Accelerate and installed here."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    names = [name.strip() for name in log_with.split(",") if name.strip()]
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ConfigError(f"train.log_with: unknown tracker {name!r}; choose from "
                              f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))} (comma-separated), or '' for none")
        if name not in {str(tracker) for tracker in get_available_trackers()}:
            raise ConfigError(f"train.log_with: {name} is not installed in this environment; "
                              f"{TRACKING_EXTRA.get(name, f'pip install {name}')}, or drop it from train.log_with")
    return names


def wandb_identity(trackers_dir: Path, name: str, group: str) -> dict:
    """The run's W&B id, name and group: read from `trackers_dir`/wandb.json, or chosen now and written there (main
    process), so every later start of this run folder (a requeue, a rerun, a resume) names the same W&B run."""
    path = Path(trackers_dir) / WANDB_IDENTITY
    if path.is_file():
        return json.loads(path.read_text())
    identity = {"id": secrets.token_hex(6), "name": name, "group": group or None}
    atomic_write(path, json.dumps(identity, indent=2) + "\n")
    return identity


def start_trackers(accelerator, config: Config, run_name: str, step: int) -> None:
    """Start `train.log_with`'s trackers with the run config as hyperparameters. A resumed run's TensorBoard
    writer hides the events after its checkpoint (they are logged again), as metrics.jsonl drops its lines; W&B
    continues the run the run folder names (`wandb_identity`, in `train.log_group`), where steps below the last
    one it holds are not taken again."""
    hyperparameters = {f"{section}.{key}": value if isinstance(value, (bool, int, float, str)) else str(value)
                       for section, values in config_to_dict(config).items() for key, value in values.items()}
    hyperparameters["train.mixed_precision"] = accelerator.mixed_precision  # the precision in effect
    init_kwargs = {"tensorboard": {"purge_step": step + 1} if step else {}, "mlflow": {"run_name": run_name}}
    if "wandb" in tracker_names(config.train.log_with) and is_main_process():
        trackers_dir = Path(accelerator.logging_dir)
        identity = wandb_identity(trackers_dir, run_name, config.train.log_group)
        init_kwargs["wandb"] = {**identity, "resume": "allow", "dir": str(trackers_dir), "job_type": "train"}
    accelerator.init_trackers(TRACKER_PROJECT, config=hyperparameters, init_kwargs=init_kwargs)


def sigma_bins(losses: list, bins: int = SIGMA_BINS) -> list[float | None]:
    """Mean loss of each of `bins` runs of consecutive levels (the ladder cut into near-equal parts, largest σ
    first, the first parts one level longer where it does not divide), over the levels that have a value; None
    for a part without one."""
    count = min(bins, len(losses))
    means, start = [], 0
    for part in range(count):
        size = len(losses) // count + (part < len(losses) % count)
        values = [value for value in losses[start:start + size] if value is not None]
        means.append(sum(values) / len(values) if values else None)
        start += size
    return means


def tracker_record(record: dict) -> dict[str, float]:
    """A metrics.jsonl record as trackers' scalars: the per-level losses as SIGMA_BINS part means
    (loss_by_sigma/q0 for the largest σ, …); text and missing values left out."""
    scalars = {key: float(value) for key, value in record.items()
               if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
    scalars.update({f"loss_by_sigma/q{part}": float(value)
                    for part, value in enumerate(sigma_bins(record.get("loss_per_level") or [])) if value is not None})
    return scalars


def log_image(accelerator, grid, step: int) -> None:
    """A sample grid (uint8 tensor, channels × height × width) to the trackers that take images."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":  # NCHW
            tracker.log_images({"samples": grid[None].numpy()}, step=step)
        elif hasattr(tracker, "log_images"):  # wandb and the others: a list of height × width × channels
            tracker.log_images({"samples": [grid.permute(1, 2, 0).numpy()]}, step=step)


def finish_trackers(accelerator) -> None:
    """Close the trackers (their files complete); a second call does nothing."""
    trackers, accelerator.trackers = list(accelerator.trackers), []
    for tracker in trackers:
        tracker.finish()


def log_curve(run: Path, config: Config, curve: list[dict]) -> list[str]:
    """Send FID over training (points {step, fid, kid_mean, n}) to the run's trackers (`train.log_with` of its
    config), after training: TensorBoard's events join the run's, W&B continues the run its folder names (the
    points carry their own x axis, fid_over_training/step, as W&B's steps only grow). The trackers' names."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    names = tracker_names(config.train.log_with)
    if not names:
        return []
    accelerator = Accelerator(cpu=True, log_with=names, project_config=ProjectConfiguration(
        project_dir=str(run), logging_dir=str(Path(run) / "trackers")))
    start_trackers(accelerator, config, Path(run).name, 0)
    for tracker in accelerator.trackers:
        if tracker.name == "wandb":
            tracker.run.define_metric(f"{CURVE_PREFIX}/step")
            tracker.run.define_metric(f"{CURVE_PREFIX}/*", step_metric=f"{CURVE_PREFIX}/step")
    for point in curve:
        values = {f"{CURVE_PREFIX}/{key}": float(point[key]) for key in ("fid", "kid_mean") if point.get(key) is not None}
        for tracker in accelerator.trackers:
            if tracker.name == "wandb":
                tracker.log({**values, f"{CURVE_PREFIX}/step": point["step"]})
            else:
                tracker.log(values, step=point["step"])
    finish_trackers(accelerator)
    return names
