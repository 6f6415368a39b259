"""The FID Inception weights are a file the project owns: fetched into the cache, hashed, loaded without running code.

The attack of issue 26: a file that runs code when unpickled (here it only creates a
marker file) swapped in after `hpc-ncsn fetch inception`, or lying under the same
name in the folder an evaluation runs from. The weights are torch-fidelity-format
random weights (bench/random_inception.py): what is tested is which bytes are loaded
and how, not what they score.
"""

import hashlib
import sys
from pathlib import Path

import pytest
import torch

from hpc_ncsn.cli import main
from hpc_ncsn.evaluate.extractors import INCEPTION, load_extractor
from hpc_ncsn.evaluate.inception import WeightsError, prepared_default

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from random_inception import write_random_inception  # noqa: E402


class RunsCode:
    """Unpickling this creates `marker`: any code could run in its place."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def write_hostile(path: Path, marker: Path) -> Path:
    torch.save({"Conv2d_1a_3x3.conv.weight": RunsCode(marker)}, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_random_inception(tmp_path_factory.mktemp("weights") / "weights.pth")


def test_a_fetched_file_swapped_afterwards_or_a_same_named_file_elsewhere_never_runs(weights, tmp_path, monkeypatch,
                                                                                       capsys):
    cache, first, second, marker = tmp_path / "cache", tmp_path / "first", tmp_path / "second", tmp_path / "ran"
    first.mkdir()
    second.mkdir()
    (first / "weights.pth").write_bytes(weights.read_bytes())
    monkeypatch.chdir(first)
    assert main(["fetch", "inception", "--from", "weights.pth", "--cache", str(cache)]) == 0  # a relative path
    capsys.readouterr()
    prepared = prepared_default(cache)
    assert prepared.path.parent == cache / "inception" and prepared.path.read_bytes() == weights.read_bytes()
    # The fetched file is swapped, and another folder holds a hostile file of the same name.
    write_hostile(first / "weights.pth", marker)
    write_hostile(second / "weights.pth", marker)
    for folder in (first, second):
        monkeypatch.chdir(folder)
        extractor = load_extractor(INCEPTION, None, torch.device("cpu"), cache)
        assert extractor.weights_digest == hashlib.sha256(weights.read_bytes()).hexdigest()  # the bytes loaded
        assert extractor.weights_source == str(first / "weights.pth")  # resolved at the fetch
        assert not marker.exists()
    # Named explicitly, the hostile file is refused at its load (weights_only=True), before any code runs.
    with pytest.raises(WeightsError, match="neither a TorchScript network nor a state dict"):
        load_extractor(INCEPTION, second / "weights.pth", torch.device("cpu"), cache)
    assert not marker.exists()


def test_the_cache_copy_changed_after_the_fetch_is_refused_in_one_line(weights, tmp_path, capsys):
    cache, marker = tmp_path / "cache", tmp_path / "ran"
    assert main(["fetch", "inception", "--from", str(weights), "--cache", str(cache)]) == 0
    prepared = prepared_default(cache)
    write_hostile(prepared.path, marker)
    with pytest.raises(WeightsError) as refused:
        load_extractor(INCEPTION, None, torch.device("cpu"), cache)
    message = str(refused.value)
    assert "\n" not in message and str(prepared.path) in message and "fetch inception" in message
    assert "changed after it was fetched" in message and not marker.exists()
    # Fetching again restores the copy.
    assert main(["fetch", "inception", "--from", str(weights), "--cache", str(cache)]) == 0
    assert load_extractor(INCEPTION, None, torch.device("cpu"), cache).weights_digest == prepared.sha256
