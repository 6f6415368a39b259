"""Publishing files and folders atomically: the one place that knows how.

Every file a reader may see (checkpoints, shards, manifests, status files, tables,
plots, run configs, cached statistics) is written under a hidden temporary name in
its final folder, flushed and fsynced, then renamed over the final name, and the
folder is fsynced so the rename survives a node crash. A final name therefore always
holds a complete file; a killed writer leaves at most a `.NAME.tmp-PID` file. Where
a file has one writer at a time (a shard: the generation holds the folder's lock),
that writer removes such leftovers (`remove_stale=True`); where several processes
may write the same file at once (a cache), each only ever touches its own temporary.

Standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write", "file_sha256", "fsync_dir", "fsync_tree", "publish_dir", "temporary_name"]


def temporary_name(path: Path) -> Path:
    """Where a writer of `path` puts its bytes before the rename: `.NAME.tmp-PID` beside it."""
    path = Path(path)
    return path.parent / f".{path.name}.tmp-{os.getpid()}"


def _remove_stale(path: Path) -> None:
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _fsync(path: Path, directory: bool = False) -> None:
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so that renames and new names in it are on disk."""
    _fsync(Path(folder), directory=True)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (so that a rename after it survives a node crash)."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")) + [folder]:
        _fsync(path, directory=path.is_dir())


@contextlib.contextmanager
def atomic_path(path: Path, *, remove_stale: bool = False) -> Iterator[Path]:
    """A temporary path to write `path`'s content to; on success it is fsynced and renamed to `path`.

    For writers that want a file name (h5py, torch.save, matplotlib). On an error the
    temporary file is removed and `path` keeps its old content (or stays absent).
    `remove_stale`: first delete other writers' leftover temporaries of `path` (only
    where nobody else may be writing it now).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if remove_stale:
        _remove_stale(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data.encode() if isinstance(data, str) else data)
    return Path(path)


def publish_dir(scratch: Path, final: Path) -> Path:
    """Give a fully written folder its final name: fsync its contents, replace `final`, fsync the parent."""
    scratch, final = Path(scratch), Path(final)
    fsync_tree(scratch)
    if final.exists():
        shutil.rmtree(final)
    os.replace(scratch, final)
    fsync_dir(final.parent)
    return final


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
