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


def test_ema_pt_and_meta_json_hold_the_format_resume_and_sampling_read(tmp_path):
    """The on-disk records: ema.pt = {step, config, ema} (load_ema_model's plain fp32 model), meta.json = the
    counters a resume restores plus how the run was launched, written last as the completion mark."""
    import json

    import torch

    from hpc_ncsn.config import load_config
    from hpc_ncsn.ema import EMA
    from hpc_ncsn.model import build_score_model

    config = load_config("configs/toy2d.yaml", ["train.seed=5"])
    model = build_score_model(config.model, config.data)
    ema = EMA(model, rate=0.9)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    ema.update(model)
    scratch = ckpt.scratch_dir(tmp_path, 12)
    ckpt.write_ema(scratch, config, 12, ema)
    state = ckpt.TrainState(step=12, skipped=2, consecutive_skips=1, levels={"sums": [1.0], "counts": [3]})
    ckpt.write_meta(scratch, state, world_size=4, mixed_precision="bf16")
    final = ckpt.publish(scratch, 12)

    payload = torch.load(final / ckpt.EMA_FILE, weights_only=True)
    assert set(payload) == {"step", "config", "ema"} and payload["step"] == 12
    assert ckpt.read_config(final) == config and ckpt.read_config(final / ckpt.EMA_FILE) == config
    meta = json.loads((final / ckpt.COMPLETE_MARK).read_text())
    assert set(meta) == {"step", "skipped", "consecutive_skips", "world_size", "mixed_precision", "time", "levels"}
    assert (meta["world_size"], meta["mixed_precision"]) == (4, "bf16")
    assert ckpt.read_meta(final) == state
    restored = EMA(build_score_model(config.model, config.data), rate=0.9)
    restored.load_state_dict(ckpt.read_ema_state(final))
    assert all(torch.equal(a, b) for a, b in zip(restored.state_dict()["shadow"].values(),
                                                 ema.state_dict()["shadow"].values()))
    loaded, loaded_config, step = ckpt.load_ema_model(final)
    ema.copy_to(model)
    assert step == 12 and loaded_config == config
    for mine, theirs in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(mine, theirs)
    assert ckpt.resolve_checkpoint(final) == final


def test_a_snapshot_is_an_ema_pt_alone_and_listed_by_step(tmp_path):
    import torch

    from hpc_ncsn.config import load_config
    from hpc_ncsn.ema import EMA
    from hpc_ncsn.model import build_score_model

    config = load_config("configs/toy2d.yaml")
    ema = EMA(build_score_model(config.model, config.data))
    folders = [ckpt.save_snapshot(tmp_path, config, step, ema) for step in (20, 10)]
    assert [path.name for path in folders] == ["step-00000020", "step-00000010"]
    assert [(step, path.name) for step, path in ckpt.snapshots(tmp_path)] == [(10, "step-00000010"),
                                                                            (20, "step-00000020")]
    assert sorted(p.name for p in folders[0].iterdir()) == [ckpt.EMA_FILE]
    assert torch.load(folders[0] / ckpt.EMA_FILE, weights_only=True)["step"] == 20
