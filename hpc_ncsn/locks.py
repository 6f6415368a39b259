"""One writer per folder: lock files that work on shared filesystems (NFS, Lustre) and expire when their holder dies.

A lock is a file `<folder>/.lock-<name>` holding JSON: a token naming this taking of
the lock, the holder's identity (host, boot id, pid and the process's start time from
/proc/<pid>/stat, so that a reused pid is not mistaken for the holder), the folder,
the Slurm job id, what holds it and when it was taken. Its content is written and
fsynced under a private name first, then hard-linked to the lock's name; the link
fails if the name exists (atomic on NFSv3+ and Lustre, unlike flock on some mounts).
A lock file is therefore never empty, and a full disk fails before anything is
visible. The holder touches the file every `REFRESH_S` seconds from a daemon thread.

Staleness rule: a lock is stale, and the next writer breaks it, when its holder is on
this host and is gone (its pid is dead, a zombie, or now another process: a different
start time; or the machine restarted since); when its holder is this same Slurm job
before a requeue; when the file has not been touched for `STALE_AFTER_S` seconds (5
minutes: a holder on another host that died, or a dead node); or when it cannot be
read as a lock and is older than `UNREADABLE_AFTER_S` seconds (torn by an older
version, or by hand). A live holder keeps its lock fresh, so a lock is never taken
from a running process.

Breaking is a claim, then a swap: a breaker first links its own record to
`.lock-<name>.break-<key>` (the key names the stale lock: its token, or its inode);
only the one whose link succeeds may replace the lock, and does so by renaming its
claim over the lock's name after checking that the lock still holds that key. Two
breakers of one stale lock therefore never both hold it, and a breaker killed between
its claim and the swap leaves a claim that is stale in turn and broken the same way.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .files import DiskFull, disk_full

__all__ = ["FolderLock", "Locked", "REFRESH_S", "STALE_AFTER_S", "UNREADABLE_AFTER_S", "identity", "pid_alive",
           "running", "signal_holder"]

REFRESH_S = float(os.environ.get("HPC_NCSN_LOCK_REFRESH_S", 30))
STALE_AFTER_S = float(os.environ.get("HPC_NCSN_LOCK_STALE_S", 300))
UNREADABLE_AFTER_S = 5.0  # a lock file is written before it is visible: one that cannot be read is left over
_MAX_BYTES = 1 << 16  # a lock record is a few hundred bytes; read no more
_HAVE_PROC = Path("/proc/self/stat").is_file()
_TOKEN = re.compile(r"^[0-9a-f]{8,64}$")


class Locked(UserError, RuntimeError):
    """Another live process holds the lock; the message names it and what to do."""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) of process `pid` from /proc/<pid>/stat; None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
    return fields[0], int(fields[19])


def identity(pid: int | None = None) -> dict:
    """Who a process is, even after its pid is reused: host, boot id, pid and start time (None without /proc)."""
    pid = os.getpid() if pid is None else pid
    stat = _proc_stat(pid) if _HAVE_PROC else None
    return {"host": socket.gethostname(), "boot": _boot_id(), "pid": pid, "start": stat[1] if stat else None}


def running(holder: dict) -> bool | None:
    """Whether the process a lock record names runs now: True or False on its own host; None on another host."""
    if holder.get("host") != socket.gethostname():
        return None
    boot = _boot_id()
    if holder.get("boot") and boot and holder["boot"] != boot:
        return False  # this machine restarted since
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if not _HAVE_PROC:
        return pid_alive(pid)
    stat = _proc_stat(pid)
    if stat is None or stat[0] in ("Z", "X"):  # gone, or dead and not yet reaped
        return False
    return holder.get("start") is None or stat[1] == holder["start"]  # a record without a start time: its pid


def signal_holder(holder: dict, signum: int) -> bool:
    """Send `signum` to the process a lock record names if it is that very process (pid and start time, on this
    host); False, and nothing sent, otherwise. The process is pinned (pidfd) before its identity is checked."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or (_HAVE_PROC and holder.get("start") is None):
        return False
    try:
        pinned = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pinned = None
    try:
        if not running(holder):
            return False
        if pinned is not None:
            signal.pidfd_send_signal(pinned, signum)
        else:
            os.kill(pid, signum)
    except ProcessLookupError:
        return False
    finally:
        if pinned is not None:
            os.close(pinned)
    return True


def describe_holder(holder: dict) -> str:
    job = f", job {holder['job_id']}" if holder.get("job_id") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"{holder.get('what', '?')} (host {holder.get('host')}, pid {holder.get('pid')}{job}, since {since})"


@dataclass(frozen=True)
class _Found:
    """A lock file as read: its record (None: not a lock record), its key and its age in seconds."""

    record: dict | None
    key: str  # the record's token, or the file's inode for a record without one
    age: float


def _look(path: Path) -> _Found | None:
    """The lock file at `path` (content and inode from one open file), None if there is none."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        stat = os.fstat(descriptor)
        data = os.read(descriptor, _MAX_BYTES)
    finally:
        os.close(descriptor)
    try:
        record = json.loads(data)
    except ValueError:  # empty, torn, or not JSON (UnicodeDecodeError is a ValueError)
        record = None
    if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
        record = None
    token = record.get("token") if record else None
    key = token if isinstance(token, str) and _TOKEN.match(token) else f"inode{stat.st_ino}"
    return _Found(record, key, time.time() - stat.st_mtime)


def _link(source: Path, target: Path) -> bool:
    """Give `source`'s file the name `target` unless that exists (False); atomic on shared filesystems. Where
    hard links are not supported, create `target` exclusively and copy the bytes (briefly empty)."""
    try:
        os.link(source, target)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    try:
        descriptor = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(Path(source).read_bytes())
    return True


class FolderLock:
    """`with FolderLock(folder, "sweep", what="launch/sweep.py"):` holds `folder/.lock-sweep` for the block."""

    def __init__(self, folder: Path, name: str, *, what: str, fix: str = "wait for it to finish or stop it",
                 fields: dict | None = None):
        self.path = Path(folder) / f".lock-{name}"
        self.what, self.fix, self.fields = what, fix, dict(fields or {})  # fields: more facts for the holder
        self.token: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        """Who holds the lock now (None if nobody, or if the file is not a lock record)."""
        found = _look(self.path)
        return found.record if found else None

    def _stale(self, found: _Found) -> bool | None:
        """Whether a lock file may be broken; None: unreadable but young (wait)."""
        record = found.record
        if record is None:
            return True if found.age > UNREADABLE_AFTER_S else None
        alive = running(record)
        if alive is not None:
            me = identity()
            return not alive or (record["pid"] == me["pid"] and record.get("start") == me["start"])  # or a lock
            # this very process forgot
        if record.get("job_id") and record.get("job_id") == os.environ.get("SLURM_JOB_ID"):
            return True  # this job before Slurm requeued it (on another node)
        return found.age > STALE_AFTER_S

    def acquire(self) -> "FolderLock":
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True)
        self.token = secrets.token_hex(8)
        record = {**self.fields, **identity(), "token": self.token, "folder": str(folder.resolve()),
                  "what": self.what, "job_id": os.environ.get("SLURM_JOB_ID"), "time": time.time()}
        mine = self.path.with_name(f"{self.path.name}.{self.token}")
        try:
            with open(mine, "x") as handle:
                handle.write(json.dumps(record))
                handle.flush()
                os.fsync(handle.fileno())
            deadline = time.monotonic() + UNREADABLE_AFTER_S + 10
            while not self._take(mine):
                if time.monotonic() > deadline:
                    raise Locked(f"{self.path}: could not take the lock (it kept changing hands); retry")
                time.sleep(0.05)
        except OSError as error:
            if disk_full(error, folder):
                raise DiskFull(f"the disk is full: cannot take the lock {self.path}; free some space and rerun "
                               "(nothing was written)") from error
            raise
        finally:
            mine.unlink(missing_ok=True)
        self._stop.clear()
        self._thread = threading.Thread(target=self._refresh, name=f"lock {self.path}", daemon=True)
        self._thread.start()
        return self

    def _take(self, mine: Path) -> bool:
        """One try at holding the lock with the record in `mine`: create it, or break a stale one. False: try again
        shortly (it changed hands, or is being written); Locked if a live process holds it."""
        if _link(mine, self.path):
            return True
        found = _look(self.path)
        if found is None:
            return False  # released this instant
        stale = self._stale(found)
        if stale is False:
            raise Locked(f"{self.path.parent} is in use by {describe_holder(found.record)}; {self.fix}")
        if stale is None:
            return False
        claim = self._claim(self.path, found.key, mine)
        if claim is None:
            return False  # another process is breaking it
        now = _look(self.path)
        if now is None or now.key != found.key:  # broken (and maybe released) by another process first
            claim.unlink(missing_ok=True)
            return False
        os.replace(claim, self.path)  # only the claim's owner swaps the stale lock out
        self._forget(found)
        return True

    def _forget(self, found: _Found) -> None:
        """Remove the private record file a broken lock's (dead) holder may have left beside it."""
        if not found.key.startswith("inode"):  # a token: this version wrote it
            self.path.with_name(f"{self.path.name}.{found.key}").unlink(missing_ok=True)

    def _claim(self, target: Path, key: str, mine: Path, depth: int = 0) -> Path | None:
        """The claim file that makes this process the only one allowed to replace `target` while it holds `key`;
        None if another live process holds that claim. A claim left by a breaker that died is broken in turn."""
        claim = target.with_name(f"{target.name}.break-{key}")
        if _link(mine, claim):
            return claim
        found = _look(claim)
        if found is None or depth >= 3 or self._stale(found) is not True:
            return None
        inner = self._claim(claim, found.key, mine, depth + 1)
        if inner is None:
            return None
        now = _look(claim)
        if now is None or now.key != found.key:
            inner.unlink(missing_ok=True)
            return None
        os.replace(inner, claim)
        self._forget(found)
        return claim

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            found = _look(self.path)
            if found is None or found.key != self.token:
                return  # no longer ours
            try:
                os.utime(self.path)
            except OSError:
                pass  # a hiccup of the file server: the next refresh tries again

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        found = _look(self.path)
        if found is not None and found.key == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
