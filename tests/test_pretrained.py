"""Handing a model over: export as safetensors + config.json + card, from_pretrained without pickle, training from
given weights (train.init_from) and resuming an explicit checkpoint (train.resume_from), with tiny real trainings."""

import json
import pickle
import shutil
from pathlib import Path

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
