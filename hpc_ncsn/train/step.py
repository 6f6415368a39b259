"""One optimizer step: the same code for 1 or N processes, fp32/bf16/fp16, fused or plain Adam, and DeepSpeed.

Per micro-batch: the DSM loss of this rank's slice under autocast; a non-finite loss on
any rank (an all-reduce of the flag, no host read) marks the step bad, and its
per-level sums are not counted. After the micro-batches: clip, then a device flag
`found_inf` = (a bad loss) or (a non-finite gradient norm), which decides everything
that follows without the host looking at it: the optimizer leaves weights, moments
and step count as they were, the EMA does not move, the skip counters count it.

Only how the optimizer is told differs (`APPLY`):

    fused      the fused Adam kernel reads found_inf on the device (torch.amp.GradScaler's protocol)
    scaler     fp16: the loss is made NaN on a bad step, so GradScaler sees non-finite gradients,
               skips and lowers its scale
    host       the plain optimizer: the host reads found_inf once and skips the step call
    deepspeed  the engine steps inside backward, so a bad loss is read on the host before it:
               backward then runs on a zero-gradient loss with learning rate 0 (Adam's moments
               still decay once); the gradient norm is not checked
"""

from __future__ import annotations

import math

import torch

from ..ema import EMA
from ..loss import dsm_loss, per_level_loss
from .batches import global_batch, micro_slices

__all__ = ["APPLY", "LevelLosses", "TrainStep", "bare_model"]

APPLY = ("fused", "scaler", "host", "deepspeed")


def bare_model(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The module inside Accelerate's wrappers (DDP, DataParallel, torch.compile).

    Accelerate's own unwrap_model imports DeepSpeed whenever it is installed, to test for
    its engine: 2 s at every start and DeepSpeed's "Setting accelerator to CPU" warning
    in every log. Only a DeepSpeed run goes through it here.
    """
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.unwrap_model(model)
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


class LevelLosses:
    """Sums and counts of the σ²-weighted loss per noise level since the last `take()`, on the device."""

    def __init__(self, num_levels: int, device: torch.device):
        self.sums = torch.zeros(num_levels, dtype=torch.float64, device=device)
        self.counts = torch.zeros(num_levels, dtype=torch.int64, device=device)

    def add(self, per_example: torch.Tensor, levels: torch.Tensor, bad: torch.Tensor) -> None:
        sums, counts = per_level_loss(per_example, levels, len(self.sums))
        self.sums += torch.where(bad > 0, 0.0, sums)
        self.counts += torch.where(bad > 0, 0, counts)

    def mean(self) -> float:
        """The mean loss over every example counted so far (reads the device)."""
        return float(self.sums.sum()) / int(self.counts.sum())

    def take(self, accelerator) -> tuple[torch.Tensor, torch.Tensor]:
        """(sums, counts) summed over ranks; the accumulators start again from zero."""
        sums, counts = accelerator.reduce(self.sums, "sum"), accelerator.reduce(self.counts, "sum")
        self.sums.zero_()
        self.counts.zero_()
        return sums, counts

    def snapshot(self, accelerator) -> dict:
        """What has been summed over all ranks since the last log line (a collective), for a checkpoint."""
        sums, counts = accelerator.reduce(self.sums.clone(), "sum"), accelerator.reduce(self.counts.clone(), "sum")
        return {"sums": sums.tolist(), "counts": counts.tolist()}

    def restore(self, snapshot: dict | None, main: bool) -> None:
        """Start from a checkpoint's snapshot: the main process holds the sums, the others start at zero, so the
        next log line sums to what an uninterrupted run logs."""
        if snapshot and main and len(snapshot["sums"]) == len(self.sums):
            self.sums.copy_(torch.tensor(snapshot["sums"], dtype=torch.float64))
            self.counts.copy_(torch.tensor(snapshot["counts"], dtype=torch.int64))


def _zero_gradient_loss(model: torch.nn.Module) -> torch.Tensor:
    """A finite loss whose gradient is exactly zero: stands in for a non-finite one in DeepSpeed's backward."""
    return sum(p.sum() for p in model.parameters()) * 0.0


class TrainStep:
    """Calling it runs the optimizer step of `step` and returns the gradient norm as a device tensor (NaN if skipped).

    `optimizer` is what Accelerate prepared; `torch_optimizer` the torch optimizer inside it,
    which the fused kernels read `found_inf` from.
    """

    def __init__(self, *, accelerator, model, network, optimizer, torch_optimizer, ema: EMA, data: torch.Tensor,
                 sigmas: torch.Tensor, train, apply: str, skipped: int = 0, consecutive: int = 0):
        assert apply in APPLY, f"unknown way to apply a step: {apply!r}"
        self.accelerator, self.model, self.network, self.ema = accelerator, model, network, ema
        self.optimizer, self.torch_optimizer = optimizer, torch_optimizer
        self.data, self.sigmas, self.train, self.apply = data, sigmas, train, apply
        self.slices = micro_slices(train, accelerator.num_processes, accelerator.process_index)
        self.levels = LevelLosses(len(sigmas), accelerator.device)
        self.skips = torch.tensor([skipped, consecutive], dtype=torch.int64, device=accelerator.device)
        self.bare = bare_model(accelerator, model)  # what the EMA follows

    def __call__(self, step: int) -> torch.Tensor:
        accelerator = self.accelerator
        x, levels, noise = global_batch(self.data, self.train, len(self.sigmas), step)
        bad = torch.zeros((), device=accelerator.device)
        poisoned = False  # DeepSpeed only: a bad loss seen on the host
        for part in self.slices:
            # Accumulate gradients; a non-finite loss on any rank marks the step.
            with accelerator.accumulate(self.model):
                with accelerator.autocast():
                    out = dsm_loss(self.network, x[part], self.sigmas, levels=levels[part], noise=noise[part])
                bad_here = (~torch.isfinite(out.loss.detach())).to(torch.float32)
                if accelerator.num_processes > 1:
                    bad_here = accelerator.reduce(bad_here, "sum")
                self.levels.add(out.per_example, out.levels, bad_here)
                bad = bad + bad_here
                if self.apply == "deepspeed":
                    bad_now = bool(bad_here)
                    poisoned |= bad_now
                    if poisoned and accelerator.sync_gradients:
                        for group in self.optimizer.param_groups:
                            group["lr"] = 0.0
                    accelerator.backward(_zero_gradient_loss(self.model) if bad_now else out.loss)
                else:
                    accelerator.backward(out.loss * torch.where(bad_here > 0, math.nan, 1.0))

        # Clip, decide on the device, and apply the step where the optimizer can be told.
        norm = accelerator.clip_grad_norm_(self.model.parameters(), self.train.grad_clip or math.inf)
        norm = torch.as_tensor(math.nan if norm is None else norm, device=accelerator.device).float()
        found_inf = (bad > 0) if self.apply == "deepspeed" else (bad > 0) | ~torch.isfinite(norm)
        found_inf = found_inf.to(torch.float32)
        if self.apply == "fused":
            self.torch_optimizer.found_inf = found_inf  # read by the fused Adam/AdamW kernel
        if self.apply != "host" or not bool(found_inf):
            self.optimizer.step()
        self.ema.update(self.bare, skip=found_inf)
        self.optimizer.zero_grad(set_to_none=True)
        skipped = found_inf.to(torch.int64)
        self.skips[0] += skipped
        self.skips[1] = (self.skips[1] + 1) * skipped
        return torch.where(found_inf > 0, torch.nan, norm.detach())

    def read_skips(self) -> tuple[int, int]:
        """(skipped steps, consecutive skips so far); waits for the device."""
        skipped, consecutive = self.skips.tolist()
        return skipped, consecutive
