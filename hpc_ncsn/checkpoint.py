"""The checkpoint format, all of it: names, scratch folders, ema.pt, meta.json, what resume reads.

A checkpoint is a folder `step-XXXXXXXX` under `<run>/checkpoints/`, holding
Accelerate's state (model, optimizer, scaler, every process's RNG; written by
train/, which owns Accelerate), `ema.pt` (the EMA weights as whole float32 tensors,
with the resolved config and the step: `write_ema`) and `meta.json` (the training
counters a resume restores, `TrainState`, plus how the run was launched: written
last by `write_meta`, the completion mark). It is written under a temporary
name (`.tmp-step-XXXXXXXX`) and published with `hpc_ncsn.files.publish_dir`: a
folder with the final name is always complete, and an interrupted save leaves only
a temporary folder, which the next save removes. Old checkpoints are deleted only
after the new one has its final name.

`load_ema_model` turns any checkpoint (DeepSpeed's included) into a plain model for
sampling; it needs neither Accelerate nor DeepSpeed.

A complete checkpoint may still be damaged (a torn meta.json or ema.pt: a dying node, a careless copy).
`read_checkpoint` reads its files whole and names the one that does not read (`Torn`); a resume
(hpc_ncsn.train.run_folder) and `resolve_checkpoint` of a run folder skip such a one for the newest intact
one, with one warning line (`skipped_warning`), and say `DamagedCheckpoints` when none is intact.

A snapshot (`train.eval_every`) is a folder `step-XXXXXXXX` under `<run>/snapshots/`
holding only `ema.pt` (written atomically: it is its own completion mark). Snapshots
are never rotated; generation reads one like a checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .config import Config, config_from_dict, config_to_dict
from .errors import UserError
from .files import atomic_path, publish_dir

__all__ = ["CHECKPOINTS", "CHECKPOINT_PATTERN", "COMPLETE_MARK", "EMA_FILE", "SNAPSHOTS", "DamagedCheckpoints",
           "NoCheckpoint", "Torn", "TrainState", "checkpoint_name", "checkpoints_dir", "complete_checkpoints",
           "every_one_damaged", "latest_checkpoint", "load_ema_model", "load_newest_ema_model", "publish",
           "read_checkpoint", "read_config", "read_ema_state", "read_meta", "reading", "resolve_checkpoint",
           "rotate", "save_snapshot", "scratch_dir", "scratch_path", "size_on_disk", "skipped_warning", "snapshots",
           "write_ema", "write_meta"]

CHECKPOINTS = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8,})$")
COMPLETE_MARK = "meta.json"
EMA_FILE = "ema.pt"
SNAPSHOTS = "snapshots"


@dataclass
class TrainState:
    """The training counters a checkpoint's meta.json carries and a resume restores."""

    step: int = 0
    skipped: int = 0
    consecutive_skips: int = 0
    levels: dict | None = None  # the per-level loss sums since the last log line, when the checkpoint was saved


class NoCheckpoint(UserError, FileNotFoundError):
    """A run folder holds no complete checkpoint (yet)."""


class DamagedCheckpoints(UserError, OSError):
    """No intact checkpoint where one was asked for (every one of a run folder, or the folder named); the message
    names each and why."""


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def checkpoints_dir(run: Path) -> Path:
    """Where a run folder keeps its checkpoints."""
    return Path(run) / CHECKPOINTS


def scratch_path(root: Path, step: int) -> Path:
    """The temporary name the checkpoint of `step` is written under (`scratch_dir` makes it)."""
    return Path(root) / f".tmp-{checkpoint_name(step)}"


def scratch_dir(root: Path, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of `step` (stale temporaries are removed)."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale)
    scratch = scratch_path(root, step)
    scratch.mkdir()
    return scratch


def size_on_disk(folder: Path) -> int:
    """Bytes of the files under a checkpoint folder (what the next save needs free)."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def write_ema(folder: Path, config: Config, step: int, ema) -> Path:
    """ema.pt in `folder`, written atomically: the step, the resolved config and the EMA's state (its weights as
    whole float32 tensors). The same record in a checkpoint as in a snapshot; `load_ema_model` reads it."""
    import torch

    with atomic_path(Path(folder) / EMA_FILE) as tmp:
        torch.save({"step": step, "config": config_to_dict(config), "ema": ema.state_dict()}, tmp)
    return Path(folder) / EMA_FILE


def _read_ema(path: Path) -> dict:
    import torch

    path = Path(path)
    return torch.load(path / EMA_FILE if path.is_dir() else path, map_location="cpu", weights_only=True)


def read_ema_state(checkpoint: Path) -> dict:
    """The EMA state a checkpoint folder's ema.pt holds (EMA.load_state_dict takes it)."""
    return _read_ema(checkpoint)["ema"]


def read_config(checkpoint: Path) -> Config:
    """The resolved config a checkpoint folder's ema.pt (or the ema.pt given) was trained with."""
    path = Path(checkpoint) / EMA_FILE if Path(checkpoint).is_dir() else Path(checkpoint)
    return config_from_dict(_read_ema(path)["config"], source=str(path))


def write_meta(folder: Path, state: TrainState, world_size: int, mixed_precision: str) -> None:
    """meta.json, the completion mark: write it last, after every other file of the checkpoint."""
    meta = {"step": state.step, "skipped": state.skipped, "consecutive_skips": state.consecutive_skips,
            "world_size": world_size, "mixed_precision": mixed_precision, "time": time.time(),
            "levels": state.levels}
    (Path(folder) / COMPLETE_MARK).write_text(json.dumps(meta))


def read_meta(checkpoint: Path) -> TrainState:
    """The training counters a complete checkpoint folder's meta.json records (what a resume restores)."""
    meta = json.loads((Path(checkpoint) / COMPLETE_MARK).read_text())
    return TrainState(step=meta["step"], skipped=meta["skipped"], consecutive_skips=meta["consecutive_skips"],
                      levels=meta.get("levels"))


class Torn(Exception):
    """A file of a checkpoint that does not read; str() is `<file>: <error type>: <the error's first line>`."""


@contextmanager
def reading(part: str) -> Iterator[None]:
    """Whatever reading `part` of a checkpoint raises (json, torch, safetensors, pickle, a missing file) as Torn
    naming it."""
    try:
        yield
    except Exception as error:
        raise Torn(f"{part}: {type(error).__name__}: {(str(error).strip() or '?').splitlines()[0][:100]}") from error


def read_checkpoint(checkpoint: Path, counters: bool = False) -> tuple[TrainState | None, dict]:
    """(meta.json's counters, ema.pt's record) of a checkpoint folder, each file read whole; Torn naming the first
    that does not read. Without `counters`, a folder without meta.json (a snapshot) gives None for them."""
    checkpoint = Path(checkpoint)
    state = None
    if counters or (checkpoint / COMPLETE_MARK).exists():
        with reading(COMPLETE_MARK):
            state = read_meta(checkpoint)
    with reading(EMA_FILE):
        payload = _read_ema(checkpoint)
        missing = sorted({"step", "config", "ema"} - set(payload))
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
    return state, payload


def skipped_warning(damaged: list[str], used: Path, doing: str) -> str:
    """The one line that says which damaged checkpoints were skipped for the older `used` one."""
    return f"warning: skipped damaged checkpoint(s) {'; '.join(damaged)}; {doing} the older {Path(used).name}"


def every_one_damaged(root: Path, damaged: list[str], fix: str) -> DamagedCheckpoints:
    return DamagedCheckpoints(f"every checkpoint in {root} is damaged: {'; '.join(damaged)}; {fix}")


def save_snapshot(run: Path, config: Config, step: int, ema) -> Path:
    """The EMA weights of `step` in <run>/snapshots/step-*/ema.pt, the same record as a checkpoint's ema.pt."""
    folder = Path(run) / SNAPSHOTS / checkpoint_name(step)
    folder.mkdir(parents=True, exist_ok=True)
    write_ema(folder, config, step, ema)
    return folder


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


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoint folders under `root`, newest first (what a resume tries, in order)."""
    return [path for _, path in reversed(_complete_checkpoints(root))]


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


def resolve_checkpoint(run_or_checkpoint: Path, quiet: bool = False) -> Path:
    """A checkpoint folder whose meta.json and ema.pt read: the given one (or DamagedCheckpoints naming what does
    not), or the newest such one of a run folder; damaged newer ones are skipped with one warning line on stderr
    (unless `quiet`: the processes other than the first of a multi-process command)."""
    return _intact(Path(run_or_checkpoint), quiet)[0]


def _intact(path: Path, quiet: bool) -> tuple[Path, dict]:
    """(checkpoint folder, its ema.pt record) as resolve_checkpoint chooses it: each candidate's files read once."""
    if (path / EMA_FILE).is_file():
        try:
            return path, read_checkpoint(path)[1]
        except Torn as torn:
            raise DamagedCheckpoints(f"checkpoint {path} is damaged ({torn}); pass an intact checkpoint folder, or "
                                     "its run folder to use the newest intact one") from None
    candidates, damaged = complete_checkpoints(checkpoints_dir(path)), []
    if not candidates:
        raise NoCheckpoint(f"{path} holds no complete checkpoint (no checkpoints/step-*/{EMA_FILE}); "
                                "train first, or pass a checkpoint folder")
    for candidate in candidates:
        try:
            payload = read_checkpoint(candidate)[1]
        except Torn as torn:
            damaged.append(f"{candidate.name} ({torn})")
            continue
        if damaged and not quiet:
            print(skipped_warning(damaged, candidate, "using"), file=sys.stderr, flush=True)
        return candidate, payload
    raise every_one_damaged(checkpoints_dir(path), damaged, "restore one from a copy, or train the run again")


def load_ema_model(checkpoint: Path, device="cpu"):
    """(model, config, step): the EMA weights of a checkpoint folder (or its ema.pt) as a plain fp32 model.

    Works for any run, DeepSpeed included: ema.pt holds whole float32 tensors.
    """
    path = Path(checkpoint)
    path = path / EMA_FILE if path.is_dir() else path
    return _ema_model(_read_ema(path), str(path), device)


def load_newest_ema_model(run_or_checkpoint: Path, device="cpu", quiet: bool = False):
    """(model, config, step, checkpoint): resolve_checkpoint then load_ema_model, its ema.pt read once."""
    checkpoint, payload = _intact(Path(run_or_checkpoint), quiet)
    return (*_ema_model(payload, str(checkpoint / EMA_FILE), device), checkpoint)


def _ema_model(payload: dict, source: str, device):
    from .ema import EMA
    from .model import build_score_model

    config = config_from_dict(payload["config"], source=source)
    model = build_score_model(config.model, config.data)
    ema = EMA(model, rate=payload["ema"]["rate"])
    ema.load_state_dict(payload["ema"])
    ema.copy_to(model)
    return model.to(device).eval(), config, payload["step"]
