"""Checkpoint folders that are written atomically, rotated safely and found on restart.

A checkpoint is a folder `step-XXXXXXXX` under `<run>/checkpoints/`. It is written
under a temporary name (`.tmp-step-XXXXXXXX`), every file is fsynced, and only
then renamed: a folder with the final name is always complete, and an
interrupted save leaves only a temporary folder, which the next save removes.
Old checkpoints are deleted only after the new one has its final name.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

__all__ = ["CHECKPOINT_PATTERN", "checkpoint_name", "fsync_tree", "latest_checkpoint", "publish", "rotate",
           "scratch_dir"]

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8,})$")
COMPLETE_MARK = "meta.json"


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


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (so a rename after it survives a node crash)."""
    for path in sorted(folder.rglob("*")) + [folder]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        descriptor = os.open(path, flags)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def publish(scratch: Path, step: int) -> Path:
    """Give a fully written temporary checkpoint its final name, atomically."""
    if not (scratch / COMPLETE_MARK).is_file():
        raise AssertionError(f"checkpoint {scratch} has no {COMPLETE_MARK}; write it last, before publishing")
    fsync_tree(scratch)
    final = scratch.parent / checkpoint_name(step)
    if final.exists():
        shutil.rmtree(final)
    os.replace(scratch, final)
    descriptor = os.open(scratch.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    return final


def _complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / COMPLETE_MARK).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


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
