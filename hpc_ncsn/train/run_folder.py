"""A training run folder: its lock, the resolved config (and the check of a restart against it), the metrics log,
sample grids, and the moments checkpoints are saved and resumed (their format: hpc_ncsn.checkpoint).

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
from pathlib import Path

from .. import checkpoint as ckpt
from ..checkpoint import DamagedCheckpoints, TrainState
from ..config import Config, ConfigError, config_to_dict, config_to_yaml, load_config
from ..distributed import is_main_process
from ..errors import UserError
from ..ema import EMA
from ..files import DiskFull, atomic_write, disk_full, read_jsonl, require_free_space
from ..locks import FolderLock

__all__ = ["DamagedCheckpoints", "RunFolder", "RunFolderMismatch", "TrainState"]

# What a restarted run must share with the folder's run: everything that shapes the weights.
_SAME_SECTIONS = ("data", "noise", "model")
_SAME_TRAIN_KEYS = ("seed", "batch_size")


class RunFolderMismatch(UserError, ValueError):
    """A run folder holds a run of another experiment; the message lists what differs."""


def _differences(saved: dict, current: dict) -> list[str]:
    """What differs between two resolved configs (as dicts) among the keys that shape the weights."""
    changed = [f"{section}.{key}: {saved[section][key]!r} → {current[section][key]!r}"
               for section in _SAME_SECTIONS for key in current[section]
               if saved[section][key] != current[section][key]]
    return changed + [f"train.{key}: {saved['train'][key]!r} → {current['train'][key]!r}"
                      for key in _SAME_TRAIN_KEYS if saved["train"][key] != current["train"][key]]


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.config_path = self.path / "config.yaml"
        self.metrics_path = self.path / "metrics.jsonl"
        self.checkpoints = ckpt.checkpoints_dir(self.path)
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
        return config_to_dict(ckpt.read_config(latest))

    def check(self, config: Config) -> None:
        """Refuse to resume a run folder that was started with a different experiment."""
        saved = self._saved_config()
        changed = [] if saved is None else _differences(saved, config_to_dict(config))
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
        return ckpt.save_snapshot(self.path, config, step, ema)

    def save_checkpoint(self, accelerator, config: Config, state: TrainState, ema: EMA,
                        levels: dict | None = None) -> Path | None:
        """Every rank writes its part of Accelerate's state into a scratch folder; the main process then
        adds ema.pt and meta.json (with `levels`, the loss sums since the last log line), publishes it and
        rotates old ones. Returns the folder (main process).

        Refused up front (DiskFull) when the filesystem has less room than the newest checkpoint took;
        a save that fails anyway leaves the published checkpoints as they were and no scratch folder.
        """
        main = is_main_process()
        scratch = ckpt.scratch_path(self.checkpoints, state.step)
        latest = ckpt.latest_checkpoint(self.checkpoints)
        if latest is not None:
            require_free_space(self.checkpoints, ckpt.size_on_disk(latest),
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
                ckpt.write_ema(scratch, config, state.step, ema)
                ckpt.write_meta(scratch, TrainState(state.step, state.skipped, state.consecutive_skips, levels),
                                accelerator.num_processes, accelerator.mixed_precision)
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

    def has_checkpoint(self) -> bool:
        """Whether the folder holds a complete checkpoint of its own (a start resumes it)."""
        return ckpt.latest_checkpoint(self.checkpoints) is not None

    def explicit_checkpoint(self, config: Config) -> Path | None:
        """The checkpoint `train.resume_from` names (a checkpoint folder, or a run folder: its newest), checked to be
        of the same experiment as `config`; None when it is unset or this folder has checkpoints of its own."""
        if not config.train.resume_from or self.has_checkpoint():
            return None
        checkpoint = ckpt.resolve_checkpoint(Path(config.train.resume_from))
        changed = _differences(config_to_dict(ckpt.read_config(checkpoint)), config_to_dict(config))
        if changed:
            raise RunFolderMismatch(f"train.resume_from={checkpoint} is a checkpoint of another experiment "
                                    f"({'; '.join(changed)}); resume it with its own config, or use train.init_from "
                                    "to start a new training from its weights")
        return checkpoint

    def resume(self, accelerator, ema: EMA, explicit: Path | None = None) -> TrainState:
        """Restore the newest intact complete checkpoint, if any (a damaged one, say a torn meta.json, ema.pt,
        model or optimizer file, is skipped with one warning line naming it: the older ones keep_checkpoints kept
        are there for this), else `explicit` (train.resume_from: a checkpoint of another folder, whose run this one
        continues); drop log lines written after it. DamagedCheckpoints if every one is damaged."""
        state, damaged = TrainState(), []
        candidates = ckpt.complete_checkpoints(self.checkpoints) or ([explicit] if explicit is not None else [])
        for path in candidates:
            try:  # what counts as damaged: hpc_ncsn.checkpoint.read_checkpoint, and what Accelerate's files do
                state, payload = ckpt.read_checkpoint(path, counters=True)
                with ckpt.reading(ckpt.EMA_FILE):
                    ema.load_state_dict(payload["ema"])
                with ckpt.reading("model or optimizer state"):
                    accelerator.load_state(str(path))
                problem = ""
            except ckpt.Torn as torn:
                problem = str(torn)
            if not _anyone(accelerator, bool(problem)):
                if damaged:
                    accelerator.print(ckpt.skipped_warning(damaged, path, "resuming from"))
                accelerator.print(f"resumed from {path} at step {state.step}")
                break
            damaged.append(f"{path.name} ({problem or 'damaged on another process'})")
        else:
            if damaged:
                raise ckpt.every_one_damaged(self.checkpoints, damaged,
                                             "restore one, or move the folder aside to train from step 0")
        if is_main_process():
            self.truncate_metrics(state.step)
        return state


def _anyone(accelerator, flag: bool) -> bool:
    """Whether `flag` holds on any process (every process then takes the same branch)."""
    if accelerator.num_processes == 1:
        return flag
    import torch

    return bool(accelerator.reduce(torch.tensor([int(flag)], device=accelerator.device), reduction="sum").item())
