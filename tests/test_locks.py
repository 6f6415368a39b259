"""Folder locks (hpc_ncsn.locks): one holder at a time, named when refused; stale ones taken over."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc_ncsn.locks import FolderLock, Locked

ROOT = Path(__file__).resolve().parent.parent


HOLD = """
import sys, time
from hpc_ncsn.locks import FolderLock
lock = FolderLock(sys.argv[1], "sweep", what="holder").acquire()
print("held", flush=True)
time.sleep(60)
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
