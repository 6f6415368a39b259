"""HDF5 shards: round trip, deterministic bytes, and every kind of damage refused with its reason."""

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpc_ncsn.samples.shards import (
    SHARD_FORMAT_VERSION,
    ShardError,
    ShardSpec,
    check_coverage,
    file_sha256,
    images_sha256,
    plan_shards,
    read_manifest,
    read_shard,
    shard_path,
    write_manifest,
    write_shard,
)
from hpc_ncsn.samples.validation import validate_shard, validate_shards, verify_folder
from helpers import HANG_GUARD_S, flip_image_byte

ATTRS = {"schedule": "geometric", "sampler": {"steps_per_level": 5, "step_lr": 6.2e-6}, "seed": 3, "note": "x"}


def images_for(spec: ShardSpec, shape=(8, 8, 3)) -> np.ndarray:
    rng = np.random.default_rng(spec.index)
    return rng.integers(0, 256, size=(spec.count, *shape), dtype=np.uint8)


def write_all(folder, num_samples=23, shard_size=10):
    specs = plan_shards(num_samples, shard_size)
    entries = [write_shard(shard_path(folder, spec), spec, images_for(spec), ATTRS) for spec in specs]
    return specs, entries


def test_plan_covers_the_samples_with_a_short_last_shard():
    assert plan_shards(23, 10) == [ShardSpec(0, 0, 10), ShardSpec(1, 10, 20), ShardSpec(2, 20, 23)]
    with pytest.raises(ValueError, match="at least 1"):
        plan_shards(0, 10)


def test_round_trip_keeps_images_indices_and_attributes(tmp_path):
    specs, entries = write_all(tmp_path)
    images, indices, attrs = read_shard(tmp_path / "shard-00002.h5")
    assert np.array_equal(images, images_for(specs[2])) and indices.tolist() == [20, 21, 22]
    assert attrs == ATTRS
    info = validate_shard(tmp_path / "shard-00001.h5", specs[1], image_shape=(8, 8, 3))
    assert (info.start, info.stop, info.count, info.image_shape) == (10, 20, 10, (8, 8, 3))
    assert entries[0]["sha256"] == file_sha256(tmp_path / "shard-00000.h5") and entries[2]["count"] == 3
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_attributes_are_stored_as_what_they_are_and_version_2_shards_still_read(tmp_path):
    spec = ShardSpec(0, 0, 10)
    write_shard(tmp_path / "v3.h5", spec, images_for(spec), {**ATTRS, "flag": True, "gap": None})
    with h5py.File(tmp_path / "v3.h5", "r") as handle:  # what h5py and h5dump users see
        raw = dict(handle.attrs)
    assert isinstance(raw["seed"], np.integer) and raw["seed"] == 3 and raw["format_version"] == 3
    assert isinstance(raw["schedule"], str) and raw["schedule"] == "geometric" and raw["flag"] == np.True_
    assert json.loads(raw["sampler"]) == ATTRS["sampler"] and sorted(json.loads(raw["json_attrs"])) == ["gap",
                                                                                                      "sampler"]
    assert read_shard(tmp_path / "v3.h5")[2] == {**ATTRS, "flag": True, "gap": None}
    assert type(read_shard(tmp_path / "v3.h5")[2]["seed"]) is int

    images = images_for(spec)  # a shard as version 2 wrote it: every other attribute JSON text
    with h5py.File(tmp_path / "shard-00000.h5", "w") as handle:
        handle["images"], handle["indices"] = images, np.arange(10)
        handle.attrs.update({key: json.dumps(value) for key, value in ATTRS.items()})
        handle.attrs.update({"format_version": 2, "start": 0, "stop": 10, "count": 10,
                             "images_sha256": images_sha256(images), "complete": True})
    assert validate_shard(tmp_path / "shard-00000.h5", spec).attrs == ATTRS


def test_the_same_inputs_give_the_same_bytes(tmp_path):
    spec = ShardSpec(4, 40, 50)
    first = write_shard(tmp_path / "a.h5", spec, images_for(spec), ATTRS)
    second = write_shard(tmp_path / "b.h5", spec, images_for(spec), dict(reversed(ATTRS.items())))
    assert first["sha256"] == second["sha256"]


def test_writer_refuses_wrong_images_and_reserved_attributes(tmp_path):
    spec = ShardSpec(0, 0, 4)
    with pytest.raises(ValueError, match="uint8"):
        write_shard(tmp_path / "s.h5", spec, np.zeros((4, 8, 8, 3), np.float32), {})
    with pytest.raises(ValueError, match="4 images"):
        write_shard(tmp_path / "s.h5", spec, np.zeros((3, 8, 8, 3), np.uint8), {})
    with pytest.raises(ValueError, match="reserved"):
        write_shard(tmp_path / "s.h5", spec, np.zeros((4, 8, 8, 3), np.uint8), {"complete": True})
    assert not list(tmp_path.iterdir())


def test_leftover_temporaries_of_a_killed_writer_are_removed(tmp_path):
    spec = ShardSpec(0, 0, 4)
    (tmp_path / ".shard-00000.h5.tmp-99999").write_bytes(b"half a shard")
    write_shard(shard_path(tmp_path, spec), spec, images_for(spec), {})
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.h5"]


def raw_shard(path, images, indices, start, stop, complete=True, version=SHARD_FORMAT_VERSION):
    """A shard written by hand, to make the damage the writer never makes."""
    with h5py.File(path, "w") as handle:
        handle["images"] = images
        handle["indices"] = indices
        handle.attrs.update({"format_version": version, "start": start, "stop": stop, "count": stop - start,
                             "images_sha256": images_sha256(images)})
        if complete:
            handle.attrs["complete"] = True


def damage(kind: str, path):
    good = images_for(ShardSpec(0, 0, 10))
    if kind == "truncated":
        write_shard(path, ShardSpec(0, 0, 10), good, ATTRS)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - 600])
    elif kind == "zero-length":
        path.write_bytes(b"")
    elif kind == "garbage":
        path.write_bytes(os.urandom(5000))
    elif kind == "float images":
        raw_shard(path, good.astype(np.float32), np.arange(10), 0, 10)
    elif kind == "3-D images":
        raw_shard(path, good[..., 0], np.arange(10), 0, 10)
    elif kind == "4 channels":
        raw_shard(path, np.zeros((10, 8, 8, 4), np.uint8), np.arange(10), 0, 10)
    elif kind == "NCHW images":
        raw_shard(path, np.ascontiguousarray(good.transpose(0, 3, 1, 2)), np.arange(10), 0, 10)
    elif kind == "wrong indices":
        raw_shard(path, good, np.arange(1, 11), 0, 10)
    elif kind == "short count":
        raw_shard(path, good[:7], np.arange(7), 0, 10)
    elif kind == "no completion mark":
        raw_shard(path, good, np.arange(10), 0, 10, complete=False)
    elif kind == "other version":
        raw_shard(path, good, np.arange(10), 0, 10, version=7)
    elif kind == "other range":
        raw_shard(path, images_for(ShardSpec(0, 0, 10)), np.arange(30, 40), 30, 40)
    elif kind == "one image byte changed":
        write_shard(path, ShardSpec(0, 0, 10), good, ATTRS)
        flip_image_byte(path)
    elif kind == "a folder":
        path.mkdir()
    elif kind == "a link to another file":
        other = path.with_name("elsewhere.h5")
        write_shard(other, ShardSpec(0, 0, 10), good, ATTRS)
        path.symlink_to(other)
    elif kind == "version 1 (no image checksum)":
        raw_shard(path, good, np.arange(10), 0, 10, version=1)


@pytest.mark.parametrize("kind, reason", [
    ("truncated", "truncated or corrupt|unreadable"),
    ("zero-length", "zero-length"),
    ("garbage", "not a readable HDF5 file"),
    ("float images", "dtype float32, expected uint8"),
    ("3-D images", "expected 4-D"),
    ("4 channels", "4 channels"),
    ("NCHW images", "8 channels|the run makes"),
    ("wrong indices", "indices are not 0..9"),
    ("short count", "counts disagree"),
    ("no completion mark", "no completion mark"),
    ("other version", "format version 7"),
    ("other range", "should hold 0..9"),
    ("one image byte changed", "image data differ from the checksum written with them"),
    ("a folder", "is a folder, not a shard file"),
    ("a link to another file", "is a symbolic link"),
    ("version 1 (no image checksum)", "format version 1, this hpc_ncsn reads 2"),
])
def test_damaged_shard_is_refused_with_file_and_reason(tmp_path, kind, reason):
    path = tmp_path / "shard-00000.h5"
    damage(kind, path)
    with pytest.raises(ShardError, match=reason) as error:
        validate_shard(path, ShardSpec(0, 0, 10), image_shape=(8, 8, 3))
    assert str(path) in str(error.value) and "rerun generation" in str(error.value)


def test_folder_validation_separates_good_from_bad_shards(tmp_path):
    specs, _ = write_all(tmp_path)
    (tmp_path / "shard-00001.h5").unlink()
    damage("no completion mark", tmp_path / "shard-00002.h5")
    valid, problems = validate_shards(tmp_path, specs)
    assert [info.start for info in valid] == [0]
    assert problems == {1: "missing", 2: "no completion mark (its writer did not finish)"}


def test_a_hanging_read_times_out_and_the_other_shards_are_still_checked(tmp_path):
    specs, _ = write_all(tmp_path, num_samples=30)
    (tmp_path / "shard-00001.h5").unlink()
    os.mkfifo(tmp_path / "shard-00001.h5")  # opening it blocks forever, like a hung filesystem
    valid, problems = validate_shards(tmp_path, specs, timeout=3)
    assert [info.start for info in valid] == [0, 20]
    assert list(problems) == [1] and "did not finish within 3 s" in problems[1]



def test_a_python_stack_given_through_pythonpath_reaches_the_checking_child_but_the_current_folder_does_not(tmp_path):
    """A cluster's module-based install: a Python without the libraries, which PYTHONPATH provides (here the
    test venv's site-packages under the venv's own base interpreter). The checking child must find h5py there,
    and must not import a module file of the same name from the current folder."""
    import site
    import subprocess
    import sys

    base = getattr(sys, "_base_executable", sys.executable)
    if subprocess.run([base, "-c", "import h5py"], capture_output=True).returncode == 0:
        pytest.skip(f"{base} imports h5py by itself; the test needs a Python that does not")
    specs, _ = write_all(tmp_path / "shards")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    (elsewhere / "h5py.py").write_text("raise ImportError('the h5py.py of the current folder was imported')\n")
    program = ("import sys; from pathlib import Path; from hpc_ncsn.samples.shards import ShardSpec; "
               "from hpc_ncsn.samples.validation import validate_shards; "
               f"valid, problems = validate_shards(Path({str(tmp_path / 'shards')!r}), "
               f"[ShardSpec(*spec) for spec in {[tuple(vars(spec).values()) for spec in specs]!r}]); "
               "print(len(valid), problems)")
    stack = os.pathsep.join([str(Path(__file__).resolve().parent.parent), *site.getsitepackages()])
    done = subprocess.run([base, "-P", "-c", program], cwd=elsewhere, capture_output=True, text=True,
                          timeout=HANG_GUARD_S, env={**os.environ, "PYTHONPATH": stack})
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"{len(specs)} {{}}"

def test_coverage_refuses_overlaps_gaps_and_mixed_shapes(tmp_path):
    specs, _ = write_all(tmp_path)
    infos, _ = validate_shards(tmp_path, specs)
    check_coverage(infos, 23)
    with pytest.raises(ShardError, match="samples 10..19 are in no shard"):
        check_coverage([infos[0], infos[2]], 23)
    with pytest.raises(ShardError, match="samples 20..22 are in no shard"):
        check_coverage(infos[:2], 23)
    with pytest.raises(ShardError, match="overlap"):
        check_coverage([infos[0], infos[1], infos[1], infos[2]], 23)
    (tmp_path / "gray").mkdir()
    write_shard(tmp_path / "gray" / "shard-00002.h5", specs[2], images_for(specs[2], (8, 8, 1)), {})
    odd = validate_shard(tmp_path / "gray" / "shard-00002.h5")
    with pytest.raises(ShardError, match="disagree on the image shape"):
        check_coverage([infos[0], infos[1], odd], 23)


def test_manifest_round_trip_and_folder_verification(tmp_path):
    _, entries = write_all(tmp_path)
    write_manifest(tmp_path, entries, {"num_samples": 23, "shard_size": 10, **ATTRS})
    manifest = read_manifest(tmp_path)
    assert manifest["meta"]["num_samples"] == 23 and len(manifest["shards"]) == 3
    verified, infos = verify_folder(tmp_path, image_shape=(8, 8, 3))
    assert verified == manifest and [info.start for info in infos] == [0, 10, 20]
    assert [info.images_sha256 for info in infos] == [entry["images_sha256"] for entry in entries]
    with pytest.raises(ShardError, match=r"images are \(8, 8, 3\) \(H, W, C\), expected \(8, 8, 1\)"):
        verify_folder(tmp_path, image_shape=(8, 8, 1))
    path = tmp_path / "shard-00001.h5"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="shard-00001.h5: its checksum differs from the manifest"):
        verify_folder(tmp_path)
    (tmp_path / "shard-00001.h5").unlink()
    with pytest.raises(ShardError, match="shard-00001.h5: missing"):
        verify_folder(tmp_path)


def test_missing_or_broken_manifest_is_named(tmp_path):
    with pytest.raises(ShardError, match="no manifest"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(ShardError, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"shards": []}))
    with pytest.raises(ShardError, match="no 'meta' entry"):
        read_manifest(tmp_path)
