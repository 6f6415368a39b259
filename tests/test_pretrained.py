"""Handing a model over: export as safetensors + config.json + card, from_pretrained without pickle, training from
given weights (train.init_from) and resuming an explicit checkpoint (train.resume_from), with tiny real trainings."""

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hpc_ncsn.checkpoint import load_ema_model, read_ema_state
from hpc_ncsn.cli import main
from hpc_ncsn.config import load_config
from hpc_ncsn.pretrained import CARD, CONFIG, WEIGHTS, ArchitectureMismatch, from_pretrained, pretrained_config
from hpc_ncsn.train import train
from helpers import TINY_TRAINING

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("digits_cache")


@pytest.fixture
def thread_settings(monkeypatch):
    """`main(["train", ...])` sets the product's thread variables in this process; put them back afterwards."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, "1")


def tiny(out: Path, *extra: str):
    return load_config(ROOT / "configs/debug.yaml", [*TINY_TRAINING, "train.mixed_precision=no",
                                                     "train.checkpoint_every=2", "train.heldout_examples=0",
                                                     f"train.out_dir={out}", *extra])


def newest(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step-*"))[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, digits_cache) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny(out, "train.steps=2"))
    return out


@pytest.fixture(scope="module")
def exported(trained) -> Path:
    out = trained.parent / "export"
    assert main(["export", "--run-dir", str(trained), "--safetensors", str(out)]) == 0
    return out


def test_export_round_trip_is_bit_exact_and_reads_no_pickle(exported, trained, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained must not unpickle anything")

    for target, name in ((torch, "load"), (torch.serialization, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(target, name, refuse)
    model = from_pretrained(exported)
    monkeypatch.undo()
    shadow = read_ema_state(newest(trained))["shadow"]
    state = model.state_dict()
    assert state.keys() == shadow.keys() and all(torch.equal(state[name], shadow[name]) for name in shadow)
    reference, config, step = load_ema_model(newest(trained))
    x, sigma = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([8.5, 1.0, 0.1])
    with torch.no_grad():
        assert torch.equal(model(x, sigma), reference(x, sigma))
    assert pretrained_config(exported) == config and step == 2 and not model.training
    record = json.loads((exported / CONFIG).read_text())
    assert record["step"] == 2 and record["config"]["sampler"]["steps_per_level"] == 2
    card = (exported / CARD).read_text()
    assert "| `sampler.steps_per_level` | `2` |" in card and "from_pretrained" in card


def test_init_from_and_resume_from_exclude_each_other():
    with pytest.raises(ValueError, match=r"train.init_from: give train.init_from .* or train.resume_from .*not both"):
        load_config(None, ["train.init_from=a", "train.resume_from=b"])


def test_weights_that_do_not_fit_their_config_are_one_line(exported, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / WEIGHTS).write_bytes((exported / WEIGHTS).read_bytes())
    record = json.loads((exported / CONFIG).read_text())
    record["config"]["model"]["base_channels"] *= 2
    (broken / CONFIG).write_text(json.dumps(record))
    with pytest.raises(ArchitectureMismatch, match=r"does not fit the network its config.json describes"):
        from_pretrained(broken)


def test_init_from_starts_training_from_the_given_weights_and_refuses_another_network(exported, tmp_path, capsys,
                                                                                     thread_settings):
    out, copy = tmp_path / "tuned", tmp_path / "handed-over"
    shutil.copytree(exported, copy)
    train(tiny(out, "train.steps=0", f"train.init_from={copy}"))  # step 0: the initialised network, saved
    start = read_ema_state(newest(out))["shadow"]
    given = from_pretrained(exported).state_dict()
    assert all(torch.equal(start[name], given[name]) for name in given)
    assert load_config(out / "config.yaml").train.init_from == str(copy)  # recorded in the run's config
    shutil.rmtree(copy)  # a requeue resumes the run's own checkpoint and no longer needs the weights it started from
    train(tiny(out, "train.steps=2", f"train.init_from={copy}"))
    assert newest(out).name == "step-00000002"
    capsys.readouterr()
    code = main(["train", "--config", str(ROOT / "configs/debug.yaml"), *TINY_TRAINING, "model.base_channels=16",
                 "train.steps=0", f"train.init_from={exported}", f"train.out_dir={tmp_path / 'other'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "holds another network (model.base_channels:" in err[0] and "16 here" in err[0]


def test_resume_from_an_explicit_checkpoint_continues_that_training_exactly(trained, tmp_path, capsys,
                                                                          thread_settings):
    straight = tmp_path / "straight"
    train(tiny(straight, "train.steps=4"))  # checkpoints of steps 2 and 4
    middle = straight / "checkpoints" / "step-00000002"
    moved = tmp_path / "moved"
    assert main(["train", "--config", str(ROOT / "configs/debug.yaml"), *TINY_TRAINING, "train.mixed_precision=no",
                 "train.checkpoint_every=2", "train.heldout_examples=0", "train.steps=4", f"train.out_dir={moved}",
                 "--resume", str(middle)]) == 0
    assert f"resumed from {middle} at step 2" in capsys.readouterr().out
    a, b = read_ema_state(newest(straight))["shadow"], read_ema_state(newest(moved))["shadow"]
    assert newest(moved).name == "step-00000004" and all(torch.equal(a[name], b[name]) for name in a)
    assert load_config(moved / "config.yaml").train.resume_from == str(middle)
    code = main(["train", "--config", str(ROOT / "configs/debug.yaml"), *TINY_TRAINING, "train.seed=5",
                 f"train.out_dir={tmp_path / 'x'}", "--resume", str(trained)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "checkpoint of another experiment (train.seed: 0 → 5)" in err[0]


def draw(source: list[str], out: Path, *extra: str) -> int:
    """`hpc-ncsn generate` of 6 samples in shards of 3, seed 7, from `source` (--run-dir RUN or --model DIR)."""
    return main(["generate", *source, "--out", str(out), "--num-samples", "6", "--shard-size", "3",
                 "--batch-size", "3", "--seed", "7", *extra])


def test_generate_from_an_export_draws_the_checkpoints_very_samples_resumably_and_checked(
        exported, trained, tmp_path, capsys, thread_settings):
    """Seed for seed, `generate --model` of the export writes the images `generate --run-dir` of its run writes; the
    folder passes the evaluation's checks and names its model; a rerun keeps what is intact, an override redraws."""
    from hpc_ncsn.evaluate.evaluator import config_for
    from hpc_ncsn.samples.shards import read_manifest, read_shard
    from hpc_ncsn.samples.validation import verify_folder

    run_samples, model_samples = tmp_path / "from-run", tmp_path / "from-model"
    assert draw(["--run-dir", str(trained)], run_samples) == 0
    assert draw(["--model", str(exported)], model_samples) == 0
    shards = [sorted(folder.glob("shard-*.h5")) for folder in (run_samples, model_samples)]
    assert len(shards[0]) == len(shards[1]) == 2
    for ours, theirs in zip(*shards):
        assert np.array_equal(read_shard(ours)[0], read_shard(theirs)[0])
    images = np.concatenate([read_shard(path)[0] for path in shards[1]])
    assert len({image.tobytes() for image in images}) == 6  # six different samples, not one drawn six times
    manifest, _ = verify_folder(model_samples)
    record = json.loads((exported / CONFIG).read_text())
    assert manifest["meta"]["model"] == os.path.relpath(exported, model_samples) and "run" not in manifest["meta"]
    assert manifest["meta"]["model_sha256"] == record["weights_sha256"] and manifest["meta"]["checkpoint_step"] == 2
    assert config_for(model_samples) == pretrained_config(exported)  # evaluate's config: the export's

    (model_samples / "shard-00001.h5").unlink()
    capsys.readouterr()
    assert draw(["--model", str(exported)], model_samples) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1]) == {"folder": str(model_samples), "generated": [1],
                                                                    "kept": [0]}
    assert all(np.array_equal(read_shard(a)[0], read_shard(b)[0]) for a, b in zip(*shards))
    assert draw(["--model", str(exported)], model_samples, "sampler.steps_per_level=1") == 0
    said = capsys.readouterr().out
    assert said.count("redrawing") == 2 and "steps_per_level" in said
    assert read_manifest(model_samples)["meta"]["sampler"]["steps_per_level"] == 1


def test_generate_refuses_what_is_not_an_intact_export_in_one_line(exported, trained, tmp_path, capsys,
                                                                   thread_settings):
    torn = tmp_path / "torn"
    shutil.copytree(exported, torn)
    (torn / WEIGHTS).write_bytes((exported / WEIGHTS).read_bytes()[:1000])
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(["--model", str(trained)], f"{trained} is a run or checkpoint folder, not an exported model"),
             (["--model", str(empty)], f"{empty} is not an exported model (no config.json and model.safetensors)"),
             (["--model", str(torn)], f"{torn / WEIGHTS} is not the file its config.json describes"),
             (["--run-dir", str(exported)], f"--run-dir {exported} is an exported model, not a run or checkpoint "
                                            "folder; pass it as --model")]
    for source, phrase in cases:
        capsys.readouterr()
        assert draw(source, tmp_path / "samples") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {phrase}"), err
    assert not list((tmp_path / "samples").glob("shard-*"))
