"""One writer per folder: lock files that work on shared filesystems (NFS, Lustre) and expire when their holder dies.

A lock is a file `<folder>/.lock-<name>` created with O_CREAT|O_EXCL (atomic on
NFSv3+ and Lustre, unlike flock on some mounts), holding JSON: host, pid, Slurm job
id, what holds it, and when it was taken. The holder touches it every
`REFRESH_S` seconds from a daemon thread.

Staleness rule: a lock is stale, and the next writer breaks it, when its holder is
on this host and its pid is gone; when its holder is this same Slurm job before a
requeue; or when the file has not been touched for `STALE_AFTER_S` seconds (5
minutes: a holder on another host that died, or a dead node). A live holder keeps it
fresh, so a lock is never taken from a running process. Breaking renames the file
aside first, so two breakers cannot both win.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from .errors import UserError

__all__ = ["FolderLock", "Locked", "REFRESH_S", "STALE_AFTER_S", "pid_alive"]

REFRESH_S = float(os.environ.get("HPC_NCSN_LOCK_REFRESH_S", 30))
STALE_AFTER_S = float(os.environ.get("HPC_NCSN_LOCK_STALE_S", 300))


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


def describe_holder(holder: dict) -> str:
    job = f", job {holder['job_id']}" if holder.get("job_id") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"{holder.get('what', '?')} (host {holder.get('host')}, pid {holder.get('pid')}{job}, since {since})"


class FolderLock:
    """`with FolderLock(folder, "sweep", what="launch/sweep.py"):` holds `folder/.lock-sweep` for the block."""

    def __init__(self, folder: Path, name: str, *, what: str, fix: str = "wait for it to finish or stop it",
                 fields: dict | None = None):
        self.path = Path(folder) / f".lock-{name}"
        self.what, self.fix, self.fields = what, fix, dict(fields or {})  # fields: more facts for the holder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> dict | None:
        """Who holds the lock now (None if nobody, or if the file is being written)."""
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def stale(self, holder: dict | None) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return False
        if holder and holder.get("host") == socket.gethostname():
            pid = int(holder.get("pid", 0))
            return pid == os.getpid() or not pid_alive(pid)  # this very process (a lock it forgot), or a dead one
        if holder and holder.get("job_id") and holder.get("job_id") == os.environ.get("SLURM_JOB_ID"):
            return True  # this job before Slurm requeued it (on another node)
        return age > STALE_AFTER_S

    def acquire(self) -> "FolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({**self.fields, "host": socket.gethostname(), "pid": os.getpid(), "what": self.what,
                             "job_id": os.environ.get("SLURM_JOB_ID"), "time": time.time()})
        for _ in range(3):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self.holder()
                if not self.stale(holder):
                    if holder is None:  # being written this instant, or unreadable: give it a moment
                        time.sleep(0.2)
                        holder = self.holder()
                    if holder is None or not self.stale(holder):
                        who = describe_holder(holder) if holder else "another process"
                        raise Locked(f"{self.path.parent} is in use by {who}; {self.fix}") from None
                aside = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
                try:
                    os.replace(self.path, aside)  # only one breaker gets the file
                    aside.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(record)
            self._thread = threading.Thread(target=self._refresh, name=f"lock {self.path}", daemon=True)
            self._thread.start()
            return self
        raise Locked(f"{self.path}: could not take the lock (it kept changing hands); retry")

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        holder = self.holder()
        if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
