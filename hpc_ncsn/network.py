"""How the score network is called: torch.compile with a safe fallback, channels_last, bf16 autocast.

These switches change speed, not the model: the weights, their names and their
checkpoints are the same with or without them (torch.compile wraps the module
without renaming its parameters). Numbers move only within the precision asked
for; tests/test_network.py holds the optimized paths to the fp32 eager baseline.

- `CompiledOrEager(module)`: calls torch.compile's wrapper of `module`; when
  compiling fails (no C++ compiler or Triton, an unsupported op, a backend error)
  it warns once with the reason and runs the eager module from then on. Errors
  of the model itself (a wrong input shape) are raised as they are.
- `NetworkSpeed` / `score_function`: the callable the Langevin sampler evaluates,
  with the network in bf16 autocast and/or channels_last and/or compiled, and
  float32 scores out (the sampler's state stays float32).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = ["PRECISIONS", "CompiledOrEager", "NetworkSpeed", "autocast_dtype", "native_bf16", "network_call",
           "score_function", "to_channels_last"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes in bf16 natively: a CUDA GPU that supports it, or an x86 CPU with AVX-512 BF16
    or AMX-BF16 instructions (oneDNN's bf16 convolutions run there at about twice the fp32 rate; on other CPUs
    bf16 is emulated and slower than fp32). What `auto` precisions resolve by."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # public since torch 2.12
    if capabilities is not None:
        found = capabilities()
        return bool(found.get("avx512_bf16") or found.get("amx_bf16"))
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def resolve_precision(asked: str, native: bool) -> str:
    """A sampler precision with `auto` resolved: bf16 where the device computes it natively (`native`), else fp32."""
    if asked == "auto":
        return "bf16" if native else "fp32"
    autocast_dtype(asked)
    return asked


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision name ('fp32' → None: no autocast)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """4-D tensors in channels_last memory order (NHWC strides, same shape); others unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


class CompiledOrEager:
    """`module` through torch.compile, or eagerly once compiling has failed (with a warning naming why).

    `enabled=False` runs the module eagerly. `backend`/`mode` go to torch.compile.
    `fallback_reason` holds the compile error after a fallback, None otherwise.
    """

    def __init__(self, module: nn.Module, *, enabled: bool = True, backend: str | Callable = "inductor",
                 mode: str | None = None, label: str = "score network"):
        self.module = module
        self.label = label
        self.compiled = torch.compile(module, backend=backend, mode=mode) if enabled else None
        self.fallback_reason: str | None = None

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args, **kwargs):
        if self.compiled is None:
            return self.module(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        # torch has no public base class for compile errors; torch._dynamo.exc's is the one every backend
        # failure (Inductor, Triton, a custom backend) is wrapped in. tests/test_network.py checks both sides.
        except torch._dynamo.exc.TorchDynamoException as error:
            self.compiled = None
            cause = getattr(error, "inner_exception", None) or error  # a backend's own error, when it raised one
            first_line = (str(cause).strip().splitlines() or [""])[0][:300]
            self.fallback_reason = f"{type(cause).__name__}: {first_line}"
            warnings.warn(f"torch.compile of the {self.label} failed ({self.fallback_reason}); running it eagerly "
                          "from now on (set compile=false to skip the attempt)", RuntimeWarning, stacklevel=2)
            return self.module(*args, **kwargs)


@dataclass(frozen=True)
class NetworkSpeed:
    """How the sampler runs the network: autocast precision, channels_last, torch.compile."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self):
        autocast_dtype(self.precision)

    @classmethod
    def from_sampler(cls, sampler, device: torch.device) -> "NetworkSpeed":
        """The network settings of a `SamplerConfig` (sampler.precision, channels_last, compile) on `device`,
        precision `auto` resolved there."""
        return cls(resolve_precision(sampler.precision, native_bf16(device)), sampler.channels_last, sampler.compile)

    def attrs(self) -> dict:
        """What shards record: the precision changes the samples, the other two only the speed."""
        return {"network_precision": self.precision}


def network_call(model: nn.Module, *, channels_last: bool = False, compile: bool = False,
                 label: str = "score network") -> Callable:
    """model(x, σ) with x made channels_last when asked, through `CompiledOrEager`.

    For channels_last the model's own weights must be channels_last already
    (`model.to(memory_format=torch.channels_last)`, done before an optimizer holds them).
    """
    network = CompiledOrEager(model, enabled=compile, label=label)

    def call(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return network(to_channels_last(x) if channels_last else x, sigma)

    call.network = network
    return call


def score_function(model: nn.Module, speed: NetworkSpeed = NetworkSpeed()) -> Callable:
    """s(x, σ) for the sampler: `model` run as `speed` says, scores in the dtype and layout of x.

    The model is put in channels_last in place when asked (its weights keep their values).
    """
    dtype = autocast_dtype(speed.precision)
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)
    network = network_call(model, channels_last=speed.channels_last, compile=speed.compile,
                           label="score network (sampling)")

    def score(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = network(x, sigma)
        return out.to(dtype=x.dtype, memory_format=torch.contiguous_format)

    score.network = network.network
    return score
