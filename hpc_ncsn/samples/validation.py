"""Checking shards without risking a hang: each file is inspected in a child process with a timeout.

Reading a damaged HDF5 file can hang (a FIFO, a stuck filesystem) or crash the HDF5
library, so `validate_shards` hands the files to a child Python (isolated mode, with
the package's own folder, PYTHONPATH's folders and the user's site-packages on its
path, never the current folder) that runs hpc_ncsn.samples.shards.inspect_shard on
each and prints one JSON line per file. A file that does not answer within the
timeout, or that kills the child, is reported as such and the child is restarted for
the remaining files.

`verify_folder` is what the evaluator runs before it reads a single image: the
folder against its manifest (shard list, no stray files, file checksums), every
shard's structure and image-data checksum, its origin against the manifest's, and
the image shape the caller expects.
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

from ..files import file_sha256
from .shards import (
    MANIFEST,
    ShardError,
    ShardInfo,
    ShardSpec,
    check_coverage,
    check_manifest_counts,
    origin_difference,
    plan_shards,
    read_manifest,
    shard_path,
)

__all__ = ["validate_shard", "validate_shards", "verify_folder"]

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def _child_code() -> str:
    """The child's program: isolated mode (-I: neither the current folder nor the environment's Python variables),
    with the import path the user gave this process put back explicitly: the package's own folder, PYTHONPATH's
    folders (made absolute; an empty entry, the current folder, is left out) and the user's site-packages when
    this process uses it. A Python stack provided through PYTHONPATH (module-based installs on clusters) is
    found; a module file in the current folder is not."""
    import site

    given = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    paths = [_PACKAGE_PARENT, *(os.path.abspath(entry) for entry in given if entry)]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        paths.append(site.getusersitepackages())
    return (f"import sys; sys.path[:0] = {paths!r}; "
            "from hpc_ncsn.samples.shards import inspect_requests_from_stdin; inspect_requests_from_stdin()")


def _inspect_in_children(requests: list[dict], timeout: float) -> list[dict]:
    """Results per request; a file whose check does not finish within `timeout` s is reported as hung."""
    results: list[dict] = []
    while len(results) < len(requests):
        pending = requests[len(results):]
        errors = tempfile.TemporaryFile("w+")
        child = subprocess.Popen([sys.executable, "-I", "-c", _child_code()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
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
    return [ShardInfo(Path(path), r["start"], r["stop"], r["count"], tuple(r["image_shape"]), r["attrs"],
                      r["images_sha256"])
            if r["ok"] else r["reason"] for (path, _), r in zip(items, results)]


def validate_shards(folder: Path, specs: list[ShardSpec], image_shape: tuple[int, int, int] | None = None,
                    timeout: float = 60.0) -> tuple[list[ShardInfo], dict[int, str]]:
    """Check the shards of `specs` in `folder` without risking a hang.

    Returns (the valid shards' infos in spec order, {shard index: reason} for the others).
    """
    present = [spec for spec in specs if shard_path(folder, spec).exists() or shard_path(folder, spec).is_symlink()]
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


def verify_folder(folder: Path, image_shape: tuple[int, int, int] | None = None,
                  timeout: float = 60.0) -> tuple[dict, list[ShardInfo]]:
    """(manifest, shard infos in order) of a finished sample folder; ShardError naming the first problem.

    Checks, in order: the manifest; that it lists exactly the shards its num_samples and
    shard_size make; that no other shard file lies in the folder; each file's sha256
    against the manifest; each shard's structure and image-data checksum (child
    process); its image-data sha256 and origin against the manifest; the image shape
    (H, W, C) when given; coverage of every sample once.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    check_manifest_counts(folder / MANIFEST, manifest)  # before plan_shards: an edited count allocates nothing
    meta, entries = manifest["meta"], manifest["shards"]
    specs = plan_shards(meta["num_samples"], meta["shard_size"])
    listed = [(entry.get("file"), entry.get("start"), entry.get("stop")) for entry in entries]
    planned = [(shard_path(folder, spec).name, spec.start, spec.stop) for spec in specs]
    if listed != planned:
        raise ShardError(folder / MANIFEST, f"lists {len(listed)} shard(s) where its num_samples "
                                            f"({meta['num_samples']}) and shard_size ({meta['shard_size']}) make "
                                            f"{len(planned)}: it was edited or is another generation's",
                         "rerun generation to rewrite it")
    strays = sorted({path.name for path in folder.glob("shard-*.h5")} - {name for name, _, _ in planned})
    if strays:
        raise ShardError(folder / strays[0], "is not in the folder's manifest (a stray or foreign file)",
                         "remove it, or rerun generation")
    for entry in entries:
        path = folder / entry["file"]
        if path.is_file() and not path.is_symlink() and file_sha256(path) != entry.get("sha256"):
            raise ShardError(path, "its checksum differs from the manifest (the file changed after generation)")
    infos, problems = validate_shards(folder, specs, image_shape=image_shape, timeout=timeout)
    if problems:
        index, reason = next(iter(problems.items()))
        more = f" (and {len(problems) - 1} more shard(s))" if len(problems) > 1 else ""
        raise ShardError(shard_path(folder, specs[index]), reason + more)
    for info, entry in zip(infos, entries):
        if info.images_sha256 != entry.get("images_sha256"):
            raise ShardError(info.path, "its image data differ from the manifest's checksum of them")
        difference = origin_difference(info.attrs, meta)
        if difference:
            raise ShardError(info.path, f"was made by another run, checkpoint or sampler ({difference}): a "
                                        "foreign shard", "remove it and rerun generation")
    check_coverage(infos, meta["num_samples"])
    return manifest, infos
