"""Folder locks (hpc_ncsn.locks): one holder at a time, named when refused; stale ones taken over."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc_ncsn.files import DiskFull
from hpc_ncsn.locks import UNREADABLE_AFTER_S, FolderLock, Locked, identity
from helpers import small_filesystem

ROOT = Path(__file__).resolve().parent.parent


HOLD = """
import sys, time
from hpc_ncsn.locks import FolderLock
lock = FolderLock(sys.argv[1], "sweep", what="holder").acquire()
print("held", flush=True)
time.sleep(1800)  # killed by the test; as long as the hang guard, so a busy machine never outlives it
"""


def test_a_live_holder_keeps_the_folder_and_is_named(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Locked, match=rf"in use by holder \(host {socket.gethostname()}, pid {holder.pid}, "
                                         r"since .*\); wait for it"):
            FolderLock(tmp_path, "sweep", what="second").acquire()
    finally:
        holder.kill()
        holder.wait()
    # Its holder is gone: the lock is stale and the next writer takes it.
    with FolderLock(tmp_path, "sweep", what="second") as lock:
        assert lock.holder()["what"] == "second" and lock.holder()["pid"] == os.getpid()
    assert not (tmp_path / ".lock-sweep").exists()


def test_a_lock_from_another_host_expires_only_when_nobody_refreshes_it(tmp_path, monkeypatch):
    path = tmp_path / ".lock-train"
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "what": "a training", "time": time.time()}))
    with pytest.raises(Locked, match="in use by a training \\(host other-node"):
        FolderLock(tmp_path, "train", what="me").acquire()
    old = time.time() - 3600
    os.utime(path, (old, old))  # its holder stopped refreshing an hour ago: a dead node
    FolderLock(tmp_path, "train", what="me").acquire().release()


def test_a_requeued_slurm_job_takes_back_its_own_lock(tmp_path, monkeypatch):
    (tmp_path / ".lock-train").write_text(json.dumps({"host": "n1", "pid": 7, "job_id": "4242", "what": "a training",
                                                      "time": time.time()}))
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    FolderLock(tmp_path, "train", what="me").acquire().release()


def test_two_trainings_in_one_run_folder_are_refused(tmp_path):
    from hpc_ncsn.config import load_config
    from hpc_ncsn.train.run_folder import RunFolder

    config = load_config(ROOT / "configs" / "debug.yaml", [f"train.out_dir={tmp_path}"])
    holder = subprocess.Popen([sys.executable, "-c", HOLD.replace('"sweep"', '"train"'), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Locked, match="would overwrite each other's checkpoints"):
            RunFolder(tmp_path).start(config)
    finally:
        holder.kill()
        holder.wait()
    folder = RunFolder(tmp_path)
    folder.start(config)
    assert (tmp_path / "config.yaml").is_file()
    folder.lock.release()



RACER = """
import os, sys
from hpc_ncsn.locks import FolderLock, Locked
lock, path, pause = None, os.path.join(sys.argv[1], ".lock-sweep"), sys.argv[2]


def hook(event, args):  # pause (until told to go on) where the test wants this process to be overtaken
    global pause
    if pause and event in ("os.link", "os.rename") and os.path.basename(str(args[1])).startswith(".lock-sweep"):
        breaking = pause == "break" and str(args[1]) != path  # about to break the stale lock
        swapping = pause == "swap" and event == "os.rename" and str(args[1]) == path  # claimed, about to swap
        if breaking or swapping:
            pause = ""
            print("paused", flush=True)
            sys.stdin.readline()


sys.addaudithook(hook)
for line in sys.stdin:
    if line.strip() == "go":
        lock = FolderLock(sys.argv[1], "sweep", what="a racer")
        try:
            lock.acquire()
            print("held", flush=True)
        except Locked:
            lock = None
            print("refused", flush=True)
    else:
        if lock is not None:
            lock.release()
        print("released", flush=True)
"""


def dead_pid() -> int:
    done = subprocess.Popen(["true"])
    done.wait()
    return done.pid


def stale_lock(folder: Path) -> None:
    """A lock whose holder, on this host, is dead."""
    (folder / ".lock-sweep").write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(),
                                                   "what": "a dead sweep", "time": time.time()}))


class Racers:
    """Real processes that take the folder's lock when told ("go") and release it when told."""

    def __init__(self, folder: Path, pauses: list[str]):  # one process per entry: where it pauses ("": nowhere)
        self.processes = [subprocess.Popen([sys.executable, "-c", RACER, str(folder), pause], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True,
                                           env={**os.environ, "PYTHONPATH": str(ROOT)}) for pause in pauses]

    def tell(self, line: str, *which: int) -> None:
        for index in which or range(len(self.processes)):
            self.processes[index].stdin.write(line + "\n")
        for index in which or range(len(self.processes)):
            self.processes[index].stdin.flush()

    def hear(self, *which: int) -> list[str]:
        return [self.processes[index].stdout.readline().strip() for index in which or range(len(self.processes))]

    def close(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


@pytest.mark.parametrize("processes, trials", [(2, 100), (4, 60)])
def test_processes_breaking_one_stale_lock_at_once_leave_exactly_one_holder(tmp_path, processes, trials):
    """Each trial: a lock whose holder is dead, and `processes` real processes told to take it at the same moment.
    Exactly one may hold it, and no claim or private file is left behind."""
    racers = Racers(tmp_path, [""] * processes)
    holders = []
    try:
        for _ in range(trials):
            stale_lock(tmp_path)
            racers.tell("go")
            holders.append(racers.hear().count("held"))
            left = sorted(path.name for path in tmp_path.iterdir())
            racers.tell("release")
            assert racers.hear() == ["released"] * processes
            assert left == [".lock-sweep"] and not list(tmp_path.iterdir()), left
    finally:
        racers.close()
    assert holders == [1] * trials, f"trials with other than one holder: {sum(h != 1 for h in holders)}"


@pytest.mark.parametrize("processes", [2, 4])
def test_breakers_overtaken_between_judging_a_lock_stale_and_breaking_it_do_not_take_it_again(tmp_path, processes):
    """The race made certain: every process but the last reads the dead holder's lock, judges it stale and is
    held just before it breaks it; the last takes the lock; then the others go on. They must find it taken. Then
    all of them at once from the same point: one holder."""
    stale_lock(tmp_path)
    racers = Racers(tmp_path, ["break"] * (processes - 1) + [""])
    slow = range(processes - 1)
    try:
        racers.tell("go", *slow)
        assert racers.hear(*slow) == ["paused"] * (processes - 1)
        racers.tell("go", processes - 1)
        assert racers.hear(processes - 1) == ["held"]
        racers.tell("", *slow)
        assert racers.hear(*slow) == ["refused"] * (processes - 1)
        racers.tell("release")
        assert racers.hear() == ["released"] * processes
    finally:
        racers.close()
    assert not list(tmp_path.iterdir())
    stale_lock(tmp_path)
    racers = Racers(tmp_path, ["break"] * processes)
    try:
        racers.tell("go")
        assert racers.hear() == ["paused"] * processes
        racers.tell("")
        assert sorted(racers.hear()) == ["held"] + ["refused"] * (processes - 1)
    finally:
        racers.close()


def test_a_breaker_killed_after_its_claim_does_not_block_the_folder(tmp_path):
    stale_lock(tmp_path)
    racers = Racers(tmp_path, ["swap"])
    try:
        racers.tell("go")
        assert racers.hear() == ["paused"]
    finally:
        racers.close()  # kill -9 between its claim and the swap
    assert [path.name for path in tmp_path.iterdir() if ".break-" in path.name]
    with FolderLock(tmp_path, "sweep", what="next") as lock:
        assert lock.holder()["what"] == "next"
    assert not list(tmp_path.iterdir())  # nor the dead breaker's claim and record


def test_a_full_disk_at_lock_time_leaves_no_lock_and_an_old_empty_lock_is_stale(tmp_path):
    small = small_filesystem(tmp_path, "64k")
    try:
        with open(small / "filler", "wb", buffering=0) as filler:  # fill the filesystem to the last byte
            with pytest.raises(OSError):
                while True:
                    filler.write(b"\0" * 4096)
        with pytest.raises(DiskFull, match=rf"the disk is full: cannot take the lock {small}/.lock-train; free some"):
            FolderLock(small, "train", what="me").acquire()
        assert sorted(path.name for path in small.iterdir()) == ["filler"]
        (small / "filler").unlink()
        FolderLock(small, "train", what="me").acquire().release()
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)
    empty = tmp_path / ".lock-train"  # left by an older version on a full disk, or torn: nobody can name its holder
    empty.write_bytes(b"")
    old = time.time() - 2 * UNREADABLE_AFTER_S
    os.utime(empty, (old, old))
    with FolderLock(tmp_path, "train", what="me") as lock:
        assert lock.holder()["what"] == "me"


def test_a_lock_whose_pid_now_belongs_to_another_process_expires_and_that_process_is_left_alone(tmp_path):
    other = subprocess.Popen(["sleep", "60"])
    try:
        record = {**identity(other.pid), "what": "a training"}
        (tmp_path / ".lock-train").write_text(json.dumps(record))  # the pid's own process: alive, the lock holds
        with pytest.raises(Locked, match=f"in use by a training \\(host .*, pid {other.pid}"):
            FolderLock(tmp_path, "train", what="me").acquire()
        record["start"] += 1  # the holder started at another moment: it died, and its pid was reused
        (tmp_path / ".lock-train").write_text(json.dumps(record))
        FolderLock(tmp_path, "train", what="me").acquire().release()
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
