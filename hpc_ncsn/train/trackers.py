"""Experiment trackers (`train.log_with`: TensorBoard, W&B, MLflow, ... through Accelerate): which ones, checked
up front; started with the run config; fed what metrics.jsonl gets and the sample grids; closed once.

metrics.jsonl in the run folder stays the record; trackers are a view of it.
"""

from __future__ import annotations

from ..config import Config, ConfigError, config_to_dict

__all__ = ["TRACKER_PROJECT", "finish_trackers", "log_image", "start_trackers", "tracker_names", "tracker_record"]

TRACKER_PROJECT = "hpc_ncsn"  # the trackers' project; TensorBoard writes to <run>/trackers/hpc_ncsn
TRACKING_EXTRA = {"tensorboard": "pip install 'hpc_ncsn[tracking]'"}


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


def start_trackers(accelerator, config: Config, run_name: str, step: int) -> None:
    """Start `train.log_with`'s trackers with the run config as hyperparameters. A resumed run's TensorBoard
    writer hides the events after its checkpoint (they are logged again), as metrics.jsonl drops its lines."""
    hyperparameters = {f"{section}.{key}": value if isinstance(value, (bool, int, float, str)) else str(value)
                       for section, values in config_to_dict(config).items() for key, value in values.items()}
    hyperparameters["train.mixed_precision"] = accelerator.mixed_precision  # the precision in effect
    accelerator.init_trackers(TRACKER_PROJECT, config=hyperparameters, init_kwargs={
        "tensorboard": {"purge_step": step + 1} if step else {},
        "wandb": {"name": run_name}, "mlflow": {"run_name": run_name}})


def tracker_record(record: dict) -> dict[str, float]:
    """A metrics.jsonl record as trackers' scalars: the per-level losses as loss_per_level/00, 01, ...;
    text and missing values left out."""
    scalars = {key: float(value) for key, value in record.items()
               if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}
    scalars.update({f"loss_per_level/{level:02d}": float(value)
                    for level, value in enumerate(record.get("loss_per_level") or []) if value is not None})
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
