"""Typed, frozen experiment configuration: YAML files plus `key.sub=value` overrides.

A config is a tree of frozen dataclasses. `load_config` reads a YAML file, applies
command-line overrides, checks every key and type, and validates ranges; any
mistake raises `ConfigError` naming the key and what would be valid.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "NoiseConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
]

SCHEDULES = ("geometric", "linear", "snr")
DATASETS = ("cifar10", "digits", "toy2d")


class ConfigError(ValueError):
    """A config key, type or value is wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class DataConfig:
    name: Literal["cifar10", "digits", "toy2d"] = "digits"
    data_root: str = "data"
    download: bool = False
    image_size: int = 16
    channels: int = 1
    toy_means: tuple[tuple[float, float], ...] = ((-5.0, -5.0), (5.0, 5.0))
    toy_weights: tuple[float, ...] = (0.2, 0.8)
    toy_std: float = 1.0
    toy_size: int = 10000

    def validate(self) -> None:
        _require(self.image_size >= 4, "image_size", "must be at least 4")
        _require(self.channels in (1, 3), "channels", "must be 1 or 3")
        if self.name == "cifar10":
            _require(self.channels == 3, "channels", "must be 3 for cifar10 (RGB)")
        _require(len(self.toy_means) >= 1, "toy_means", "needs at least one mean")
        _require(
            len(self.toy_weights) == len(self.toy_means),
            "toy_weights",
            f"needs one weight per mean ({len(self.toy_means)} means, {len(self.toy_weights)} weights)",
        )
        _require(all(w > 0 for w in self.toy_weights), "toy_weights", "must all be > 0")
        _require(self.toy_std > 0, "toy_std", "must be > 0")
        _require(self.toy_size >= 2, "toy_size", "must be at least 2")


@dataclass(frozen=True)
class NoiseConfig:
    """The σ ladder and the Langevin sampler: one ablation arm (see schedules.ARMS).

    `init`: 'gaussian' starts the chains from N(1/2, σ_1²I), the level-1 prior;
    'uniform' from U(0, 1) as NCSN/NCSNv2 did. The SNR arm needs 'gaussian' when
    σ_1 dwarfs the data spread: from U(0, 1) its first steps overshoot.
    """

    schedule: Literal["geometric", "linear", "snr"] = "geometric"
    sigma_max: float = 50.0
    sigma_min: float = 0.01
    num_levels: int = 232
    steps_per_level: int = 5
    step_lr: float = 6.2e-6
    snr: float = 0.16
    init: Literal["uniform", "gaussian"] = "gaussian"
    final_denoise: bool = True

    def validate(self) -> None:
        _require(self.sigma_min > 0, "sigma_min", "must be > 0")
        _require(self.sigma_max > 0, "sigma_max", "must be > 0")
        _require(
            self.sigma_min < self.sigma_max,
            "sigma_min",
            f"must be smaller than sigma_max ({self.sigma_min} >= {self.sigma_max})",
        )
        _require(self.num_levels >= 2, "num_levels", "must be at least 2 (L >= 2)")
        _require(self.steps_per_level >= 1, "steps_per_level", "must be at least 1")
        _require(self.step_lr > 0, "step_lr", "must be > 0")
        _require(self.snr > 0, "snr", "must be > 0")


@dataclass(frozen=True)
class ModelConfig:
    kind: Literal["unet", "mlp"] = "unet"
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = (8,)
    dropout: float = 0.0
    scale_by_sigma: bool = True
    mlp_hidden: int = 128
    mlp_depth: int = 3

    def validate(self) -> None:
        _require(self.base_channels >= 1, "base_channels", "must be >= 1")
        _require(len(self.channel_mults) >= 1, "channel_mults", "needs at least one level")
        _require(all(m >= 1 for m in self.channel_mults), "channel_mults", "must all be >= 1")
        _require(self.num_res_blocks >= 1, "num_res_blocks", "must be >= 1")
        _require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        _require(self.mlp_hidden >= 1, "mlp_hidden", "must be >= 1")
        _require(self.mlp_depth >= 1, "mlp_depth", "must be >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """The training loop; `batch_size` is the global batch of one optimizer step.

    Speed switches (same model, same checkpoints): `fused_optimizer` uses the fused
    Adam/AdamW kernels and decides on the device whether a step had non-finite
    values, so a step never waits for the GPU (false: the plain optimizer with
    host-side checks; DeepSpeed and fp16 always use those). `channels_last` stores
    activations NHWC; `compile` runs the network through torch.compile, falling
    back to eager with a warning when compiling fails.
    """

    seed: int = 0
    steps: int = 2000
    batch_size: int = 128
    grad_accum: int = 1
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_rate: float = 0.999
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    fused_optimizer: bool = True
    channels_last: bool = False
    compile: bool = False
    random_flip: bool = False
    log_every: int = 20
    sample_every: int = 500
    sample_images: int = 64
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    max_consecutive_skips: int = 20
    out_dir: str = "runs/debug"

    def validate(self) -> None:
        _require(self.steps >= 1, "steps", "must be >= 1")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        _require(self.lr > 0, "lr", "must be > 0")
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 turns clipping off)")
        _require(0.0 <= self.ema_rate < 1.0, "ema_rate", "must be in [0, 1)")
        for key in ("log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "max_consecutive_skips"):
            _require(getattr(self, key) >= 1, key, "must be >= 1")
        _require(self.sample_images >= 1, "sample_images", "must be >= 1")


@dataclass(frozen=True)
class EvalConfig:
    """Sample generation and scoring in a sweep: how many samples, in which shards, scored how.

    `extractor`: a torch-fidelity feature extractor name, '' for the data set's default
    (digits-classifier for digits, inception-v3-compat otherwise); `weights`: a local
    weights file for it, '' to let torch-fidelity download (needs the internet).
    `precision`, `channels_last`, `compile`: how the sampler runs the score network
    (bf16 autocast moves the samples within bf16 round-off, so shards record it;
    the Langevin state and its noise stay float32).
    """

    num_samples: int = 50_000
    shard_size: int = 1000
    sample_batch_size: int = 250
    batch_size: int = 200
    extractor: str = ""
    weights: str = ""
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    compile: bool = False

    def validate(self) -> None:
        _require(self.num_samples >= 2, "num_samples", "must be at least 2 (FID needs a covariance)")
        for key in ("shard_size", "sample_batch_size", "batch_size"):
            _require(getattr(self, key) >= 1, key, "must be >= 1")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        if self.model.kind == "mlp":
            _require(self.data.name == "toy2d", "model.kind", "'mlp' works on data.name=toy2d only; use 'unet'")
        if self.data.name == "toy2d":
            _require(self.model.kind == "mlp", "model.kind", "data.name=toy2d needs model.kind=mlp")


class _Invalid(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise _Invalid(key, message)


def config_from_dict(tree: Mapping[str, Any], overrides: Sequence[str] = ()) -> Config:
    """A Config from a nested dict (e.g. `config_to_dict` output saved in a checkpoint), plus overrides."""
    tree = {section: dict(values) if isinstance(values, Mapping) else values for section, values in tree.items()}
    for item in overrides:
        _apply_override(tree, item)
    return _build(Config, tree, prefix="")


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply `key.sub=value` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass a YAML file such as configs/debug.yaml")
        loaded = yaml.safe_load(path.read_text())
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
    for item in overrides:
        _apply_override(tree, item)
    return _build(Config, tree, prefix="")


def _apply_override(tree: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value, e.g. noise.sigma_max=50")
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def _build(cls: type, values: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config"
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix + str(key), str(key), list(fields)))
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, prefix + name + ".")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    config = cls(**kwargs)
    try:
        config.validate()
    except _Invalid as error:
        key = prefix + error.key
        raise ConfigError(f"{key}: {error}") from None
    return config


def _unknown_key_message(full_key: str, key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    section = full_key[: -len(key) - 1]
    where = f"keys in {section!r}" if section else "sections"
    return f"unknown config key {full_key!r}{hint}; valid {where}: {', '.join(valid)}"


_YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off/yes/on as booleans
            value = next((c for c in args if str(c).lower() in _YAML_BOOL_WORDS[value]), value)
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not a valid choice; choose one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({value!r})")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (typing.Union, types.UnionType):
        raise AssertionError(f"config field {key} uses a Union type, which the loader does not support")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise AssertionError(f"config field {key} has unsupported type {hint!r}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) of a config, for YAML/JSON output."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return {
        f.name: config_to_dict(getattr(config, f.name))
        if dataclasses.is_dataclass(getattr(config, f.name))
        else plain(getattr(config, f.name))
        for f in dataclasses.fields(config)
    }


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
