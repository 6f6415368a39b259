"""The training loop: denoising score matching under Accelerate (and DeepSpeed ZeRO-1/2).

One code path for 1 process, N processes and N processes over M nodes. Everything
random in a step except dropout is a function of (seed, step): the data order,
the flips, the noise levels and the noise of the whole global batch, each rank
taking its slice. So the data position is the step, a resumed run replays exactly
what an uninterrupted one does, and the global batch does not depend on the
number of processes.

Run folder (`train.out_dir`):
    config.yaml            the resolved config
    metrics.jsonl          one JSON line per log interval
    samples/step-*.png     EMA sample grids
    checkpoints/step-*/    Accelerate state (model, optimizer, scaler, RNG), ema.pt, meta.json
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import checkpoint as ckpt
from . import preemption
from .config import Config, config_from_dict, config_to_dict, config_to_yaml, load_config
from .data import load_images, to_model_scale, to_uint8, toy_mixture
from .ema import EMA
from .loss import dsm_loss, per_level_loss
from .model import build_score_model, count_parameters
from .sampling import SamplerPlan, annealed_langevin, initial_state
from .schedules import ladder
from .speed import network_call

__all__ = ["TrainingDiverged", "load_ema_model", "train"]


class TrainingDiverged(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class TrainState:
    step: int = 0
    skipped: int = 0
    consecutive_skips: int = 0


def _stream_seed(seed: int, stream: int, counter: int) -> int:
    """A 63-bit seed for torch.Generator from (run seed, stream id, counter), well mixed."""
    value = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + counter * 0x94D049BB133111EB) % 2**64
    value ^= value >> 31
    value = (value * 0xD6E8FEB86659FD93) % 2**64
    return (value ^ (value >> 32)) % 2**63


@functools.lru_cache(maxsize=4)
def _epoch_order(num_items: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of the data that epoch `epoch` reads (drawn once, then reused by its steps)."""
    return torch.randperm(num_items, generator=torch.Generator().manual_seed(_stream_seed(seed, 1, epoch)))


def batch_indices(num_items: int, global_batch: int, step: int, seed: int) -> torch.Tensor:
    """Data indices of the global batch of `step`: epochs of fresh permutations, read in order."""
    positions = torch.arange(step * global_batch, (step + 1) * global_batch)
    epochs, offsets = positions // num_items, positions % num_items
    first, last = step * global_batch // num_items, ((step + 1) * global_batch - 1) // num_items
    if first == last:
        return _epoch_order(num_items, seed, first)[offsets]
    out = torch.empty(global_batch, dtype=torch.int64)
    for epoch in range(first, last + 1):
        mask = epochs == epoch
        out[mask] = _epoch_order(num_items, seed, epoch)[offsets[mask]]
    return out


def _load_training_data(config: Config) -> torch.Tensor:
    if config.data.name == "toy2d":
        mixture = toy_mixture(config.data.toy_means, config.data.toy_weights, config.data.toy_std)
        return mixture.sample(config.data.toy_size, torch.Generator().manual_seed(config.train.seed)).float()
    return load_images(config.data)


def _global_batch(data: torch.Tensor, config: Config, num_levels: int, step: int):
    """(x, levels, noise) of the whole global batch of `step`, model scale, on the device `data` lives on.

    The data stay there as uint8; indices go over in one small copy, and the flips,
    levels and noise are drawn there by a generator seeded from (seed, step): on a
    GPU nothing waits for it, and a given device type gives the same batch every time.
    """
    train = config.train
    device = data.device
    index = batch_indices(data.shape[0], train.batch_size, step, train.seed)
    if device.type == "cuda":
        index = index.pin_memory().to(device, non_blocking=True)
    generator = torch.Generator(device=device).manual_seed(_stream_seed(train.seed, 2, step))
    x = data[index]
    if x.dtype == torch.uint8:
        x = to_model_scale(x)
    if train.random_flip and x.ndim == 4:
        flip = torch.rand(x.shape[0], generator=generator, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    levels = torch.randint(0, num_levels, (x.shape[0],), generator=generator, device=device)
    noise = torch.randn(x.shape, generator=generator, device=device)
    return x, levels, noise


def _finite_everywhere(accelerator, loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every rank (so all ranks skip together)."""
    bad = (~torch.isfinite(loss.detach())).to(torch.float32).reshape(1)
    return float(accelerator.reduce(bad, "sum")) == 0.0 if accelerator.num_processes > 1 else float(bad) == 0.0


def _zero_gradient_loss(model: torch.nn.Module) -> torch.Tensor:
    """A finite loss whose gradient is exactly zero: stands in for a non-finite one in backward."""
    return sum(p.sum() for p in model.parameters()) * 0.0


def _learning_rate(config: Config, step: int) -> float:
    warmup = config.train.warmup_steps
    return config.train.lr * (min(1.0, (step + 1) / warmup) if warmup else 1.0)


def _make_accelerator(config: Config):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    on_cpu = not torch.cuda.is_available()
    if config.train.mixed_precision == "fp16" and on_cpu:
        raise ValueError("train.mixed_precision=fp16 needs a GPU (loss scaling is a CUDA feature); use bf16 or no on CPU")
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    kwargs = [InitProcessGroupKwargs(backend="gloo")] if on_cpu and distributed else []
    accelerator = Accelerator(
        mixed_precision=config.train.mixed_precision,
        gradient_accumulation_steps=config.train.grad_accum,
        cpu=on_cpu and not use_deepspeed,
        kwargs_handlers=kwargs,
    )
    if use_deepspeed:
        stage = accelerator.state.deepspeed_plugin.zero_stage
        if stage == 3:
            raise ValueError(
                "DeepSpeed ZeRO-3 shards the parameters, and the EMA here needs whole parameters on every rank; "
                "use configs/accelerate/zero1.yaml or zero2.yaml"
            )
    return accelerator


def _micro_batch_size(config: Config, world: int) -> int:
    per_step = world * config.train.grad_accum
    if config.train.batch_size % per_step:
        raise ValueError(
            f"train.batch_size={config.train.batch_size} must be divisible by processes × grad_accum = "
            f"{world} × {config.train.grad_accum}; choose a multiple of {per_step}"
        )
    return config.train.batch_size // per_step


def _check_run_folder(out: Path, config: Config) -> None:
    """Refuse to resume a run folder that was started with a different experiment."""
    saved_path = out / "config.yaml"
    if not saved_path.exists():
        return
    saved = config_to_dict(load_config(saved_path))
    current = config_to_dict(config)
    changed = [
        f"{section}.{key}: {saved[section][key]!r} → {current[section][key]!r}"
        for section in ("data", "noise", "model")
        for key in current[section]
        if saved[section][key] != current[section][key]
    ]
    for key in ("seed", "batch_size"):
        if saved["train"][key] != current["train"][key]:
            changed.append(f"train.{key}: {saved['train'][key]!r} → {current['train'][key]!r}")
    if changed:
        raise ValueError(f"run folder {out} holds a run with another config ({'; '.join(changed)}); "
                         "resume it with its own config or pick a new train.out_dir")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


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


def _save_checkpoint(accelerator, out: Path, config: Config, state: TrainState, ema: EMA, model) -> None:
    _replicas_agree(accelerator, model)
    root = out / "checkpoints"
    scratch = root / f".tmp-{ckpt.checkpoint_name(state.step)}"
    if accelerator.is_main_process:
        ckpt.scratch_dir(root, state.step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(scratch))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save({"step": state.step, "config": config_to_dict(config), "ema": ema.state_dict()},
                   scratch / "ema.pt")
        meta = {"step": state.step, "skipped": state.skipped, "consecutive_skips": state.consecutive_skips,
                "world_size": accelerator.num_processes, "time": time.time()}
        (scratch / "meta.json").write_text(json.dumps(meta))
        ckpt.publish(scratch, state.step)
        ckpt.rotate(root, config.train.keep_checkpoints)
    accelerator.wait_for_everyone()


def _resume(accelerator, out: Path, ema: EMA, metrics: Path) -> TrainState:
    """Restore the newest complete checkpoint, if any; drop log lines written after it."""
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    state = TrainState()
    if latest is not None:
        accelerator.load_state(str(latest))
        ema.load_state_dict(torch.load(latest / "ema.pt", map_location="cpu", weights_only=True)["ema"])
        meta = json.loads((latest / "meta.json").read_text())
        state = TrainState(step=meta["step"], skipped=meta["skipped"], consecutive_skips=meta["consecutive_skips"])
        accelerator.print(f"resumed from {latest} at step {state.step}")
    if accelerator.is_main_process:
        _truncate_metrics(metrics, state.step)
    return state


def load_ema_model(checkpoint: Path, device: torch.device | str = "cpu") -> tuple[torch.nn.Module, Config, int]:
    """The EMA weights of a checkpoint folder (or its ema.pt) as a plain fp32 model, its config and step.

    Works for any run, DeepSpeed included: ema.pt holds whole float32 tensors.
    """
    path = Path(checkpoint)
    path = path / "ema.pt" if path.is_dir() else path
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = config_from_dict(payload["config"])
    model = build_score_model(config.model, config.data)
    ema = EMA(model, rate=payload["ema"]["rate"])
    ema.load_state_dict(payload["ema"])
    ema.copy_to(model)
    return model.to(device).eval(), config, payload["step"]


@torch.no_grad()
def _sample_grid(config: Config, ema: EMA, device: torch.device, path: Path) -> None:
    """Draw `train.sample_images` images with the EMA weights and save them as a PNG grid."""
    from torchvision.utils import save_image

    model = build_score_model(config.model, config.data).to(device).eval()
    ema.copy_to(model)
    plan = SamplerPlan.from_config(config.noise)
    count = config.train.sample_images
    indices = torch.arange(count, device=device)
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    x = initial_state(config.train.seed, indices, shape, init=config.noise.init, sigma_max=config.noise.sigma_max)
    x = annealed_langevin(model, x.to(device), plan, seed=config.train.seed, indices=indices)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = to_uint8(x).float() / 255.0
    save_image(images, path, nrow=int(math.ceil(math.sqrt(count))), padding=1)


@dataclass
class _Run:
    """What one training process holds: the prepared objects and the running statistics."""

    config: Config
    out: Path
    accelerator: object
    model: torch.nn.Module
    network: object  # model(x, σ) as the step calls it: channels_last and compiled when configured
    optimizer: torch.optim.Optimizer
    ema: EMA
    data: torch.Tensor
    sigmas: torch.Tensor
    micro: int
    state: TrainState
    level_sums: torch.Tensor
    level_counts: torch.Tensor
    on_device: bool  # skips decided on the device (fused optimizer), see train_step
    skips: torch.Tensor  # (skipped, consecutive) counted on the device when on_device

    @property
    def deepspeed(self) -> bool:
        return self.accelerator.state.deepspeed_plugin is not None

    def set_learning_rate(self) -> float:
        lr = _learning_rate(self.config, self.state.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def train_step(self) -> float | torch.Tensor:
        """One optimizer step over this rank's micro-batches; returns the gradient norm (NaN if skipped).

        With the fused optimizer the norm comes back as a device tensor and nothing in
        the step waits for the device; otherwise as a float, after host-side checks.
        """
        if self.on_device:
            return self._train_step_on_device()
        accelerator, model = self.accelerator, self.model
        poisoned, grad_norm = False, float("nan")
        for out in self._micro_batch_losses():
            finite = _finite_everywhere(accelerator, out.loss)
            poisoned |= not finite
            if finite:
                sums, counts = per_level_loss(out.per_example, out.levels, len(self.sigmas))
                self.level_sums += sums
                self.level_counts += counts
            if poisoned and accelerator.sync_gradients and self.deepspeed:
                for group in self.optimizer.param_groups:  # DeepSpeed steps inside backward: freeze it.
                    group["lr"] = 0.0
            accelerator.backward(out.loss if finite else _zero_gradient_loss(model))
            if accelerator.sync_gradients:
                grad_norm = self._step_if_finite(poisoned)
        return grad_norm

    def _micro_batch_losses(self):
        """The DSM loss of each of this rank's micro-batches of the step's global batch.

        Each is yielded inside Accelerate's accumulate context (the caller's backward
        belongs to it), after the forward pass under autocast.
        """
        accelerator, rank, world = self.accelerator, self.accelerator.process_index, self.accelerator.num_processes
        x_all, levels_all, noise_all = _global_batch(self.data, self.config, len(self.sigmas), self.state.step)
        for k in range(self.config.train.grad_accum):
            part = slice((k * world + rank) * self.micro, (k * world + rank + 1) * self.micro)
            with accelerator.accumulate(self.model):
                with accelerator.autocast():
                    out = dsm_loss(self.network, x_all[part], self.sigmas, levels=levels_all[part],
                                   noise=noise_all[part])
                yield out

    def _train_step_on_device(self) -> torch.Tensor:
        """train_step with every decision taken on the device: no host synchronization.

        Backward runs on every micro-batch; a non-finite loss (on any rank: an all-reduce
        of the flag) or gradient norm sets `found_inf`, which the fused Adam kernel reads
        to leave weights, moments and step count as they were (the protocol of
        torch.amp.GradScaler); the EMA and the skip counters read the same flag.
        """
        accelerator = self.accelerator
        bad = torch.zeros((), device=accelerator.device)
        for out in self._micro_batch_losses():
            bad_here = (~torch.isfinite(out.loss.detach())).to(torch.float32)
            if accelerator.num_processes > 1:
                bad_here = accelerator.reduce(bad_here, "sum")
            sums, counts = per_level_loss(out.per_example, out.levels, len(self.sigmas))
            self.level_sums += torch.where(bad_here > 0, 0.0, sums)
            self.level_counts += torch.where(bad_here > 0, 0, counts)
            bad = bad + bad_here
            accelerator.backward(out.loss)
        norm = accelerator.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip or math.inf)
        found_inf = ((bad > 0) | ~torch.isfinite(norm)).to(torch.float32)
        self.optimizer.optimizer.found_inf = found_inf
        self.optimizer.step()
        self.ema.update(accelerator.unwrap_model(self.model), skip=found_inf)
        self.optimizer.zero_grad(set_to_none=True)
        skipped = found_inf.to(torch.int64)
        self.skips[0] += skipped
        self.skips[1] = (self.skips[1] + 1) * skipped
        return torch.where(found_inf > 0, torch.nan, norm.detach().float())

    def read_skips(self) -> None:
        """Bring the device's skip counters into `state` (waits for the device); stop a diverged run."""
        if not self.on_device:
            return
        state, limit = self.state, self.config.train.max_consecutive_skips
        state.skipped, state.consecutive_skips = self.skips.tolist()
        if state.consecutive_skips >= limit:
            raise _diverged(limit, state.step - (state.consecutive_skips - limit))

    def _step_if_finite(self, poisoned: bool) -> float:
        """Step the optimizer and the EMA on finite losses and gradients; otherwise count a skip."""
        accelerator, state = self.accelerator, self.state
        norm = accelerator.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip or math.inf)
        grad_norm = float(norm) if norm is not None and not poisoned else float("nan")
        if not poisoned and (math.isfinite(grad_norm) or self.deepspeed):
            self.optimizer.step()
            self.ema.update(accelerator.unwrap_model(self.model))
            state.consecutive_skips = 0
        else:
            if accelerator.scaler is not None and not self.deepspeed:
                accelerator.scaler.update()
            state.skipped += 1
            state.consecutive_skips += 1
        self.optimizer.zero_grad(set_to_none=True)
        if state.consecutive_skips >= self.config.train.max_consecutive_skips:
            raise _diverged(state.consecutive_skips, state.step + 1)
        return grad_norm

    def log(self, lr: float, grad_norm: float | torch.Tensor, images_per_s: float) -> dict | None:
        """Reduce the per-level loss over ranks and append one line to metrics.jsonl (main process)."""
        self.read_skips()
        sums = self.accelerator.reduce(self.level_sums, "sum")
        counts = self.accelerator.reduce(self.level_counts, "sum")
        self.level_sums.zero_()
        self.level_counts.zero_()
        if not self.accelerator.is_main_process:
            return None
        seen = int(counts.sum())
        record = {
            "step": self.state.step,
            "loss": float(sums.sum()) / seen if seen else None,
            "loss_per_level": [(s / c) if c else None for s, c in zip(sums.tolist(), counts.tolist())],
            "grad_norm": float(grad_norm),
            "lr": lr,
            "images_per_s": images_per_s,
            "skipped_steps": self.state.skipped,
        }
        with (self.out / "metrics.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        return record


def _diverged(count: int, step: int) -> TrainingDiverged:
    return TrainingDiverged(f"{count} consecutive steps had a non-finite loss or gradient (step {step}); "
                            "lower train.lr, raise train.warmup_steps or check the data")


def _prepare(config: Config) -> _Run:
    """Accelerator, run folder, data, model, optimizer and EMA, restored from the newest checkpoint."""
    cfg = config.train
    out = Path(cfg.out_dir)
    accelerator = _make_accelerator(config)
    micro = _micro_batch_size(config, accelerator.num_processes)
    if accelerator.state.deepspeed_plugin is not None:
        # The run config, not the accelerate file, decides batch, accumulation and clipping.
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config.update(train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=cfg.grad_accum,
                         gradient_clipping=cfg.grad_clip)
    if accelerator.is_main_process:
        _check_run_folder(out, config)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_to_yaml(config))
    accelerator.wait_for_everyone()

    device = accelerator.device
    data = _load_training_data(config).to(device)  # resident: uint8 images cost 150 MB for CIFAR-10
    sigmas = ladder(config.noise.schedule, config.noise.sigma_max, config.noise.sigma_min, config.noise.num_levels)
    torch.manual_seed(cfg.seed)
    model = build_score_model(config.model, config.data)
    deepspeed = accelerator.state.deepspeed_plugin is not None
    channels_last = cfg.channels_last and config.model.kind == "unet"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    # Skips decided on the device need the fused kernels' found_inf; DeepSpeed and fp16's scaler decide their own.
    on_device = cfg.fused_optimizer and not deepspeed and cfg.mixed_precision != "fp16"
    optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = optimizer_cls(model.to(device).parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                              **({"fused": True} if on_device else {}))
    ema = EMA(model, rate=cfg.ema_rate).to(device)
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.compile and deepspeed:
        accelerator.print("train.compile: not applied under DeepSpeed (its engine wraps the model); running eagerly")
    network = network_call(model, channels_last=channels_last, compile=cfg.compile and not deepspeed,
                           label="score network (training)")
    state = _resume(accelerator, out, ema, out / "metrics.jsonl")
    accelerator.print(f"model: {count_parameters(model):,} parameters; {accelerator.num_processes} process(es), "
                      f"global batch {cfg.batch_size} = {accelerator.num_processes} × {cfg.grad_accum} × {micro}")
    return _Run(config, out, accelerator, model, network, optimizer, ema, data, sigmas.to(device), micro, state,
                torch.zeros(len(sigmas), dtype=torch.float64, device=device),
                torch.zeros(len(sigmas), dtype=torch.int64, device=device), on_device,
                torch.tensor([state.skipped, state.consecutive_skips], dtype=torch.int64, device=device))


def train(config: Config) -> Path:
    """Train (or resume) the run in `config.train.out_dir`; returns the run folder."""
    from tqdm.auto import tqdm

    cfg = config.train
    preemption.install()
    run = _prepare(config)
    accelerator, state = run.accelerator, run.state
    due = lambda every: state.step % every == 0 or state.step == cfg.steps  # noqa: E731
    progress = tqdm(total=cfg.steps, initial=state.step, disable=not accelerator.is_main_process, desc="train",
                    dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30.0)
    run.model.train()
    started, window_start = time.time(), state.step
    while state.step < cfg.steps:
        # Accumulate gradients and step on finite ones.
        lr = run.set_learning_rate()
        grad_norm = run.train_step()
        state.step += 1
        progress.update(1)

        # Log the loss per noise level, summed over ranks.
        if due(cfg.log_every):
            now = time.time()
            record = run.log(lr, grad_norm, (state.step - window_start) * cfg.batch_size / max(now - started, 1e-9))
            if record is not None:
                progress.set_postfix(loss=record["loss"], img_s=f"{record['images_per_s']:.0f}")
            started, window_start = now, state.step

        # Sample with the EMA weights; save a checkpoint.
        if due(cfg.sample_every) and accelerator.is_main_process:
            _sample_grid(config, run.ema, accelerator.device,
                         run.out / "samples" / f"{ckpt.checkpoint_name(state.step)}.png")
        if due(cfg.checkpoint_every):
            run.read_skips()
            _save_checkpoint(accelerator, run.out, config, state, run.ema, accelerator.unwrap_model(run.model))
        if due(cfg.sample_every) or due(cfg.checkpoint_every):
            started = time.time()

        # Stop at the scheduler's request (USR2/SIGTERM): save, then hand back; a rerun resumes here.
        if (accelerator.num_processes == 1 or due(cfg.log_every)) and preemption.agreed(accelerator.device):
            if not due(cfg.checkpoint_every):
                run.read_skips()
                _save_checkpoint(accelerator, run.out, config, state, run.ema, accelerator.unwrap_model(run.model))
            progress.close()
            raise preemption.Preempted(f"stop requested ({preemption.requested() or 'on another rank'}) at step "
                                       f"{state.step}; checkpoint saved in {run.out / 'checkpoints'}; rerun to resume")
    progress.close()
    run.read_skips()
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return run.out
