"""HDF5 sample shards: atomic writes, validation that cannot hang, a checksummed manifest.

One concept, the shard format (written, validated, listed, viewed), hence over ~300 lines.

Layout of one shard (format version 3), `shard-KKKKK.h5`:

    /images    uint8 (N, H, W, C)   NHWC, C = 1 or 3; N = stop - start
    /indices   int64 (N,)           the sample indices start..stop-1
    attrs      format_version, start, stop, count (integers), images_sha256 (the
               sha256 of the image bytes, C order) and complete = True, written last;
               every other attribute is stored as what it is: an integer (seed,
               checkpoint_step, num_samples, ...), a float, a boolean or a string
               (run, arm, ...); mappings and lists (noise, sampler, versions) as JSON
               text, their names listed in the JSON list `json_attrs`.

A shard carries the checksum of its own image data, so a changed byte is found even
without a manifest (version 1 had none: such shards are refused and redrawn).
Version 2 stored every other attribute as JSON text; its shards are still read.

`samples.h5` (`write_view`, written with the manifest) shows a complete folder as
one file: `images` (num_samples, H, W, C) and `indices` are HDF5 virtual datasets
over the shards, which stay where they are (their names are relative, so the folder
may move), with the manifest's `meta` as attributes. A shard missing later reads as
images of 0 with indices of -1 there; the shards and the manifest remain the record.

A shard is published with hpc_ncsn.files.atomic_path (a hidden temporary name in the
same folder, fsynced, renamed), so a final-named shard is always complete.
`manifest.json` lists the shards with count, file sha256 and image sha256, and
records their origin (`meta`); `verify_folder` checks a folder against it.

Reading a damaged HDF5 file can hang or crash the HDF5 library, so `inspect_shard`
is meant to run in a child process (hpc_ncsn.samples.validation). Files are opened
with file locking off: on shared filesystems (NFS, Lustre) where HDF5's locks fail,
other HDF5 tools need HDF5_USE_FILE_LOCKING=FALSE in the environment too.

This is the only module that imports h5py; it and the modules it imports stay free
of torch, so the validating child process starts fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..config import MAX_SHARD_BYTES
from ..errors import UserError
from ..files import atomic_path, atomic_write, file_sha256

__all__ = [
    "MANIFEST",
    "ORIGIN_KEYS",
    "SHARD_FORMAT_VERSION",
    "VIEW",
    "ShardError",
    "ShardInfo",
    "ShardSpec",
    "check_coverage",
    "check_manifest_counts",
    "file_sha256",
    "images_sha256",
    "inspect_shard",
    "manifest_entry",
    "plan_shards",
    "read_manifest",
    "read_shard",
    "shard_path",
    "write_manifest",
    "write_shard",
    "write_view",
]

SHARD_FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)
H5PY_VERSION = h5py.__version__  # recorded in every shard (hpc_ncsn.samples.generate)
MANIFEST = "manifest.json"
VIEW = "samples.h5"
_STRUCTURE = ("format_version", "start", "stop", "count", "images_sha256", "complete", "json_attrs")
# The attributes that say how a shard was made: shards of one folder agree on them with its manifest. (The
# sample count is not one: sample i is the same in a folder of 1,000 or 50,000, so a larger rerun keeps them.)
ORIGIN_KEYS = ("run", "checkpoint", "model", "model_sha256", "checkpoint_step", "arm", "noise", "sampler", "seed",
               "network_precision")
REGENERATE = "rerun generation to rewrite it"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest lists one short entry per shard: ~1 MiB for 5,000 shards


class ShardError(UserError, ValueError):
    """A shard or shard folder that cannot be used: '<path>: <reason>; <fix>'."""

    def __init__(self, path: Path | str, reason: str, fix: str = REGENERATE):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}; {fix}")


@dataclass(frozen=True)
class ShardSpec:
    """Shard `index` holds the samples [start, stop)."""

    index: int
    start: int
    stop: int

    @property
    def count(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    start: int
    stop: int
    count: int
    image_shape: tuple[int, int, int]
    attrs: dict = field(default_factory=dict)
    images_sha256: str = ""


def plan_shards(num_samples: int, shard_size: int) -> list[ShardSpec]:
    """Shards of `shard_size` consecutive samples covering [0, num_samples); the last may be shorter."""
    if num_samples < 1 or shard_size < 1:
        raise ValueError(f"num_samples ({num_samples}) and shard_size ({shard_size}) must be at least 1")
    return [ShardSpec(k, start, min(start + shard_size, num_samples))
            for k, start in enumerate(range(0, num_samples, shard_size))]


def shard_path(folder: Path, spec: ShardSpec) -> Path:
    return Path(folder) / f"shard-{spec.index:05d}.h5"


def write_shard(path: Path, spec: ShardSpec, images: np.ndarray, attrs: dict) -> dict:
    """Write uint8 NHWC `images` of `spec` to `path` atomically; returns its manifest entry.

    The bytes depend only on the inputs (no timestamps), so regenerating a shard
    reproduces its checksum. Leftover temporaries of this shard from a killed
    writer are removed.
    """
    path = Path(path)
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: images must be uint8 (N, H, W, C) with C = 1 or 3, got {images.dtype} "
                         f"{images.shape}; convert with hpc_ncsn.data.to_uint8 and permute to NHWC")
    if images.shape[0] != spec.count:
        raise ValueError(f"{path}: shard {spec.index} holds samples {spec.start}..{spec.stop - 1} "
                         f"({spec.count} images), got {images.shape[0]}")
    clash = sorted(set(attrs) & set(_STRUCTURE))
    if clash:
        raise ValueError(f"{path}: attribute names {clash} are reserved for the shard format")
    with atomic_path(path, remove_stale=True) as tmp:  # one writer per shard: the generation's folder lock
        with h5py.File(tmp, "w", libver=("earliest", "v110"), locking=False, track_order=False) as handle:
            handle.create_dataset("images", data=images, track_times=False)
            handle.create_dataset("indices", data=np.arange(spec.start, spec.stop, dtype=np.int64),
                                  track_times=False)
            _encode_attrs(handle.attrs, attrs)
            handle.attrs["format_version"] = SHARD_FORMAT_VERSION
            handle.attrs["start"], handle.attrs["stop"], handle.attrs["count"] = spec.start, spec.stop, spec.count
            handle.attrs["images_sha256"] = images_sha256(images)
            handle.flush()
            handle.attrs["complete"] = True
    return manifest_entry(path, spec, images_sha256(images))


def images_sha256(images: np.ndarray) -> str:
    """sha256 of uint8 image data in C order (what a shard records about its own images)."""
    return hashlib.sha256(np.ascontiguousarray(images).data).hexdigest()


def manifest_entry(path: Path, spec: ShardSpec, data_sha256: str) -> dict:
    """The manifest's line for a shard file: name, index, sample range, count, file and image-data sha256."""
    return {"file": Path(path).name, "index": spec.index, "start": spec.start, "stop": spec.stop,
            "count": spec.count, "sha256": file_sha256(path), "images_sha256": data_sha256}


def _encode_attrs(raw: h5py.AttributeManager, attrs: dict) -> None:
    """Integers, floats, booleans and strings as themselves; anything else as JSON text, named in json_attrs."""
    as_json = []
    for key in sorted(attrs):
        value = attrs[key]
        if isinstance(value, (bool, float, str)) or (isinstance(value, int) and -2**63 <= value < 2**63):
            raw[key] = value
        else:
            raw[key] = json.dumps(value, sort_keys=True)
            as_json.append(key)
    raw["json_attrs"] = json.dumps(as_json)


def _plain(value):
    """An HDF5 attribute value as a Python value (numpy scalars → int, float, bool; bytes → str)."""
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if isinstance(value, np.generic) else value


def _decode_attrs(raw: h5py.AttributeManager) -> dict:
    """The attributes other than the structure's, as they were written (see the module's layout)."""
    if int(raw.get("format_version", -1)) == 2:  # every attribute was JSON text
        as_json = None
    else:
        as_json = set(json.loads(_plain(raw.get("json_attrs", "[]"))))
    attrs = {}
    for key, value in raw.items():
        if key in _STRUCTURE:
            continue
        value = _plain(value)
        if as_json is None or key in as_json:
            try:
                value = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError:
                pass
        attrs[key] = value
    return attrs


def inspect_shard(path: Path, expected: ShardSpec | None = None,
                  image_shape: tuple[int, int, int] | None = None) -> ShardInfo:
    """Read and check one shard in this process (may hang on a damaged file: prefer validate_shard).

    Raises ShardError naming the file and what is wrong with it.
    """
    path = Path(path)
    if path.is_symlink():
        raise ShardError(path, f"is a symbolic link (to {os.readlink(path)}); a sample folder holds its own shards",
                         "remove the link and rerun generation")
    if not path.exists():
        raise ShardError(path, "missing")
    if path.is_dir():
        raise ShardError(path, "is a folder, not a shard file", "remove it and rerun generation")
    if path.is_file() and path.stat().st_size == 0:
        raise ShardError(path, "zero-length file (its writer was killed before writing anything)")
    try:
        handle = h5py.File(path, "r", locking=False)
    except OSError as error:
        raise ShardError(path, f"not a readable HDF5 file, truncated or corrupt ({error})") from None
    try:
        with handle:
            attrs = handle.attrs
            if not bool(attrs.get("complete", False)):
                raise ShardError(path, "no completion mark (its writer did not finish)")
            version = int(attrs.get("format_version", -1))
            if version not in READABLE_VERSIONS:
                raise ShardError(path, f"shard format version {version}, this hpc_ncsn reads "
                                       f"{' and '.join(map(str, READABLE_VERSIONS))}")
            start, stop, count = (int(attrs[key]) for key in ("start", "stop", "count"))
            for name in ("images", "indices"):
                if name not in handle:
                    raise ShardError(path, f"no '{name}' dataset")
            images, indices = handle["images"], handle["indices"]
            if images.dtype != np.uint8:
                raise ShardError(path, f"images have dtype {images.dtype}, expected uint8")
            if images.ndim != 4:
                raise ShardError(path, f"images have shape {images.shape}, expected 4-D (N, H, W, C)")
            if images.shape[-1] not in (1, 3):
                raise ShardError(path, f"images have {images.shape[-1]} channels in the last axis, expected 1 or 3 "
                                       "(NHWC)")
            _check_size(path, images)
            if image_shape is not None and tuple(images.shape[1:]) != tuple(image_shape):
                raise ShardError(path, f"images are {tuple(images.shape[1:])} (H, W, C), expected "
                                       f"{tuple(image_shape)} (data.image_size, data.image_size, data.channels)")
            if not (stop - start == count == images.shape[0] == indices.shape[0]):
                raise ShardError(path, f"counts disagree: start={start} stop={stop} count={count}, "
                                       f"{images.shape[0]} images, {indices.shape[0]} indices")
            if expected is not None and (start, stop) != (expected.start, expected.stop):
                raise ShardError(path, f"holds samples {start}..{stop - 1}, shard {expected.index} should hold "
                                       f"{expected.start}..{expected.stop - 1}")
            if not np.array_equal(indices[()], np.arange(start, stop)):
                raise ShardError(path, f"indices are not {start}..{stop - 1}")
            recorded = attrs.get("images_sha256", "")
            recorded = recorded.decode() if isinstance(recorded, bytes) else str(recorded)
            actual = images_sha256(images[()])  # reads every byte: a truncated file fails here
            if actual != recorded:
                raise ShardError(path, "its image data differ from the checksum written with them (the file was "
                                       "changed or damaged after it was written)")
            return ShardInfo(path, start, stop, count, tuple(int(s) for s in images.shape[1:]),
                             _decode_attrs(attrs), actual)
    except ShardError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise ShardError(path, f"unreadable ({type(error).__name__}: {error})") from None


def read_shard(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """(uint8 NHWC images, int64 indices, attrs) of a shard already validated."""
    with h5py.File(path, "r", locking=False) as handle:
        _check_size(path, handle["images"])
        return handle["images"][()], handle["indices"][()], _decode_attrs(handle.attrs)


def _check_size(path: Path, images) -> None:
    """Refuse a shard whose images (as their dataset declares them, before a byte is read) exceed MAX_SHARD_BYTES:
    a compressed HDF5 dataset can declare far more than its file holds."""
    declared = int(np.prod(images.shape, dtype=np.float64)) * images.dtype.itemsize
    if declared > MAX_SHARD_BYTES:
        raise ShardError(path, f"its images {tuple(images.shape)} take {declared:,} bytes, more than the "
                               f"{MAX_SHARD_BYTES:,} a shard may hold")


def check_coverage(infos: list[ShardInfo], num_samples: int) -> None:
    """Raise ShardError unless the shards cover [0, num_samples) exactly once and agree on the image shape."""
    if not infos:
        raise ShardError("(no shards)", f"no valid shard for samples 0..{num_samples - 1}")
    ordered = sorted(infos, key=lambda info: info.start)
    position = 0
    for info in ordered:
        if info.start < position:
            raise ShardError(info.path, f"samples {info.start}..{min(info.stop, position) - 1} overlap another "
                                        "shard", "remove the stray file or regenerate into an empty folder")
        if info.start > position:
            raise ShardError(info.path.parent, f"samples {position}..{info.start - 1} are in no shard")
        position = info.stop
    if position != num_samples:
        raise ShardError(ordered[-1].path.parent, f"samples {position}..{num_samples - 1} are in no shard"
                         if position < num_samples else f"shards hold {position} samples, expected {num_samples}")
    shapes = {info.image_shape for info in ordered}
    if len(shapes) != 1:
        raise ShardError(ordered[0].path.parent, f"shards disagree on the image shape: {sorted(shapes)}",
                         "regenerate into an empty folder")


# Manifest --------------------------------------------------------------------------------

def write_manifest(folder: Path, entries: list[dict], meta: dict) -> Path:
    """Write folder/manifest.json atomically: {'format_version', 'meta', 'shards': entries}."""
    return atomic_write(Path(folder) / MANIFEST, json.dumps(
        {"format_version": SHARD_FORMAT_VERSION, "meta": meta, "shards": entries}, indent=2, sort_keys=True) + "\n")


def write_view(folder: Path, infos: list[ShardInfo], meta: dict) -> Path:
    """Write folder/samples.h5: the shards of `infos` (complete, in order) as one `images` and one `indices`
    virtual dataset, `meta` as attributes (see the module's docstring)."""
    count, shape = sum(info.count for info in infos), infos[0].image_shape
    images = h5py.VirtualLayout(shape=(count, *shape), dtype=np.uint8)
    indices = h5py.VirtualLayout(shape=(count,), dtype=np.int64)
    for info in infos:  # relative names: HDF5 looks for them beside samples.h5
        images[info.start:info.stop] = h5py.VirtualSource(info.path.name, "images", shape=(info.count, *shape))
        indices[info.start:info.stop] = h5py.VirtualSource(info.path.name, "indices", shape=(info.count,))
    path = Path(folder) / VIEW
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver=("earliest", "v110"), locking=False, track_order=False) as handle:
            handle.create_virtual_dataset("images", images, fillvalue=0)
            handle.create_virtual_dataset("indices", indices, fillvalue=-1)
            _encode_attrs(handle.attrs, meta)
            handle.attrs["format_version"] = SHARD_FORMAT_VERSION
    return path


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ShardError(path, "no manifest: generation has not finished in this folder",
                         "run (or rerun) `hpc-ncsn generate` for it")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ShardError(path, f"{path.stat().st_size:,} bytes, more than the {MAX_MANIFEST_BYTES:,} a manifest may "
                               "have")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ShardError(path, f"not valid JSON ({error})", "rerun generation to rewrite it") from None
    if not isinstance(manifest, dict):
        raise ShardError(path, "not a manifest (a JSON object is expected)", "rerun generation to rewrite it")
    for key in ("meta", "shards"):
        if key not in manifest:
            raise ShardError(path, f"no '{key}' entry", "rerun generation to rewrite it")
    missing = [key for key in ("num_samples", "shard_size") if key not in manifest["meta"]]
    if missing or manifest.get("format_version") not in READABLE_VERSIONS:
        raise ShardError(path, f"format version {manifest.get('format_version')}, meta lacking {missing}; this "
                               f"hpc_ncsn writes version {SHARD_FORMAT_VERSION}", "rerun generation to rewrite it")
    return manifest


def check_manifest_counts(path: Path, manifest: dict) -> None:
    """Refuse a manifest (read from `path`) whose num_samples and shard_size are not positive integers, or ask for
    another number of shards than it lists: checked before anything is planned or allocated from them (an edited
    num_samples of 10^8 would otherwise plan millions of shards)."""
    meta, shards = manifest["meta"], manifest["shards"]
    for key in ("num_samples", "shard_size"):
        value = meta[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ShardError(path, f"meta.{key} is {str(value)[:40]!r}, not a positive integer")
    if not isinstance(shards, list):
        raise ShardError(path, "its 'shards' entry is not a list")
    count = -(-meta["num_samples"] // meta["shard_size"])
    if count != len(shards):
        raise ShardError(path, f"lists {len(shards)} shard(s) where its num_samples ({meta['num_samples']}) and "
                               f"shard_size ({meta['shard_size']}) make {count}: it was edited or is another "
                               "generation's")


def origin_difference(attrs: dict, meta: dict) -> str | None:
    """The first origin attribute in which a shard differs from its folder's manifest, as text, or None."""
    for key in ORIGIN_KEYS:
        if attrs.get(key) != meta.get(key):
            return f"{key}: {attrs.get(key)!r}, the folder's: {meta.get(key)!r}"
    return None


# The validating child process (hpc_ncsn.samples.validation starts it) --------------------------

def inspect_requests_from_stdin() -> None:
    """Child side: read a JSON list of requests from stdin, inspect each, print one JSON line per file."""
    for request in json.loads(sys.stdin.read()):
        expected = ShardSpec(**request["expected"]) if request["expected"] else None
        try:
            info = inspect_shard(Path(request["path"]), expected, request["image_shape"])
            line = {"ok": True, "start": info.start, "stop": info.stop, "count": info.count,
                    "image_shape": info.image_shape, "attrs": info.attrs, "images_sha256": info.images_sha256}
        except ShardError as error:
            line = {"ok": False, "reason": error.reason}
        print(json.dumps(line), flush=True)

