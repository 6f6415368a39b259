"""What a launch asks for that the run config decides: batch size, gradient accumulation, clipping.

The run config's train.batch_size, train.grad_accum and train.grad_clip decide, so that a run trains
the same way under every launcher: hpc_ncsn.train.session gives Accelerate the accumulation as a
plugin (its Accelerator would otherwise take `ACCELERATE_GRADIENT_ACCUMULATION_STEPS` over the value
passed to it, in any launch) and, under DeepSpeed, writes all three into DeepSpeed's config. A value
the launcher was given (`accelerate launch --gradient_accumulation_steps / --gradient_clipping`,
which travel as `ACCELERATE_GRADIENT_ACCUMULATION_STEPS` / `ACCELERATE_GRADIENT_CLIPPING`, or the
same variables exported around any launcher; a DeepSpeed JSON file, `ACCELERATE_DEEPSPEED_CONFIG_FILE`)
and that differs is named with the run config's value in one warning line each, as
train.mixed_precision does for precision. "auto" is no request.

Compilation likewise: `accelerate launch --dynamo_backend B` (`ACCELERATE_DYNAMO_BACKEND`, which
Accelerate's Accelerator would apply to the model in `prepare`) is replaced by train.compile (the
network through torch.compile with Inductor, or eager), with one warning line where they differ.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..config import ConfigError, TrainConfig

__all__ = ["launcher_requests", "overridden_compile", "overridden_launcher_settings"]

_ENV = {"gradient_accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
        "gradient_clipping": "ACCELERATE_GRADIENT_CLIPPING"}


def launcher_requests(environ=os.environ) -> dict[str, tuple[float, str]]:
    """DeepSpeed key → (value, where it was given) for what the launcher asked explicitly ("auto" left out)."""
    asked = {}
    for key, variable in _ENV.items():
        value = environ.get(variable, "auto").strip().lower()
        if value not in ("", "auto", "none"):
            try:
                asked[key] = (float(value), f"the launcher's --{key} ({variable})")
            except ValueError:
                raise ConfigError(f"{variable}={environ[variable]!r} is not a number; unset it (train.* decides "
                                  "batch, accumulation and clipping) or launch with a number") from None
    file = environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    if file != "none" and Path(file).is_file():
        settings = json.loads(Path(file).read_text())
        for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                    "gradient_clipping"):
            if isinstance(settings.get(key), (int, float)) and not isinstance(settings.get(key), bool):
                asked[key] = (float(settings[key]), f"{key} in the DeepSpeed config {file}")
    return asked


def overridden_launcher_settings(train: TrainConfig, micro_batch: int, environ=os.environ) -> list[str]:
    """One warning line per launcher request that the run config overrides (empty when they agree)."""
    ours = {"train_batch_size": ("train.batch_size", train.batch_size),
            "train_micro_batch_size_per_gpu": ("the micro-batch per process (train.batch_size / processes / "
                                               "train.grad_accum)", micro_batch),
            "gradient_accumulation_steps": ("train.grad_accum", train.grad_accum),
            "gradient_clipping": ("train.grad_clip", train.grad_clip)}
    lines = []
    for key, (value, where) in launcher_requests(environ).items():
        name, mine = ours[key]
        if float(mine) != value:
            lines.append(f"warning: {name}={mine:g} overrides {where}, {value:g}; the run config decides batch, "
                         "accumulation and clipping: set train.* to change them")
    return lines


def overridden_compile(compiled: bool, environ=os.environ) -> list[str]:
    """The warning line when the launcher's --dynamo_backend asks for another compilation than the run's: `compiled`,
    whether the network runs through torch.compile with Inductor (train.compile, not under DeepSpeed)."""
    backend = environ.get("ACCELERATE_DYNAMO_BACKEND", "no").strip().lower() or "no"
    if backend == "no" or (compiled and backend == "inductor"):
        return []
    ours = "compiled with inductor (train.compile=true)" if compiled else "eagerly (train.compile=false, or DeepSpeed)"
    return [f"warning: the network runs {ours}, overriding the launcher's --dynamo_backend {backend} "
            "(ACCELERATE_DYNAMO_BACKEND); the run config decides compilation: set train.compile to change it"]
