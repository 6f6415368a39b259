"""Publishing files and folders atomically: the one place that knows how.

Every file a reader may see (checkpoints, shards, manifests, status files, tables,
plots, run configs, cached statistics) is written under a hidden temporary name in
its final folder, flushed and fsynced, then renamed over the final name, and the
folder is fsynced so the rename survives a node crash. A final name therefore always
holds a complete file; a killed writer leaves at most a `.NAME.tmp-PID` file. Where
a file has one writer at a time (a shard: the generation holds the folder's lock),
that writer removes such leftovers (`remove_stale=True`); where several processes
may write the same file at once (a cache), each only ever touches its own temporary.

A write that fails because the disk is full raises `DiskFull` (one line naming the
file and the space), whatever the writer's own error looked like (torch's "unexpected
pos", HDF5's cache errors); `require_free_space` refuses a large write up front.
`make_folder` creates an output folder or says in one line why it cannot;
`require_writable` says so before the work whose result cannot be written.

Standard library only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from .errors import UserError

__all__ = ["DiskFull", "FolderError", "atomic_path", "atomic_write", "cache_dir", "disk_full", "file_sha256", "fsync_dir",
           "fsync_tree", "make_folder", "publish_dir", "read_jsonl", "require_free_space", "require_writable",
           "temporary_name"]

NEARLY_FULL = 1 << 20  # under 1 MiB free after a failed write: the disk was full, whatever the writer said


class DiskFull(UserError, OSError):
    """Not enough space to write a file; nothing was published (final names keep their old content)."""


class FolderError(UserError, OSError):
    """An output folder cannot be made or used; the message says why."""


def _mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MB"


def disk_full(error: BaseException, folder: Path) -> bool:
    """Whether a failed write failed for want of space (ENOSPC/EDQUOT, or the disk is (nearly) full now)."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL
    except OSError:
        return False


def require_free_space(folder: Path, needed: int, what: str, fix: str) -> None:
    """DiskFull before writing `what` (about `needed` bytes) into `folder` if the filesystem has less free."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFull(f"not enough space in {folder} for {what}: about {_mb(needed)} needed, {_mb(free)} free; "
                       f"{fix}")


def make_folder(path: Path, what: str) -> Path:
    """Create `path` (and its parents) or raise FolderError saying why not (a file there, a link loop, ...)."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise FolderError(f"{what} {path} is a symbolic link that leads nowhere (a loop, or its target is gone); "
                          "point it at a folder or pass another path")
    if path.exists() and not path.is_dir():
        raise FolderError(f"{what} {path} is a file, not a folder; pass another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FolderError(f"cannot create {what} {path} ({error.strerror or error}); pass another path") from None
    return path


def require_writable(path: Path, what: str, fix: str) -> Path:
    """FolderError unless a file `path` can be written (its folder made, a temporary file created and removed
    there): checked before the work whose result it is, not after. Returns `path`."""
    path = Path(path)
    folder = make_folder(path.parent, f"the folder of {what}")
    probe = temporary_name(path)
    try:
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise FolderError(f"cannot write {what} {path}: {folder} is not writable ({error.strerror or error}); "
                          f"{fix}") from None
    return path


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
    except Exception as error:
        tmp.unlink(missing_ok=True)
        if disk_full(error, path.parent):
            free = shutil.disk_usage(path.parent).free
            raise DiskFull(f"the disk is full: {path} was not written ({_mb(free)} free in {path.parent}); free "
                           "some space and rerun (finished files are intact)") from error
        raise
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


def read_jsonl(path: Path) -> list[dict]:
    """The complete lines of an append-only JSON-lines log; a torn line (a kill or a full disk in mid-write) is
    left out. An absent file reads as empty."""
    import json

    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def cache_dir() -> Path:
    """hpc_ncsn's shared cache ($HPC_NCSN_CACHE, else ~/.cache/hpc_ncsn): fetched data sets and weights, converted
    Inception weights, the digits classifier, reference statistics. On a cluster, point it at a shared file system."""
    return Path(os.environ.get("HPC_NCSN_CACHE", Path.home() / ".cache" / "hpc_ncsn"))


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
