"""The held-out DSM loss (hpc_ncsn.heldout) of a network's EMA weights, as the training runs the network.

`score_weights` is what the end of every training calls; `score_checkpoint` scores a run folder's newest
checkpoint, a checkpoint folder or a snapshot (snapshots/step-*/) for `hpc-ncsn heldout`. Both keep a
heldout_dsm.json that already scores the same step on the same grid with as many examples at the same
precision, so rerunning a finished run computes nothing and an interrupted one computes it again.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import heldout
from ..checkpoint import load_newest_ema_model
from ..config import Config, config_from_dict, config_to_dict
from ..errors import UserError
from ..network import NetworkSpeed, score_function
from .session import resolve_mixed_precision

__all__ = ["score_checkpoint", "score_weights"]


def score_weights(model: torch.nn.Module, config: Config, device: torch.device | str, folder: Path, *, step: int,
                  precision: str = "fp32", compile: bool = False, channels_last: bool = False,
                  batch_size: int = 256) -> Path | None:
    """folder/heldout_dsm.json for `model` (the EMA weights of `step`) on the config's grid
    (`heldout.configured_grid`) with train.heldout_examples examples (0: nothing, returns None), the network run
    at `precision` (fp32 or bf16 autocast) and compiled as the run trains; kept when `heldout.is_current`."""
    grid, limit = heldout.configured_grid(config), config.train.heldout_examples
    if limit == 0:
        return None
    if heldout.is_current(folder, grid, limit, step, precision):
        return Path(folder) / heldout.HELDOUT_FILE
    score_fn = score_function(model, NetworkSpeed(precision, channels_last, compile))
    return heldout.write_heldout_dsm(model, config, device, folder, grid=grid, limit=limit, batch_size=batch_size,
                                     score_fn=score_fn, extra={"step": step, "precision": precision})


def score_checkpoint(path: Path, *, sigma_max: float | None = None, sigma_min: float | None = None,
                     examples: int | None = None, batch_size: int = 256) -> Path:
    """heldout_dsm.json in `path` (a run folder: of its newest checkpoint; a checkpoint or snapshot folder: of
    its ema.pt) on the grid sigma_max..sigma_min (None: the run's train.heldout_sigma_* keys; 0: the network's
    trained end) with `examples` held-out examples (None: the run's train.heldout_examples, or the default
    where the run had it off), at the precision and compile setting the run trained with, on a GPU if there is
    one. Bad values are refused like the config keys they set."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, config, step, _ = load_newest_ema_model(path, device)
    train = config.train
    examples = (train.heldout_examples or type(train).heldout_examples) if examples is None else examples
    if examples < 1:
        raise UserError(f"--examples: {examples} held-out examples score nothing; give at least 1")
    overrides = [f"train.heldout_examples={examples}",
                 f"train.heldout_sigma_max={train.heldout_sigma_max if sigma_max is None else sigma_max}",
                 f"train.heldout_sigma_min={train.heldout_sigma_min if sigma_min is None else sigma_min}"]
    config = config_from_dict(config_to_dict(config), overrides, source=f"hpc-ncsn heldout --run-dir {path}")
    precision = "bf16" if resolve_mixed_precision(train.mixed_precision, device.type == "cpu") == "bf16" else "fp32"
    result = score_weights(model, config, device, Path(path), step=step, precision=precision,
                           compile=train.compile, channels_last=train.channels_last and config.model.kind == "unet",
                           batch_size=batch_size)
    assert result is not None, "train.heldout_examples is at least 1 here"
    return result
