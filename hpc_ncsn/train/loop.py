"""The training loop: denoising score matching under Accelerate (and DeepSpeed ZeRO-1/2).

One code path for 1 process, N processes and N processes over M nodes; see
hpc_ncsn.train.session for what a process holds and hpc_ncsn.train.step for one step.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from .. import heldout, preemption
from ..config import Config
from ..data import to_uint8
from ..distributed import is_main_process
from ..ema import EMA
from ..model import build_score_model
from ..progress import progress_bar
from ..sampling import SamplerPlan, draw
from .heldout import score_weights
from .session import Training

__all__ = ["ema_model", "sample_grid", "score_heldout", "train"]

GRID_PIXELS = 512  # a sample grid's images are enlarged (nearest neighbour) to about this width in all


def ema_model(config: Config, ema: EMA, device: torch.device) -> torch.nn.Module:
    """A plain fp32 network holding the EMA weights (the weights that get sampled), in eval mode."""
    model = build_score_model(config.model, config.data).to(device).eval()
    ema.copy_to(model)
    return model


def score_heldout(config: Config, run: Training) -> Path | None:
    """heldout_dsm.json in the run folder: the EMA weights' DSM loss on held-out data (hpc_ncsn.heldout), run as
    the training runs the network (bf16 autocast and compiled only if it trains so); a file that already scores
    this step on the configured grid is kept, so a finished run rerun computes nothing."""
    cfg, device = config.train, run.accelerator.device
    precision = "bf16" if run.accelerator.mixed_precision == "bf16" else "fp32"
    started = time.time()
    path = score_weights(ema_model(config, run.ema, device), config, device, run.folder.path,
                         step=run.state.step, precision=precision, compile=cfg.compile and not run.deepspeed,
                         channels_last=cfg.channels_last and config.model.kind == "unet")
    if path is not None:
        record = heldout.read_heldout_dsm(path)
        run.accelerator.print(f"held-out DSM loss of the EMA weights: {record['mean']:.4g} ± {record['mean_se']:.2g} "
                              f"({record['num_examples']} examples × {len(record['sigmas'])} σ, {precision}; "
                              f"{time.time() - started:.1f} s) in {path}")
    return path


@torch.no_grad()
def sample_grid(config: Config, ema: EMA, device: torch.device, path: Path) -> torch.Tensor:
    """Draw `train.sample_images` images with the EMA weights and the config's sampler; save a PNG grid.
    Returns the grid (uint8, channels × height × width, on the CPU)."""
    from PIL import Image
    from torchvision.utils import make_grid

    from ..files import atomic_path

    model = ema_model(config, ema, device)
    count, seed = config.train.sample_images, config.train.seed
    indices = torch.arange(count, device=device)
    shape = (config.data.channels, config.data.image_size, config.data.image_size)
    x = draw(model, SamplerPlan.from_config(config.noise, config.sampler), seed=seed, indices=indices, shape=shape,
             init=config.sampler.init, device=device)
    nrow = int(math.ceil(math.sqrt(count)))
    images = to_uint8(x).float() / 255.0
    scale = max(1, GRID_PIXELS // (nrow * config.data.image_size))  # small images, enlarged without blurring
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    grid = make_grid(images, nrow=nrow, padding=1).mul(255).round().to("cpu", torch.uint8)  # RGB, as before
    with atomic_path(path) as tmp:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="png")
    return grid


def train(config: Config) -> Path:
    """Train (or resume) the run in `config.train.out_dir`; returns the run folder."""
    restore = preemption.install()
    try:
        run = Training.start(config)
        try:
            return _loop(config, run)
        finally:
            run.close()
    finally:
        restore()  # the caller's signal handlers again (a notebook's Ctrl-C)


def _loop(config: Config, run: Training) -> Path:
    cfg = config.train
    state = run.state
    due = lambda every: state.step % every == 0 or state.step == cfg.steps  # noqa: E731
    progress = progress_bar(cfg.steps, "train", "steps", initial=state.step)
    run.model.train()
    started, window_start = time.time(), state.step
    try:
        if cfg.steps == 0 and state.step == 0:  # the initialised network itself, as checkpoint step 0
            run.save()
        while state.step < cfg.steps:
            # Accumulate gradients and step on finite ones.
            grad_norm = run.step()
            progress.update(1)

            # Log the loss per noise level, summed over ranks.
            if due(cfg.log_every):
                now = time.time()
                images_per_s = (state.step - window_start) * cfg.batch_size / max(now - started, 1e-9)
                record = run.log(grad_norm, images_per_s)
                if record is not None:
                    progress.set_postfix(loss=record["loss"], img_s=f"{record['images_per_s']:.0f}")
                started, window_start = now, state.step

            # Sample with the EMA weights; save a checkpoint.
            if due(cfg.sample_every) and is_main_process():
                run.log_sample_grid(sample_grid(config, run.ema, run.accelerator.device,
                                                run.folder.sample_grid(state.step)))
            if cfg.eval_every and due(cfg.eval_every) and is_main_process():
                run.folder.save_snapshot(config, state.step, run.ema)  # for FID over training
            if due(cfg.checkpoint_every):
                run.save()
            if due(cfg.sample_every) or due(cfg.checkpoint_every):
                started = time.time()

            # Stop at the scheduler's request (USR2/SIGTERM): save, then hand back; a rerun resumes here.
            asked = run.accelerator.num_processes == 1 or due(cfg.log_every)
            stop = asked and preemption.agreed(run.accelerator.device)
            if stop:
                if not due(cfg.checkpoint_every):
                    run.save()
                raise preemption.Preempted(f"stop requested ({stop}) at step {state.step}; checkpoint saved in "
                                           f"{run.folder.checkpoints}; rerun to resume", stop)
    finally:
        progress.close()  # the bar's line ends before any message that follows it
    run.read_skips()

    # Score the EMA weights on held-out data (main process; kept if a finished run already has it).
    if is_main_process():
        score_heldout(config, run)
    run.accelerator.wait_for_everyone()
    run.finish_trackers()
    run.accelerator.end_training()
    return run.folder.path
