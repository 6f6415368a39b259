"""Exponential moving average of a model's weights (NCSNv2 technique 5).

θ_ema ← β·θ_ema + (1 − β)·θ after every optimizer step, β = `rate` (0.999 in
NCSNv2). With `warmup`, the n-th update uses min(β, (1 + n)/(10 + n)) (TensorFlow's
ExponentialMovingAverage with num_updates, as in the score SDE code), so a short
run's average is not dominated by the random initialization. The average is kept
in float32 whatever the training precision, updated with foreach ops (a few
multi-tensor kernels per step, the rate computed on the device), saved and
restored by state_dict, and copied into a model for sampling.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """The float32 average of a model's parameters.

    `update(model, skip=flag)` takes a 0-dim device tensor (1 = the optimizer skipped
    this step): the average and the update count then stay as they were, decided on
    the device without a host synchronization. `foreach=False` updates parameter by
    parameter (the benchmark's baseline).
    """

    def __init__(self, model: nn.Module, rate: float = 0.999, warmup: bool = True, foreach: bool = True):
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.warmup = warmup
        self.foreach = foreach
        self.names = [name for name, _ in model.named_parameters()]
        self.shadow = [p.detach().to(torch.float32, copy=True) for p in model.parameters()]
        self._count = torch.zeros((), dtype=torch.float64, device=self.shadow[0].device if self.shadow else "cpu")

    @property
    def num_updates(self) -> int:
        """Updates applied so far (skipped ones not counted); reading it waits for the device."""
        return int(self._count.item())

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        named = list(model.named_parameters())
        if [name for name, _ in named] != self.names:
            raise ValueError("EMA was made for a model with other parameter names; build it from this model")
        return [p.detach() for _, p in named]

    @torch.no_grad()
    def update(self, model: nn.Module, skip: torch.Tensor | None = None) -> None:
        """One step: shadow ← shadow + (1 − β)(θ − shadow); nothing moves where `skip` is 1."""
        params = [p.to(torch.float32) for p in self._params(model)]
        count = self._count
        rate = torch.clamp((1 + count) / (10 + count), max=self.rate) if self.warmup else torch.full_like(
            count, self.rate)
        keep = torch.ones_like(count) if skip is None else 1.0 - skip.to(count)
        weight = ((1.0 - rate) * keep).to(torch.float32)
        if self.foreach:
            delta = torch._foreach_sub(params, self.shadow)
            torch._foreach_mul_(delta, weight)
            torch._foreach_add_(self.shadow, delta)
        else:
            for average, param in zip(self.shadow, params):
                average.lerp_(param, weight)
        count.add_(keep)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the averaged weights into `model` (e.g. a copy used for sampling)."""
        for param, average in zip(self._params(model), self.shadow):
            param.copy_(average)

    def state_dict(self) -> dict:
        return {"rate": self.rate, "warmup": self.warmup, "num_updates": self.num_updates,
                "shadow": dict(zip(self.names, self.shadow))}

    def load_state_dict(self, state: dict) -> None:
        if sorted(state["shadow"]) != sorted(self.names):
            missing = sorted(set(self.names) - set(state["shadow"]))
            unexpected = sorted(set(state["shadow"]) - set(self.names))
            raise ValueError(f"EMA state does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.rate = float(state["rate"])
        self.warmup = bool(state["warmup"])
        self._count = torch.tensor(float(state["num_updates"]), dtype=torch.float64, device=self._count.device)
        self.shadow = [state["shadow"][name].to(device=s.device, dtype=torch.float32).clone()
                       for name, s in zip(self.names, self.shadow)]

    def to(self, device: torch.device | str) -> "EMA":
        self.shadow = [s.to(device) for s in self.shadow]
        self._count = self._count.to(device)
        return self
