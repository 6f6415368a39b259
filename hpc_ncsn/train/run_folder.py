"""A training run folder: the resolved config, the metrics log, checkpoints, sample grids.

    config.yaml            the resolved config (refuses a restart with another experiment)
    metrics.jsonl          one JSON line per log interval
    samples/step-*.png     EMA sample grids
    checkpoints/step-*/    Accelerate state (model, optimizer, scaler, RNG), ema.pt, meta.json
    snapshots/step-*/      ema.pt only, every train.eval_every steps (never rotated)

Only the main process writes here; the others wait at the callers' barriers.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import checkpoint as ckpt
from ..config import Config, ConfigError, config_from_dict, config_to_dict, config_to_yaml, load_config
from ..distributed import is_main_process
from ..errors import UserError
from ..ema import EMA
from ..files import DiskFull, atomic_path, atomic_write, disk_full, read_jsonl, require_free_space
from ..locks import FolderLock

__all__ = ["RunFolder", "RunFolderMismatch", "TrainState"]

# What a restarted run must share with the folder's run: everything that shapes the weights.
_SAME_SECTIONS = ("data", "noise", "model")
_SAME_TRAIN_KEYS = ("seed", "batch_size")


@dataclass
class TrainState:
    step: int = 0
    skipped: int = 0
    consecutive_skips: int = 0
    levels: dict | None = None  # the per-level loss sums since the last log line, when the checkpoint was saved


class RunFolderMismatch(UserError, ValueError):
    """A run folder holds a run of another experiment; the message lists what differs."""


def _ema_record(config: Config, step: int, ema: EMA) -> dict:
    """What ema.pt holds, in a checkpoint as in a snapshot (checkpoint.load_ema_model reads it)."""
    return {"step": step, "config": config_to_dict(config), "ema": ema.state_dict()}


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.lock = FolderLock(self.path, "train", what="a training",
                               fix="two trainings in one folder would overwrite each other's checkpoints: wait for "
                                   "that one, or pick another train.out_dir")

    def _saved_config(self) -> dict | None:
        """The folder's run config: config.yaml, or (if that is empty or unreadable, e.g. torn by a full disk
        under an older version) the config inside the newest checkpoint; None for a new folder."""
        text = self.config_path.read_text() if self.config_path.is_file() else ""
        if text.strip():
            try:
                return config_to_dict(load_config(self.config_path))
            except ConfigError:
                pass
        latest = ckpt.latest_checkpoint(self.checkpoints)
        if latest is None:
            return None
        payload = torch.load(latest / ckpt.EMA_FILE, map_location="cpu", weights_only=True)
        return config_to_dict(config_from_dict(payload["config"], source=str(latest / ckpt.EMA_FILE)))

    def check(self, config: Config) -> None:
        """Refuse to resume a run folder that was started with a different experiment."""
        saved = self._saved_config()
        if saved is None:
            return
        current = config_to_dict(config)
        changed = [f"{section}.{key}: {saved[section][key]!r} → {current[section][key]!r}"
                   for section in _SAME_SECTIONS for key in current[section]
                   if saved[section][key] != current[section][key]]
        changed += [f"train.{key}: {saved['train'][key]!r} → {current['train'][key]!r}"
                    for key in _SAME_TRAIN_KEYS if saved["train"][key] != current["train"][key]]
        if changed:
            raise RunFolderMismatch(f"run folder {self.path} holds a run with another config ({'; '.join(changed)}); "
                             "resume it with its own config or pick a new train.out_dir")

    def start(self, config: Config) -> None:
        """Take the folder's lock (one training at a time), check it against `config`, record `config` in it."""
        self.lock.acquire()
        try:
            self.check(config)
        except BaseException:
            self.lock.release()
            raise
        atomic_write(self.config_path, config_to_yaml(config))

    def append_metrics(self, record: dict) -> None:
        with self.metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """Drop log lines written after the checkpoint a run resumes from (they will be written again), and a torn
        last line."""
        if self.metrics_path.exists():
            kept = [record for record in read_jsonl(self.metrics_path) if record.get("step", 0) <= step]
            atomic_write(self.metrics_path, "".join(json.dumps(record) + "\n" for record in kept))

    def sample_grid(self, step: int) -> Path:
        return self.path / "samples" / f"{ckpt.checkpoint_name(step)}.png"

    def save_snapshot(self, config: Config, step: int, ema: EMA) -> Path:
        """The EMA weights of `step` in snapshots/step-*/ema.pt, as a checkpoint's ema.pt (main process)."""
        folder = self.path / ckpt.SNAPSHOTS / ckpt.checkpoint_name(step)
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / ckpt.EMA_FILE) as tmp:
            torch.save(_ema_record(config, step, ema), tmp)
        return folder

    def save_checkpoint(self, accelerator, config: Config, state: TrainState, ema: EMA,
                        levels: dict | None = None) -> Path | None:
        """Every rank writes its part of Accelerate's state into a scratch folder; the main process then
        adds ema.pt and meta.json (with `levels`, the loss sums since the last log line), publishes it and
        rotates old ones. Returns the folder (main process).

        Refused up front (DiskFull) when the filesystem has less room than the newest checkpoint took;
        a save that fails anyway leaves the published checkpoints as they were and no scratch folder.
        """
        main = is_main_process()
        scratch = self.checkpoints / f".tmp-{ckpt.checkpoint_name(state.step)}"
        latest = ckpt.latest_checkpoint(self.checkpoints)
        if latest is not None:
            require_free_space(self.checkpoints, sum(p.stat().st_size for p in latest.rglob("*") if p.is_file()),
                               f"the checkpoint of step {state.step}", "free some space or point train.out_dir "
                               "elsewhere; the run resumes from its newest checkpoint")
        if main:
            ckpt.scratch_dir(self.checkpoints, state.step)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(scratch))
            accelerator.wait_for_everyone()
            final = None
            if main:
                torch.save(_ema_record(config, state.step, ema), scratch / ckpt.EMA_FILE)
                meta = {"step": state.step, "skipped": state.skipped, "consecutive_skips": state.consecutive_skips,
                        "world_size": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
                        "time": time.time(), "levels": levels}
                (scratch / ckpt.COMPLETE_MARK).write_text(json.dumps(meta))
                final = ckpt.publish(scratch, state.step)
                ckpt.rotate(self.checkpoints, config.train.keep_checkpoints)
        except Exception as error:
            if main:
                shutil.rmtree(scratch, ignore_errors=True)
            if disk_full(error, self.checkpoints):
                raise DiskFull(f"the disk is full: the checkpoint of step {state.step} was not written in "
                               f"{self.checkpoints}; free some space and rerun (it resumes from the newest "
                               "checkpoint)") from error
            raise
        accelerator.wait_for_everyone()
        return final

    def resume(self, accelerator, ema: EMA) -> TrainState:
        """Restore the newest complete checkpoint, if any; drop log lines written after it."""
        latest = ckpt.latest_checkpoint(self.checkpoints)
        state = TrainState()
        if latest is not None:
            accelerator.load_state(str(latest))
            ema.load_state_dict(torch.load(latest / ckpt.EMA_FILE, map_location="cpu", weights_only=True)["ema"])
            meta = json.loads((latest / ckpt.COMPLETE_MARK).read_text())
            state = TrainState(step=meta["step"], skipped=meta["skipped"], consecutive_skips=meta["consecutive_skips"],
                               levels=meta.get("levels"))
            accelerator.print(f"resumed from {latest} at step {state.step}")
        if is_main_process():
            self.truncate_metrics(state.step)
        return state
