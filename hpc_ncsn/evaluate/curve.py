"""FID over training: sample every EMA snapshot of a run (train.eval_every) and score the samples.

`score_snapshots(run, out, data, settings)` draws `num_samples` samples of each snapshot in
<run>/snapshots/step-*/ into out/step-*/ (resumable: valid shards are kept) and scores them
like any sample folder (out/step-*/metrics.json), then writes the curve, one
{step, fid, kid_mean, n} per snapshot, oldest first, to out/CURVE. A sweep does this for
each cell (beside the cell's samples); `hpc-ncsn curve` for one run, outside a sweep.
Importing this module does not import torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..config import DataConfig, EvaluateConfig
from ..distributed import is_main_process
from ..errors import UserError
from ..files import atomic_write

__all__ = ["CURVE", "CURVE_KEYS", "score_snapshots"]

CURVE = "fid_vs_step.json"  # the curve, in the folder of the snapshots' samples
CURVE_KEYS = ("fid", "kid_mean", "n")  # what each point keeps of its snapshot's report


def score_snapshots(run: Path, out: Path, data: DataConfig, settings: EvaluateConfig, *, num_samples: int,
                    overrides: tuple[str, ...] = (), seed: int = 0, progress: Callable[[str], None] = print
                    ) -> list[dict]:
    """Sample (with the run's sampler, or `overrides` of sampler.* / noise.* / generate.*) and score every
    snapshot of `run`; rank 0's curve (every rank takes part in each sampling and scoring). `progress` gets
    generation's lines."""
    from ..checkpoint import checkpoint_name, snapshots
    from ..samples.generate import generate
    from .evaluator import evaluate

    found = snapshots(run)
    if not found:
        raise UserError(f"{run}: no EMA snapshots (snapshots/step-*/ema.pt); train with train.eval_every=K to keep "
                        "one every K steps")
    curve = []
    for step, snapshot in found:
        folder = Path(out) / checkpoint_name(step)
        generate(snapshot, folder, seed=seed, overrides=(*overrides, f"generate.num_samples={num_samples}"),
                 progress=progress)
        report = evaluate(folder, data, settings, out=folder / "metrics.json") or {}
        curve.append({"step": step, **{key: report.get(key) for key in CURVE_KEYS}})
    if is_main_process():
        atomic_write(Path(out) / CURVE, json.dumps(curve, indent=2) + "\n")
    return curve
