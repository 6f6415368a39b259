"""Checkpoint folders: written atomically, rotated safely, found on restart, read for sampling.

A checkpoint is a folder `step-XXXXXXXX` under `<run>/checkpoints/`, holding
Accelerate's state (model, optimizer, scaler, every process's RNG), `ema.pt` (the
EMA weights as whole float32 tensors, with the resolved config and the step) and
`meta.json` (written last: the completion mark). It is written under a temporary
name (`.tmp-step-XXXXXXXX`) and published with `hpc_ncsn.files.publish_dir`: a
folder with the final name is always complete, and an interrupted save leaves only
a temporary folder, which the next save removes. Old checkpoints are deleted only
after the new one has its final name.

`load_ema_model` turns any checkpoint (DeepSpeed's included) into a plain model for
sampling; it needs neither Accelerate nor DeepSpeed.

A snapshot (`train.eval_every`) is a folder `step-XXXXXXXX` under `<run>/snapshots/`
holding only `ema.pt` (written atomically: it is its own completion mark). Snapshots
are never rotated; generation reads one like a checkpoint.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .errors import UserError
from .files import publish_dir

__all__ = ["CHECKPOINT_PATTERN", "COMPLETE_MARK", "EMA_FILE", "SNAPSHOTS", "NoCheckpoint", "checkpoint_name",
           "latest_checkpoint", "load_ema_model", "publish", "resolve_checkpoint", "rotate", "scratch_dir", "snapshots"]

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8,})$")
COMPLETE_MARK = "meta.json"
EMA_FILE = "ema.pt"
SNAPSHOTS = "snapshots"


class NoCheckpoint(UserError, FileNotFoundError):
    """A run folder holds no complete checkpoint (yet)."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def scratch_dir(root: Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of `step` (stale temporaries are removed)."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale)
    scratch = root / f".tmp-{checkpoint_name(step)}"
    scratch.mkdir()
    return scratch


def publish(scratch: Path, step: int) -> Path:
    """Give a fully written temporary checkpoint its final name, atomically."""
    if not (scratch / COMPLETE_MARK).is_file():
        raise AssertionError(f"checkpoint {scratch} has no {COMPLETE_MARK}; write it last, before publishing")
    return publish_dir(scratch, scratch.parent / checkpoint_name(step))


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / COMPLETE_MARK).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def snapshots(run: Path) -> list[tuple[int, Path]]:
    """(step, folder) of a run's complete EMA snapshots, oldest first."""
    root = Path(run) / SNAPSHOTS
    if not root.is_dir():
        return []
    return sorted((int(match.group(1)), path) for path in root.iterdir()
                  if (match := CHECKPOINT_PATTERN.match(path.name)) and (path / EMA_FILE).is_file())


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint folder under `root`, or None."""
    found = _complete_checkpoints(root)
    return found[-1][1] if found else None


def rotate(root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints; returns what was deleted."""
    found = _complete_checkpoints(root)
    doomed = [path for _, path in found[: max(len(found) - keep, 0)]]
    for path in doomed:
        shutil.rmtree(path)
    return doomed


def resolve_checkpoint(run_or_checkpoint: Path) -> Path:
    """A checkpoint folder: the given one, or the newest complete one of a run folder."""
    path = Path(run_or_checkpoint)
    if (path / EMA_FILE).is_file():
        return path
    latest = latest_checkpoint(path / "checkpoints")
    if latest is None:
        raise NoCheckpoint(f"{path} holds no complete checkpoint (no checkpoints/step-*/{EMA_FILE}); "
                                "train first, or pass a checkpoint folder")
    return latest


def load_ema_model(checkpoint: Path, device="cpu"):
    """(model, config, step): the EMA weights of a checkpoint folder (or its ema.pt) as a plain fp32 model.

    Works for any run, DeepSpeed included: ema.pt holds whole float32 tensors.
    """
    import torch

    from .config import config_from_dict
    from .ema import EMA
    from .model import build_score_model

    path = Path(checkpoint)
    path = path / EMA_FILE if path.is_dir() else path
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = config_from_dict(payload["config"], source=str(path))
    model = build_score_model(config.model, config.data)
    ema = EMA(model, rate=payload["ema"]["rate"])
    ema.load_state_dict(payload["ema"])
    ema.copy_to(model)
    return model.to(device).eval(), config, payload["step"]
