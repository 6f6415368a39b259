"""What a sweep will compute, before it computes it: each stage's work in units that any machine's rate turns into
hours (`--dry-run` prints it).

- train: optimizer steps still to run × the global batch, the images that go through the network and back; and
  the network evaluations of its sample grids (train.sample_every: train.sample_images samples each);
- sample: samples still to draw × the sampler's network evaluations per sample (NFE), for every cell that draws its
  own (a cell that shares another's draws nothing), the untrained anchor (the base config's sampler), and the
  snapshots of FID over training (train.eval_every: train.eval_samples each);
- score: images through the feature extractor (every drawn or real sample and every snapshot's), plus the
  reference statistics once (cached after).

Time needs a rate, and a rate belongs to a machine: bench/bench.py measures one. Where the sweep's own trainings
have logged theirs (metrics.jsonl's images_per_s), the training stage's hours at that rate are given too.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from ..config import Config, config_from_dict
from ..files import read_jsonl
from .tasks import AnchorTask, SampleTask, TrainTask

__all__ = ["StageWork", "describe_cost", "logged_rate", "occasions", "sweep_cost"]


@dataclass(frozen=True)
class StageWork:
    """One stage's work over the tasks that run: `units` per task (training images, or network evaluations)."""

    units: tuple[int, ...]  # per task, in the plan's order
    evaluations: int = 0  # train: its sample grids' network evaluations
    scored: int = 0  # sample: images through the feature extractor
    samples: int = 0  # sample: samples drawn
    shared: int = 0  # sample: cells that draw nothing (they share an earlier cell's samples)

    @property
    def tasks(self) -> int:
        return len(self.units)

    @property
    def total(self) -> int:
        return sum(self.units)


def occasions(steps: int, every: int, start: int = 0) -> int:
    """How many of the steps start+1..steps are due under a training's `every` rule: a multiple of `every`, or the
    last step (hpc_ncsn.train.loop)."""
    if steps <= start or every <= 0:
        return 0
    multiples = steps // every - start // every
    return multiples + (steps % every != 0)


def _nfe(config: Config) -> int:
    from ..sampling import SamplerPlan  # torch: only when a cost is asked for

    return SamplerPlan.from_config(config.noise, config.sampler).network_evaluations


def sweep_cost(root: Path, train: list[TrainTask], sample: list[SampleTask | AnchorTask],
               redrawn: frozenset[str] = frozenset()) -> dict[str, StageWork]:
    """The work of the tasks that run (`train` and `sample`: the decision's todo), less what their folders show
    done already (logged steps, written shards), except for the cells named in `redrawn` (an extension moves their
    samples to history/ and draws them all again; its trainings resume)."""
    images, grids = [], 0
    for task in train:
        config = config_from_dict(task.config)  # a sweep saved before a key existed reads it at its default
        start = min(task.progress(root)["done"], config.train.steps)
        images.append((config.train.steps - start) * config.train.batch_size)
        grids += occasions(config.train.steps, config.train.sample_every, start) * config.train.sample_images * \
            _nfe(config)
    evaluations, scored, drawn, shared = [], 0, 0, 0
    for task in sample:
        if isinstance(task, SampleTask) and task.shares():
            shared += 1
            evaluations.append(0)
            continue
        config = config_from_dict(task.config)
        wanted = config.generate.num_samples
        left = wanted if task.name in redrawn else max(wanted - task.progress(root)["done"] *
                                                       config.generate.shard_size, 0)
        real = isinstance(task, AnchorTask) and task.kind == "real"
        nfe = 0 if real else _nfe(config)
        snapshots = occasions(config.train.steps, config.train.eval_every) if isinstance(task, SampleTask) else 0
        extra = snapshots * config.train.eval_samples
        evaluations.append((left + extra) * nfe)
        drawn += 0 if real else left
        scored += wanted + extra
    return {"train": StageWork(tuple(images), evaluations=grids),
            "sample": StageWork(tuple(evaluations), scored=scored, samples=drawn, shared=shared)}


def logged_rate(train: list[TrainTask]) -> float | None:
    """The median images/s a training of the sweep logged at its last log line (per training process), if any."""
    rates = []
    for task in train:
        records = read_jsonl(task.folder / "metrics.jsonl")
        if records and isinstance(records[-1].get("images_per_s"), (int, float)):
            rates.append(float(records[-1]["images_per_s"]))
    return statistics.median(rates) if rates else None


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def describe_cost(work: dict[str, StageWork], config: str, rate: float | None = None) -> list[str]:
    """The lines --dry-run prints: each stage's work, the largest task, and hours where a rate is known."""
    train, sample = work["train"], work["sample"]
    lines = [f"cost of the tasks to run (bench/bench.py --config {config} measures this machine's rates):"]
    if train.tasks:
        lines.append(f"  train: {train.tasks} network(s), {train.total:,} training images (each through the network "
                     f"and back; the largest task {max(train.units):,}), and {train.evaluations:,} network evaluations "
                     "for their sample grids")
    if sample.tasks:
        shared = f"; {sample.shared} cell(s) share another's samples and draw nothing" if sample.shared else ""
        lines.append(f"  sample: {sample.samples:,} samples drawn, {sample.total:,} network evaluations (the largest "
                     f"task {max(sample.units):,}){shared}")
        lines.append(f"  score: {sample.scored:,} images through the feature extractor, and the reference statistics "
                     "once (cached after)")
    if rate and train.tasks:
        lines.append(f"  at the {rate:,.0f} images/s its trainings logged last: {_hours(train.total / rate)} of "
                     f"training in all, {_hours(max(train.units) / rate)} for the largest task")
    if len(lines) == 1:
        lines.append("  nothing: every task is done")
    return lines
