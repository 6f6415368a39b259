"""Checking shards without risking a hang: each file is inspected in a child process with a timeout.

Reading a damaged HDF5 file can hang (a FIFO, a stuck filesystem) or crash the HDF5
library, so `validate_shards` hands the files to a child Python (isolated mode, the
package's own folder on its path) that runs hpc_ncsn.samples.shards.inspect_shard on
each and prints one JSON line per file. A file that does not answer within the
timeout, or that kills the child, is reported as such and the child is restarted for
the remaining files.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .shards import ShardError, ShardInfo, ShardSpec, shard_path

__all__ = ["validate_shard", "validate_shards"]

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
_CHILD = (f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); "
          "from hpc_ncsn.samples.shards import inspect_requests_from_stdin; inspect_requests_from_stdin()")


def _inspect_in_children(requests: list[dict], timeout: float) -> list[dict]:
    """Results per request; a file whose check does not finish within `timeout` s is reported as hung."""
    results: list[dict] = []
    while len(results) < len(requests):
        pending = requests[len(results):]
        errors = tempfile.TemporaryFile("w+")
        child = subprocess.Popen([sys.executable, "-I", "-c", _CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=errors, text=True)
        child.stdin.write(json.dumps(pending))
        child.stdin.close()
        selector = selectors.DefaultSelector()
        selector.register(child.stdout, selectors.EVENT_READ)
        buffer = ""
        deadline = time.monotonic() + timeout
        while len(results) < len(requests):
            if not selector.select(max(0.0, deadline - time.monotonic())):
                child.kill()
                results.append({"ok": False, "reason": f"reading it did not finish within {timeout:g} s "
                                                      "(a damaged HDF5 file can hang the library)"})
                break
            chunk = os.read(child.stdout.fileno(), 1 << 16).decode()
            if not chunk:  # the child died (a crash inside HDF5)
                child.wait()
                errors.seek(0)
                detail = errors.read().strip().splitlines()[-1:]
                results.append({"ok": False, "reason": f"reading it crashed the HDF5 library "
                                                      f"(exit {child.returncode}{': ' + detail[0] if detail else ''})"})
                break
            buffer += chunk
            while "\n" in buffer:
                line, buffer = buffer.split("\n", 1)
                results.append(json.loads(line))
                deadline = time.monotonic() + timeout
        selector.close()
        child.stdout.close()
        child.wait()
        errors.close()
    return results


def _check(items: list[tuple[Path, ShardSpec | None]], image_shape: tuple[int, int, int] | None,
           timeout: float) -> list[ShardInfo | str]:
    """Per (file, expected spec): its ShardInfo, or the reason it is refused; read in child processes."""
    requests = [{"path": str(path), "image_shape": list(image_shape) if image_shape else None,
                 "expected": vars(spec) if spec else None} for path, spec in items]
    results = _inspect_in_children(requests, timeout) if requests else []
    return [ShardInfo(Path(path), r["start"], r["stop"], r["count"], tuple(r["image_shape"]), r["attrs"])
            if r["ok"] else r["reason"] for (path, _), r in zip(items, results)]


def validate_shards(folder: Path, specs: list[ShardSpec], image_shape: tuple[int, int, int] | None = None,
                    timeout: float = 60.0) -> tuple[list[ShardInfo], dict[int, str]]:
    """Check the shards of `specs` in `folder` without risking a hang.

    Returns (the valid shards' infos in spec order, {shard index: reason} for the others).
    """
    present = [spec for spec in specs if shard_path(folder, spec).exists()]
    problems = {spec.index: "missing" for spec in specs if spec not in present}
    valid = []
    outcomes = _check([(shard_path(folder, spec), spec) for spec in present], image_shape, timeout)
    for spec, outcome in zip(present, outcomes):
        if isinstance(outcome, ShardInfo):
            valid.append(outcome)
        else:
            problems[spec.index] = outcome
    return valid, dict(sorted(problems.items()))


def validate_shard(path: Path, expected: ShardSpec | None = None,
                   image_shape: tuple[int, int, int] | None = None, timeout: float = 60.0) -> ShardInfo:
    """One shard checked in a child process; raises ShardError with the reason."""
    outcome = _check([(Path(path), expected)], image_shape, timeout)[0]
    if isinstance(outcome, str):
        raise ShardError(path, outcome)
    return outcome


