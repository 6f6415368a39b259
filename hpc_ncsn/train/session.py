"""What one training process holds: Accelerate, the run folder, data, network, optimizer, EMA, and its state.

`Training.start(config)` prepares everything and restores the newest checkpoint;
`training.step()` runs one optimizer step (hpc_ncsn.train.step); `log`, `save` and
`read_skips` are what the loop calls at its intervals. The benchmark and the tests
drive a `Training` the same way the loop does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ..config import Config, ConfigError
from ..distributed import is_main_process
from ..errors import UserError
from ..ema import EMA
from ..model import build_score_model, count_parameters
from ..network import native_bf16, network_call
from ..pretrained import initial_weights
from ..schedules import ladder
from ..data import load_training_data
from .batches import micro_batch_size
from .launcher_settings import overridden_compile, overridden_launcher_settings
from .run_folder import RunFolder, TrainState
from .step import TrainStep
from .trackers import finish_trackers, log_image, start_trackers, tracker_names, tracker_record

__all__ = ["Training", "TrainingDiverged", "make_accelerator", "resolve_mixed_precision"]


class TrainingDiverged(UserError, RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


def _fresh_accelerator_state(mixed_precision: str) -> None:
    """Let this process build an Accelerator with another precision than its previous one.

    Accelerate keeps one AcceleratorState per process and refuses a second Accelerator with
    other settings; it has no public reset (its own tests call the private `_reset_state`).
    A process that runs several trainings (a sweep with --cluster debug, the benchmark)
    needs one. The process group (PartialState) is kept. tests/test_training.py runs two
    trainings of different precision in one process.
    """
    from accelerate.state import AcceleratorState

    if AcceleratorState._shared_state and AcceleratorState._shared_state.get("_mixed_precision") != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)


MIXED_PRECISIONS = ("no", "bf16", "fp16")
PRECISION_NAMES = {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with loss scaling"}


def resolve_mixed_precision(asked: str, on_cpu: bool) -> str:
    """The training precision: the run config's `train.mixed_precision`, with `auto` resolved.

    `accelerate launch` tells its processes its --mixed_precision (or its config file's
    value, "no" when neither says) in ACCELERATE_MIXED_PRECISION. `auto` takes that; without
    a launcher, bf16 where the device computes it natively (hpc_ncsn.network.native_bf16: a GPU
    that supports it, a CPU with AVX-512 BF16 or AMX) and fp32 ("no") otherwise. An explicit value
    wins over the launcher, with a warning when the launcher asked for another low precision
    (its "no" is also its silent default, so it is not taken as a request).
    """
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "").strip().lower() or None
    if asked == "auto":
        if launcher is None:
            effective = "bf16" if native_bf16(torch.device("cpu" if on_cpu else "cuda")) else "no"
        elif launcher in MIXED_PRECISIONS:
            effective = launcher
        else:
            raise ConfigError(f"the launcher asks for mixed precision {launcher!r} (ACCELERATE_MIXED_PRECISION), "
                              f"which training here does not support; launch with --mixed_precision "
                              f"{', '.join(MIXED_PRECISIONS)} or set train.mixed_precision")
    else:
        effective = asked
        if launcher not in (None, "no", asked) and is_main_process():
            print(f"warning: train.mixed_precision={asked} overrides the launcher's --mixed_precision {launcher}; "
                  "set train.mixed_precision=auto to let the launcher decide", file=sys.stderr, flush=True)
    if effective == "fp16" and on_cpu:
        source = "train.mixed_precision" if asked != "auto" else "the launcher's --mixed_precision"
        raise ConfigError(f"{source} fp16 needs a GPU (loss scaling is a CUDA feature); use bf16 or no on CPU")
    return effective


def make_accelerator(config: Config):
    """An Accelerator for the run config: its precision (`auto` resolved) and accumulation, gloo for several
    CPU processes, DeepSpeed when `accelerate launch` was given a DeepSpeed config (ZeRO-3 refused), the
    trackers of `train.log_with` (started by Training.start). `accelerator.mixed_precision` is the
    precision in effect."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs, ProjectConfiguration

    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    on_cpu = not torch.cuda.is_available()
    precision = resolve_mixed_precision(config.train.mixed_precision, on_cpu)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs = [InitProcessGroupKwargs(backend="gloo")] if on_cpu and distributed else []
    trackers = tracker_names(config.train.log_with)
    out_dir = Path(config.train.out_dir)
    _fresh_accelerator_state(precision)
    # A plugin, not gradient_accumulation_steps=: Accelerator would take ACCELERATE_GRADIENT_ACCUMULATION_STEPS in
    # place of that argument, and the micro-batches here are cut by train.grad_accum (launcher_settings warns).
    # dynamo_backend="no": train.compile compiles (network_call), never Accelerate's prepare (launcher_settings).
    accumulation = GradientAccumulationPlugin(num_steps=config.train.grad_accum)
    accelerator = Accelerator(mixed_precision=precision, dynamo_backend="no", gradient_accumulation_plugin=accumulation,
                              cpu=on_cpu and not use_deepspeed, kwargs_handlers=kwargs, log_with=trackers or None,
                              project_config=ProjectConfiguration(project_dir=str(out_dir),
                                                                  logging_dir=str(out_dir / "trackers")))
    if use_deepspeed and accelerator.state.deepspeed_plugin.zero_stage == 3:
        raise ConfigError(
            "DeepSpeed ZeRO-3 shards the parameters, and the EMA here needs whole parameters on every rank; "
            "use configs/accelerate/zero1.yaml or zero2.yaml"
        )
    return accelerator


def _replicas_agree(accelerator, model: torch.nn.Module) -> None:
    """All ranks must hold bit-identical weights before a checkpoint (EDM's check)."""
    if accelerator.num_processes == 1:
        return
    local = torch.stack([torch.stack([p.detach().double().sum(), p.detach().double().square().sum()])
                         for p in model.parameters()]).flatten()
    gathered = accelerator.gather(local[None]).reshape(accelerator.num_processes, -1)
    if not torch.equal(gathered, gathered[:1].expand_as(gathered)):
        bad = (gathered != gathered[:1]).any(dim=1).nonzero().flatten().tolist()
        raise RuntimeError(f"replicas diverged: ranks {bad} hold weights different from rank 0")


class Training:
    """One process's share of a training run. Build it with `Training.start(config)`."""

    def __init__(self, config: Config, folder: RunFolder, accelerator, state: TrainState, step: TrainStep):
        self.config, self.folder, self.accelerator, self.state = config, folder, accelerator, state
        self.run_step = step
        self._lr: float | None = None  # the learning rate of the last step, for the log

    # The step's parts, for the loop, the benchmark and the tests.
    model = property(lambda self: self.run_step.model)
    network = property(lambda self: self.run_step.network)
    ema = property(lambda self: self.run_step.ema)
    levels = property(lambda self: self.run_step.levels)

    @property
    def data(self) -> torch.Tensor:
        return self.run_step.data

    @data.setter
    def data(self, value: torch.Tensor) -> None:  # the benchmark trains on random images of the config's shape
        self.run_step.data = value

    @property
    def deepspeed(self) -> bool:
        return self.accelerator.state.deepspeed_plugin is not None

    @classmethod
    def start(cls, config: Config) -> "Training":
        """Accelerator, run folder, data, model, optimizer and EMA, restored from the newest checkpoint."""
        cfg = config.train
        folder = RunFolder(Path(cfg.out_dir))
        accelerator = make_accelerator(config)
        micro = micro_batch_size(cfg, accelerator.num_processes)
        deepspeed = accelerator.state.deepspeed_plugin is not None
        overridden = [*overridden_launcher_settings(cfg, micro), *overridden_compile(cfg.compile and not deepspeed)]
        for line in overridden if is_main_process() else []:
            print(line, file=sys.stderr, flush=True)  # what the launcher was given and the run config overrides
        if deepspeed:  # the run config, not the accelerate file, decides batch, accumulation and clipping
            accelerator.state.deepspeed_plugin.deepspeed_config.update(
                train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=cfg.grad_accum,
                gradient_clipping=cfg.grad_clip)
        if is_main_process():
            folder.start(config)
        accelerator.wait_for_everyone()

        device = accelerator.device
        data = load_training_data(config).to(device)  # resident: uint8 images cost 150 MB for CIFAR-10
        sigmas = ladder(config.noise.ladder, config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
        torch.manual_seed(cfg.seed)
        model = build_score_model(config.model, config.data)
        if cfg.init_from and not folder.has_checkpoint():  # fine-tuning: start from given weights
            weights, where = initial_weights(Path(cfg.init_from), config)
            model.load_state_dict(weights)
            accelerator.print(f"initialised from {where}")
        channels_last = cfg.channels_last and config.model.kind == "unet"
        if channels_last:
            model.to(memory_format=torch.channels_last)
        apply = ("deepspeed" if deepspeed else "scaler" if accelerator.mixed_precision == "fp16"
                 else "fused" if cfg.fused_optimizer else "host")
        optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        torch_optimizer = optimizer_cls(model.to(device).parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                        **({"fused": True} if apply == "fused" else {}))
        ema = EMA(model, rate=cfg.ema_rate).to(device)
        model, optimizer = accelerator.prepare(model, torch_optimizer)
        if cfg.compile and deepspeed:
            accelerator.print("train.compile: not applied under DeepSpeed (its engine wraps the model); running eagerly")
        network = network_call(model, channels_last=channels_last, compile=cfg.compile and not deepspeed,
                               label="score network (training)")
        state = folder.resume(accelerator, ema, folder.explicit_checkpoint(config))
        if accelerator.log_with:
            start_trackers(accelerator, config, folder.path.name, state.step)
        accelerator.print(f"model: {count_parameters(model):,} parameters; {accelerator.num_processes} process(es), "
                          f"global batch {cfg.batch_size} = {accelerator.num_processes} × {cfg.grad_accum} × {micro}; "
                          f"precision {PRECISION_NAMES[accelerator.mixed_precision]}")
        step = TrainStep(accelerator=accelerator, model=model, network=network, optimizer=optimizer,
                         torch_optimizer=torch_optimizer, ema=ema, data=data, sigmas=sigmas.to(device), train=cfg,
                         apply=apply, skipped=state.skipped, consecutive=state.consecutive_skips)
        step.levels.restore(state.levels, is_main_process())
        return cls(config, folder, accelerator, state, step)

    def set_learning_rate(self) -> float:
        """Linear warm-up to train.lr over train.warmup_steps, for the coming step."""
        train = self.config.train
        lr = train.lr * (min(1.0, (self.state.step + 1) / train.warmup_steps) if train.warmup_steps else 1.0)
        for group in self.run_step.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def step(self) -> torch.Tensor:
        """One optimizer step at the current learning rate; advances `state.step`. Returns the gradient norm."""
        lr = self.set_learning_rate()
        norm = self.run_step(self.state.step)
        self.state.step += 1
        self._lr = lr
        return norm

    def read_skips(self) -> None:
        """Bring the device's skip counters into `state` (waits for the device); stop a diverged run."""
        state, limit = self.state, self.config.train.max_consecutive_skips
        state.skipped, state.consecutive_skips = self.run_step.read_skips()
        if state.consecutive_skips >= limit:
            raise TrainingDiverged(
                f"{limit} consecutive steps had a non-finite loss or gradient "
                f"(step {state.step - (state.consecutive_skips - limit)}); "
                "lower train.lr, raise train.warmup_steps or check the data")

    def log(self, grad_norm: torch.Tensor, images_per_s: float) -> dict | None:
        """Reduce the per-level loss over ranks and append one line to metrics.jsonl (main process)."""
        self.read_skips()
        sums, counts = self.levels.take(self.accelerator)
        if not is_main_process():
            return None
        seen = int(counts.sum())
        record = {
            "step": self.state.step,
            "loss": float(sums.sum()) / seen if seen else None,
            "loss_per_level": [(s / c) if c else None for s, c in zip(sums.tolist(), counts.tolist())],
            "grad_norm": float(grad_norm),
            "lr": self._lr,
            "mixed_precision": self.accelerator.mixed_precision,
            "images_per_s": images_per_s,
            "skipped_steps": self.state.skipped,
        }
        self.folder.append_metrics(record)
        if self.accelerator.trackers:
            self.accelerator.log(tracker_record(record), step=self.state.step)
        return record

    def log_sample_grid(self, grid: torch.Tensor) -> None:
        """The EMA sample grid (uint8, channels × height × width) to the trackers that take images."""
        log_image(self.accelerator, grid, self.state.step)

    def finish_trackers(self) -> None:
        """Close the trackers (their files complete); once, also when training stops early."""
        finish_trackers(self.accelerator)

    def close(self) -> None:
        """Close the trackers; let another process train in this run folder (releases its lock)."""
        try:
            self.finish_trackers()
        finally:
            self.folder.lock.release()

    def save(self) -> None:
        """Check that the replicas agree, then write a checkpoint of the current step."""
        self.read_skips()
        model = self.run_step.bare
        _replicas_agree(self.accelerator, model)
        self.folder.save_checkpoint(self.accelerator, self.config, self.state, self.ema,
                                    levels=self.levels.snapshot(self.accelerator))
