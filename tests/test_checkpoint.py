import pytest

from hpc_ncsn import checkpoint as ckpt


def write(folder, step):
    scratch = ckpt.scratch_dir(folder, step)
    (scratch / "weights.bin").write_bytes(b"w" * 100)
    (scratch / ckpt.COMPLETE_MARK).write_text("{}")
    return ckpt.publish(scratch, step)


def test_publish_renames_a_complete_checkpoint(tmp_path):
    final = write(tmp_path, 7)
    assert final.name == "step-00000007" and (final / "weights.bin").read_bytes() == b"w" * 100
    assert not list(tmp_path.glob(".tmp-*"))
    assert ckpt.latest_checkpoint(tmp_path) == final


def test_publish_refuses_a_checkpoint_without_its_completion_mark(tmp_path):
    scratch = ckpt.scratch_dir(tmp_path, 3)
    with pytest.raises(AssertionError, match="meta.json"):
        ckpt.publish(scratch, 3)


def test_interrupted_saves_are_ignored_and_cleaned_up(tmp_path):
    good = write(tmp_path, 10)
    (tmp_path / ".tmp-step-00000020").mkdir()  # a save killed half-way
    (tmp_path / "step-00000030").mkdir()  # a final name without the mark (never written by us)
    assert ckpt.latest_checkpoint(tmp_path) == good
    ckpt.scratch_dir(tmp_path, 40)
    assert [p.name for p in tmp_path.glob(".tmp-*")] == [".tmp-step-00000040"]


def test_rotation_keeps_the_newest_and_only_deletes_complete_ones(tmp_path):
    for step in (1, 2, 3, 4):
        write(tmp_path, step)
    deleted = ckpt.rotate(tmp_path, keep=2)
    assert [p.name for p in deleted] == ["step-00000001", "step-00000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-00000004"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000004"


def test_no_checkpoint_folder_means_no_checkpoint(tmp_path):
    assert ckpt.latest_checkpoint(tmp_path / "missing") is None
