"""Typed, frozen experiment configuration: YAML files plus `section.key=value` overrides.

A config is a tree of frozen dataclasses, one per pipeline stage:

    data       the training images (or the 2-D toy)
    noise      the σ ladder: its shape (geometric | linear), σ_1, σ_L and L (what the network is trained on)
    sampler    how it is sampled: the sampler (annealed Langevin, ancestral, ODE, EDM's Heun), its own
               ladder within the trained σ range (default: the training ladder), its constants,
               and how the network runs
    model      the score network
    train      the training loop
    generate   how many samples, in which shards, in which batches
    evaluate   the feature extractor that scores them

The ablation's arms are named presets of (noise.ladder, sampler.step_rule, further sampler keys),
see `ARMS`.
Only `data`, `noise`, `model` and `train` change the trained weights; a sweep shares a
training between cells that differ elsewhere.

`load_config` reads a YAML file, applies overrides and checks every key, type and
range; a mistake raises `ConfigError` naming the key and the fix. Building a section
in Python (`TrainConfig(steps=-1)`) is checked the same way. Files written before the
ladder and the sampler were separate sections (`noise.schedule`, `eval.*`) still load,
with a warning that says how to rewrite them.

This module imports only the standard library and PyYAML, so that reading a config
(and every `--help`) stays fast.

One concept, the config (its sections, their checks, loading, overrides, migration of old
keys), kept in one module so that every default lives in one place; hence its length.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import math
import reprlib
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

import yaml

from .errors import UserError

# Seeds are one 32-bit word of the sampler's counter-based generator's key (hpc_ncsn.rng: Philox4x32).
SEED_LIMIT = 2**32
# The network sees σ raw (its input x + σ·z, its output divided by σ, log σ in its embedding), in float32 or
# bf16 (8 exponent bits): within [1e-6, 1e6] the data in x + σ·z keeps at least 4 bits at the top σ
# (2^-24 · 1e6 ≈ 0.06), σ² and 1/σ² stay far inside the float range, and the levels are distinct numbers.
# NCSNv2 uses σ_1 up to 348 (FFHQ) and EDM σ_min = 0.002.
SIGMA_RANGE = (1e-6, 1e6)

__all__ = [
    "ARMS",
    "CONFIGS_DIR",
    "DEBUG_CONFIG",
    "SEED_LIMIT",
    "SIGMA_RANGE",
    "config_path",
    "config_reference",
    "Arm",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvaluateConfig",
    "GenerateConfig",
    "LegacyConfigWarning",
    "ModelConfig",
    "NoiseConfig",
    "SamplerConfig",
    "TrainConfig",
    "arm_of",
    "arm_overrides",
    "check_sampling_range",
    "config_from_dict",
    "config_to_dict",
    "config_to_yaml",
    "load_config",
]


class ConfigError(UserError, ValueError):
    """A config key, type or value is wrong; the message names the key and the fix."""


class LegacyConfigWarning(UserWarning):
    """A config uses a key of the old layout (noise.schedule, eval.*); it was translated."""


@dataclass(frozen=True)
class Arm:
    """One arm of the noise-schedule ablation: what is trained (the σ ladder) and how it is sampled
    (the Langevin step rule, plus `sampler`: further sampler keys, as (key, value) pairs)."""

    ladder: str
    step_rule: str
    sampler: tuple[tuple[str, Any], ...] = ()
    # Why the sampler audit (hpc_ncsn.audit) reports this arm's unsettled chain instead of refusing it: set for
    # the arms whose object of study is the linear ladder, whose wide last gaps NCSN's technique 1 predicts
    # cannot be crossed at the shared ε and T. Empty: an unsettled chain is a setting to fix, and is refused.
    unsettled_by_design: str = ""


_LINEAR_LADDER = "the linear ladder is what this arm tests (its last gaps are too wide for T steps at ε)"

# The ablation's arms. Every arm but linear samples the geometric ladder's network: a sweep trains it once.
ARMS = {
    "geometric": Arm(ladder="geometric", step_rule="ncsn"),
    "linear": Arm(ladder="linear", step_rule="ncsn", unsettled_by_design=_LINEAR_LADDER),
    "snr": Arm(ladder="geometric", step_rule="snr"),
    # The geometric network sampled on the linear ladder (same L, σ range, T, ε): the linear arm's sampling alone.
    "linear-sampled": Arm(ladder="geometric", step_rule="ncsn", sampler=(("ladder", "linear"),),
                          unsettled_by_design=_LINEAR_LADDER),
    # Karras et al. (2022) Algorithm 1: Heun on their ρ = 7 ladder, 18 levels (17 Heun steps and the step to 0: 35 NFE).
    "edm": Arm(ladder="geometric", step_rule="ncsn", sampler=(("kind", "edm"), ("ladder", "edm"), ("num_levels", 18))),
    # The variance-exploding SDE's reverse-diffusion predictor on the training ladder (L NFE), no corrector.
    "ancestral": Arm(ladder="geometric", step_rule="ncsn", sampler=(("kind", "ancestral"),)),
    # Score SDE's predictor-corrector (VE): the predictor above and one Langevin corrector step per level at r = snr.
    "pc": Arm(ladder="geometric", step_rule="snr", sampler=(("kind", "ancestral"), ("corrector_steps", 1))),
    # Euler steps of the probability-flow ODE on the training ladder (L NFE).
    "ode": Arm(ladder="geometric", step_rule="ncsn", sampler=(("kind", "ode"),)),
}


def _configs_dir() -> Path:
    """The shipped configs: hpc_ncsn/configs/ in an installed wheel (setup.py copies them there), the checkout's
    configs/ otherwise."""
    package = Path(__file__).resolve().parent
    return package / "configs" if (package / "configs").is_dir() else package.parent / "configs"


CONFIGS_DIR = _configs_dir()
# The config a command falls back to where it needs a file and is given none (the sweep: digits on a CPU).
DEBUG_CONFIG = CONFIGS_DIR / "debug.yaml"


def config_path(path: str | Path) -> Path:
    """`path` if it is a file; else, for a relative `configs/NAME` (or `NAME`) that the shipped configs hold, that
    file: `--config configs/fashion.yaml` works from any folder, with or without the checkout."""
    path = Path(path)
    if path.is_file() or path.is_absolute():
        return path
    shipped = CONFIGS_DIR.joinpath(*(path.parts[1:] if path.parts[:1] == ("configs",) else path.parts))
    return shipped if shipped.is_file() else path


def arm_overrides(arm: str) -> list[str]:
    """The overrides that select an arm: noise.ladder, sampler.step_rule and the arm's further sampler keys."""
    if arm not in ARMS:
        raise ConfigError(f"unknown arm {arm!r}; choose one of {', '.join(ARMS)}")
    found = ARMS[arm]
    return [f"noise.ladder={found.ladder}", f"sampler.step_rule={found.step_rule}",
            *(f"sampler.{key}={value}" for key, value in found.sampler)]


def arm_of(config: "Config") -> str | None:
    """The name of the arm a config runs, or None when its ladder, step rule and sampling keys are no named arm
    (the sampling keys, SamplerConfig.SAMPLING_KEYS, an arm does not name must be at their defaults)."""
    defaults = SamplerConfig()

    def identity(ladder: str, step_rule: str, sampler: Mapping[str, Any]) -> tuple:
        return ladder, step_rule, tuple(sampler.get(key, getattr(defaults, key)) for key in SamplerConfig.SAMPLING_KEYS)

    found = identity(config.noise.ladder, config.sampler.step_rule,
                     {key: getattr(config.sampler, key) for key in SamplerConfig.SAMPLING_KEYS})
    return next((name for name, arm in ARMS.items() if identity(arm.ladder, arm.step_rule, dict(arm.sampler)) == found),
                None)


class _Section:
    """A config section: fields are type-checked and validated when the dataclass is built."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self) -> None:
        fields, hints = _fields(type(self))
        for item in fields.values():
            value = getattr(self, item.name)
            coerced = _coerce(value, hints[item.name], f"{self.SECTION}.{item.name}")
            if coerced is not value:
                object.__setattr__(self, item.name, coerced)
        try:
            self.validate()
        except _Invalid as error:
            raise ConfigError(f"{self.SECTION}.{error.key}: {error}") from None

    def validate(self) -> None:
        """Range checks; raise through `_require`."""


@dataclass(frozen=True)
class DataConfig(_Section):
    SECTION: ClassVar[str] = "data"
    name: Literal["cifar10", "digits", "fashion_mnist", "folder", "mnist", "toy2d"] = "digits"
    data_root: str = "data"
    path: str = ""  # data.name=folder: a folder of PNG/JPEG images (searched recursively) or a .zip of them
    fit: Literal["crop", "exact"] = "crop"  # folder images: centre square resized to image_size, or already that size
    download: bool = False
    image_size: int = 16
    channels: int = 1
    toy_means: tuple[tuple[float, float], ...] = ((-5.0, -5.0), (5.0, 5.0))
    toy_weights: tuple[float, ...] = (0.2, 0.8)
    toy_std: float = 1.0
    toy_size: int = 10000

    def validate(self) -> None:
        _require(self.image_size >= 4, "image_size", "must be at least 4")
        _require(self.image_size <= 512, "image_size", "must be at most 512 (the data set is held on the device and "
                                                       "attention runs over H·W positions)")
        _require(self.channels in (1, 3), "channels", "must be 1 or 3")
        if self.name == "cifar10":
            _require(self.channels == 3, "channels", "must be 3 for cifar10 (RGB)")
        _require(self.name != "folder" or bool(self.path), "path", "data.name=folder needs data.path=FOLDER_OR_ZIP "
                                                                   "(PNG/JPEG images, searched recursively)")
        _require(len(self.toy_means) >= 1, "toy_means", "needs at least one mean")
        _require(
            len(self.toy_weights) == len(self.toy_means),
            "toy_weights",
            f"needs one weight per mean ({len(self.toy_means)} means, {len(self.toy_weights)} weights)",
        )
        _require(all(w > 0 for w in self.toy_weights), "toy_weights", "must all be > 0")
        _require(self.toy_std > 0, "toy_std", "must be > 0")
        _require(self.toy_size >= 2, "toy_size", "must be at least 2")


MAX_SHARD_BYTES = 4 << 30  # a shard's images, read whole (1,000 images of 512²×3 take 786 MB)
MAX_LR = 1.0  # a learning rate above it moves every weight by more than 1 in Adam's first step


@dataclass(frozen=True)
class NoiseConfig(_Section):
    """The σ ladder σ_1 > … > σ_L the network is trained on (and sampled along)."""

    SECTION: ClassVar[str] = "noise"
    ladder: Literal["geometric", "linear"] = "geometric"
    sigma_max: float = 50.0
    sigma_min: float = 0.01
    num_levels: int = 232

    def validate(self) -> None:
        _require(self.sigma_min > 0, "sigma_min", "must be > 0")
        _require(self.sigma_max > 0, "sigma_max", "must be > 0")
        _require(SIGMA_RANGE[0] <= self.sigma_min, "sigma_min", f"must be >= {SIGMA_RANGE[0]:g} (float32 training "
                                                               "divides by σ²: below it the first step is not finite)")
        _require(self.sigma_max <= SIGMA_RANGE[1], "sigma_max", f"must be <= {SIGMA_RANGE[1]:g} (float32 training "
                                                               "multiplies by σ²: above it the first step overflows)")
        _require(
            self.sigma_min < self.sigma_max,
            "sigma_min",
            f"must be smaller than sigma_max ({self.sigma_min} >= {self.sigma_max})",
        )
        _require(self.num_levels >= 2, "num_levels", "must be at least 2 (L >= 2)")
        _require(self.num_levels <= 10_000, "num_levels", "must be at most 10,000 (every level costs "
                                                          "sampler.steps_per_level network evaluations per sample; "
                                                          "NCSNv2 uses 232 on CIFAR-10)")


@dataclass(frozen=True)
class SamplerConfig(_Section):
    """How samples are drawn from the trained network: the sampler, its ladder, its constants, how the network runs.

    `kind`: 'langevin' is annealed Langevin dynamics (NCSN/NCSNv2), T = `steps_per_level`
    steps per level with the step rule `step_rule` ('ncsn': α_i = step_lr·σ_i²/σ_L², σ_L the
    sampling ladder's last level; step_lr 0 plans ε by NCSNv2's technique 4 for this T on the sampling
    ladder, so that an axis over steps_per_level keeps ε matched to T; 'snr':
    a per-sample step from the signal-to-noise ratio `snr`); 'ancestral' the reverse-diffusion
    predictor of the variance-exploding SDE, with `corrector_steps` Langevin corrector steps
    (step rule as above) per level (score SDE's predictor-corrector); 'ode' Euler steps of the
    probability-flow ODE; 'edm' Heun steps of it (Karras et al. 2022, Algorithm 1).
    `final_denoise`: end with the step to σ = 0, x + σ_L²·s_θ(x, σ_L) (every kind).

    The sampling ladder: `ladder` 'train' samples on the training ladder (noise.*); 'geometric',
    'linear' or 'edm' (ρ = `rho`) build another one with `num_levels` levels (0: noise.num_levels)
    from `sigma_max` to `sigma_min` (0: the trained range's end), which must lie within the trained
    range [noise.sigma_min, noise.sigma_max]: the network is conditioned on σ, but only there.

    `init`: 'gaussian' starts the chains from N(1/2, σ_1²I), the level-1 prior of the sampling
    ladder; 'uniform' from U(0, 1) as NCSN/NCSNv2 did (the SNR rule overshoots from there when σ_1
    dwarfs the data spread; the samplers other than langevin need 'gaussian').
    `precision`, `channels_last`, `compile`: how the network is evaluated
    (bf16 moves samples within its rounding, so shards record the precision in effect; the sampler's
    state and its noise stay float32); precision `auto` is bf16 where the device computes it
    natively, fp32 elsewhere.
    """

    SECTION: ClassVar[str] = "sampler"
    step_rule: Literal["ncsn", "snr"] = "ncsn"
    steps_per_level: int = 5
    step_lr: float = 6.2e-6
    snr: float = 0.16
    init: Literal["uniform", "gaussian"] = "gaussian"
    final_denoise: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "fp32"
    channels_last: bool = False
    compile: bool = False
    kind: Literal["langevin", "ancestral", "ode", "edm"] = "langevin"
    ladder: Literal["train", "geometric", "linear", "edm"] = "train"
    num_levels: int = 0
    sigma_max: float = 0.0
    sigma_min: float = 0.0
    rho: float = 7.0
    corrector_steps: int = 0

    # Keys of the sampling ladder and the sampler kind (issue 24); shards record them only where they differ
    # from these defaults, so that folders drawn before they existed stay valid (their samples are the same).
    SAMPLING_KEYS: ClassVar[tuple[str, ...]] = ("kind", "ladder", "num_levels", "sigma_max", "sigma_min", "rho",
                                                "corrector_steps")

    # The Langevin step's keys: what a sampler that takes no Langevin step never reads (`ignored_keys`).
    STEP_KEYS: ClassVar[tuple[str, ...]] = ("step_rule", "steps_per_level", "step_lr", "snr")

    def ignored_keys(self) -> frozenset[str]:
        """The keys (dotted: 'sampler.snr') this sampler never reads: changing any of them leaves every sample
        byte-identical, so sweep cells that differ only there share their samples. What each path of
        hpc_ncsn.sampling reads (`SamplerPlan.from_config`, `sample`):

        - langevin, step rule 'ncsn': α_i = step_lr·σ_i²/σ_L², T = steps_per_level steps (step_lr 0: planned
          from T); ignores `snr`;
        - langevin, 'snr': α from `snr` per sample and step, T steps; ignores `step_lr` (planned or not, unused);
        - ancestral with corrector_steps C > 0: each corrector step is a Langevin step of the rule above, so it
          ignores `snr` ('ncsn') or `step_lr` ('snr'), and `steps_per_level` unless the 'ncsn' rule plans
          step_lr from it (step_lr 0); with C = 0 it takes no Langevin step and ignores all of STEP_KEYS;
        - ode, edm: no Langevin step; ignore all of STEP_KEYS.

        Every sampler reads its ladder keys, `kind`, `final_denoise` and `init` (or refuses a change of them:
        ConfigError); how the network runs (`precision`, `channels_last`, `compile`) may move samples within
        rounding and is never ignored, nor is any key of the generate and evaluate sections. Pinned by sampling
        every path with every key changed (tests/test_sampling.py).
        """
        langevin = self.kind == "langevin" or (self.kind == "ancestral" and self.corrector_steps > 0)
        if not langevin:
            ignored = set(self.STEP_KEYS)
        elif self.step_rule == "snr":
            ignored = {"step_lr"} | ({"steps_per_level"} if self.kind == "ancestral" else set())
        else:
            ignored = {"snr"} | ({"steps_per_level"} if self.kind == "ancestral" and self.step_lr else set())
        return frozenset(f"{self.SECTION}.{key}" for key in ignored)

    def validate(self) -> None:
        _require(self.steps_per_level >= 1, "steps_per_level", "must be at least 1")
        _require(self.steps_per_level <= 10_000, "steps_per_level", "must be at most 10,000 (NCSN used 100, "
                                                                    "NCSNv2 5)")
        _require(self.step_lr >= 0, "step_lr", "must be > 0, or 0 for technique 4's ε at this steps_per_level "
                                               "(hpc-ncsn plan)")
        _require(self.snr > 0, "snr", "must be > 0")
        _require(self.num_levels == 0 or 2 <= self.num_levels <= 10_000, "num_levels",
                 "must be 0 (the training ladder's L) or in 2..10,000")
        _require(self.sigma_max >= 0, "sigma_max", "must be >= 0 (0: the trained noise.sigma_max)")
        _require(self.sigma_min >= 0, "sigma_min", "must be >= 0 (0: the trained noise.sigma_min)")
        _require(not (self.sigma_max and self.sigma_min) or self.sigma_min < self.sigma_max, "sigma_min",
                 f"must be smaller than sigma_max ({self.sigma_min} >= {self.sigma_max})")
        _require(self.rho > 0, "rho", "must be > 0 (Karras et al. use 7)")
        _require(0 <= self.corrector_steps <= 10_000, "corrector_steps", "must be in 0..10,000")
        _require(self.corrector_steps == 0 or self.kind == "ancestral", "corrector_steps",
                 f"only the ancestral sampler has a corrector (sampler.kind={self.kind}); set it to 0 or "
                 "sampler.kind=ancestral")
        for key in ("num_levels", "sigma_max", "sigma_min"):
            _require(self.ladder != "train" or getattr(self, key) == 0, key,
                     "changes the sampling ladder, but sampler.ladder=train samples on the training ladder: "
                     "also set sampler.ladder to geometric, linear or edm")
        _require(self.init == "gaussian" or self.kind == "langevin", "init",
                 f"the {self.kind} sampler starts from the level-1 marginal, which uniform is far from (only Langevin "
                 "steps pull a chain back); use sampler.init=gaussian")
        _require(self.ladder == "edm" or self.rho == 7.0, "rho", "shapes the edm ladder only; set "
                                                                 "sampler.ladder=edm or leave rho at 7")


@dataclass(frozen=True)
class ModelConfig(_Section):
    SECTION: ClassVar[str] = "model"
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
class TrainConfig(_Section):
    """The training loop; `batch_size` is the global batch of one optimizer step.

    Speed switches (same model, same checkpoints): `fused_optimizer` uses the fused
    Adam/AdamW kernels, which read the step's skip flag on the device, so a step never
    waits for the GPU (false: the plain optimizer, which reads the flag on the host).
    `channels_last` stores activations NHWC; `compile` runs the network through
    torch.compile, falling back to eager with a warning when compiling fails.
    `mixed_precision`: auto = what the launcher says (`accelerate launch --mixed_precision`
    or its config file), else bf16 where the device computes it natively (a GPU that has it,
    a CPU with AVX-512 BF16 or AMX) and fp32 otherwise; an explicit
    value wins over the launcher, with a warning when the two differ.
    `log_with`: experiment trackers through Accelerate, comma-separated (tensorboard, wandb,
    mlflow, ...); each gets what metrics.jsonl gets (the per-level losses as a few σ bins),
    plus the sample grids. `log_group`: the W&B group of the run ('': none; a sweep sets its
    folder's name); the run's name is its folder's, its W&B id is kept in the folder.
    `eval_every` > 0 keeps the EMA weights every eval_every steps and at the last step in
    snapshots/step-*/ema.pt (never rotated); a sweep scores each snapshot with
    `eval_samples` samples of its cell's sampler: FID over training and the table's best step.
    `heldout_examples` > 0 scores the EMA weights at the end of training by the DSM loss on that many
    held-out examples (hpc_ncsn.heldout; heldout_dsm.json in the run folder; 0: off; 250 × 20 network
    evaluations: about a minute for the Fashion-MNIST network on a 2-core CPU, seconds on a GPU) on 20 log-spaced σ
    from `heldout_sigma_max` down to `heldout_sigma_min` (0: the network's own noise.sigma_max / sigma_min;
    a sweep sets both to its widest range, so that every network is scored on one grid).
    """

    SECTION: ClassVar[str] = "train"
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
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
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
    log_with: str = ""
    log_group: str = ""
    eval_every: int = 0
    eval_samples: int = 500
    heldout_examples: int = 250
    heldout_sigma_max: float = 0.0
    heldout_sigma_min: float = 0.0
    init_from: str = ""  # start from these weights (an export folder, a checkpoint or a run folder): fine-tuning
    resume_from: str = ""  # resume this checkpoint folder (optimizer, counters and all) in a new train.out_dir
    out_dir: str = "runs/debug"

    def validate(self) -> None:
        _require(bool(self.out_dir.strip()), "out_dir", "must name a folder, e.g. runs/debug ('' would write into "
                                                      "the current folder)")
        _require(self.steps >= 0, "steps", "must be >= 0 (0 saves the initialised network as step 0: the untrained "
                                           "anchor)")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        _require(0 <= self.seed < SEED_LIMIT, "seed", "must be in [0, 2**32) (the samplers' Philox key): a seed out "
                                                     "of it would train every step and fail at the first sample grid")
        _require(0 < self.lr <= MAX_LR, "lr", f"must be in (0, {MAX_LR:g}] (Adam moves each weight by about lr per "
                                              "step)")
        _require(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        _require(self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _require(self.grad_clip >= 0, "grad_clip", "must be >= 0 (0 turns clipping off)")
        _require(0.0 <= self.ema_rate < 1.0, "ema_rate", "must be in [0, 1)")
        for key in ("log_every", "sample_every", "checkpoint_every", "keep_checkpoints", "max_consecutive_skips"):
            _require(getattr(self, key) >= 1, key, "must be >= 1")
        _require(1 <= self.sample_images <= 1024, "sample_images", "must be in 1..1024 (the training's sample grid)")
        _require(self.eval_every >= 0, "eval_every", "must be >= 0 (0: no snapshots for FID over training)")
        _require(self.eval_samples >= 10, "eval_samples", "must be at least 10 (the Inception Score's 10 splits)")
        _require(not (self.init_from and self.resume_from), "init_from", "give train.init_from (new training from "
                 "these weights) or train.resume_from (continue that training), not both")
        _require(self.heldout_examples >= 0, "heldout_examples", "must be >= 0 (0: no held-out DSM loss at the end)")
        for key in ("heldout_sigma_max", "heldout_sigma_min"):
            _require(getattr(self, key) >= 0, key, "must be >= 0 (0: the network's own trained end of the range)")
            _require(getattr(self, key) == 0 or SIGMA_RANGE[0] <= getattr(self, key) <= SIGMA_RANGE[1], key,
                     f"must be 0 or in [{SIGMA_RANGE[0]:g}, {SIGMA_RANGE[1]:g}] (noise.sigma_min's and sigma_max's "
                     "bounds)")
        _require(not (self.heldout_sigma_max and self.heldout_sigma_min)
                 or self.heldout_sigma_min < self.heldout_sigma_max, "heldout_sigma_min",
                 "must be below train.heldout_sigma_max")
        _require(not self.log_with.strip() or all(name.strip() for name in self.log_with.split(",")), "log_with",
                 "must be '' (metrics.jsonl only) or tracker names separated by commas, e.g. tensorboard,wandb")


@dataclass(frozen=True)
class GenerateConfig(_Section):
    """Samples 0..num_samples-1 in shards of `shard_size` (the unit of resumption), `batch_size` per network call."""

    SECTION: ClassVar[str] = "generate"
    num_samples: int = 50_000
    shard_size: int = 1000
    batch_size: int = 250

    def validate(self) -> None:
        _require(self.num_samples >= 2, "num_samples", "must be at least 2 (FID needs a covariance)")
        _require(self.shard_size >= 1, "shard_size", "must be >= 1")
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")


@dataclass(frozen=True)
class EvaluateConfig(_Section):
    """How samples are scored. `extractor`: a torch-fidelity feature extractor name, '' for the
    data set's default (digits-classifier for digits, inception-v3-compat otherwise); `weights`:
    a local weights file for it (for Inception: torch-fidelity's .pth or NVIDIA's TorchScript
    inception-2015-12-05.pt, with or without classifier), '' for the weights `hpc-ncsn fetch
    inception` placed in the cache, else torch-fidelity's download (needs the internet);
    `reference`: the split of the data set whose statistics the samples are compared with,
    `reference_size`: how many of its images (a fixed seeded subset), 0 for all;
    `kid_subsets` × `kid_subset_size`: KID's random subsets (torch-fidelity's defaults),
    `is_splits`: the splits of the Inception Score (its standard 10);
    `fidelity`: precision and recall (k = `precision_k`, Kynkäänniemi et al. 2019) and density and
    coverage (k = `density_k`, Naeem et al. 2020) on seeded subsets of `fidelity_size` samples and as
    many reference images (capped at the smaller set, so both sides are equal, as in both papers);
    `fid_infinity`: FID∞ (Chong and Forsyth 2020) fitted to FID at `fid_infinity_points` subset sizes
    from N/5 to N. All from the features the FID uses (hpc_ncsn.evaluate.fidelity)."""

    SECTION: ClassVar[str] = "evaluate"
    extractor: str = ""
    weights: str = ""
    batch_size: int = 200
    reference: Literal["train", "test"] = "train"  # the data split the samples are compared with
    reference_size: int = 0  # images of that split in the reference statistics (a seeded subset); 0 = all
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # capped at the number of samples
    is_splits: int = 10
    fidelity: bool = True  # precision, recall, density, coverage
    fidelity_size: int = 10_000  # rows per side (seeded subsets); the cost grows as its square
    precision_k: int = 3
    density_k: int = 5
    fid_infinity: bool = True
    fid_infinity_points: int = 5  # FIDs fitted; each one costs about one FID

    def validate(self) -> None:
        _require(self.batch_size >= 1, "batch_size", "must be >= 1")
        _require(self.reference_size == 0 or self.reference_size >= 2, "reference_size",
                 "must be 0 (the whole split) or at least 2")
        _require(self.kid_subsets >= 1, "kid_subsets", "must be >= 1")
        _require(self.kid_subset_size >= 2, "kid_subset_size", "must be >= 2 (KID compares pairs)")
        _require(self.is_splits >= 1, "is_splits", "must be >= 1")
        _require(self.precision_k >= 1, "precision_k", "must be >= 1 (the k-th nearest neighbour)")
        _require(self.density_k >= 1, "density_k", "must be >= 1 (the k-th nearest neighbour)")
        _require(self.fidelity_size > max(self.precision_k, self.density_k), "fidelity_size",
                 f"must exceed precision_k and density_k ({max(self.precision_k, self.density_k)}): each point needs "
                 "that many neighbours")
        _require(self.fid_infinity_points >= 2, "fid_infinity_points", "must be >= 2 (a line needs two points)")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if not isinstance(value, item.default_factory):
                raise ConfigError(f"{item.name} must be a {item.default_factory.__name__}, got {_shown(value)}")
        if self.model.kind == "unet" and self.data.name != "toy2d":
            self._check_unet()
        if self.model.kind == "mlp" and self.data.name != "toy2d":
            raise ConfigError("model.kind: 'mlp' works on data.name=toy2d only; use 'unet'")
        if self.data.name == "toy2d" and self.model.kind != "mlp":
            raise ConfigError("model.kind: data.name=toy2d needs model.kind=mlp")
        check_sampling_range(self.noise, self.sampler)
        check_heldout_range(self.noise, self.train)
        shard_bytes = self.generate.shard_size * self.data.image_size ** 2 * self.data.channels
        if shard_bytes > MAX_SHARD_BYTES:
            raise ConfigError(f"generate.shard_size: {self.generate.shard_size} images of {self.data.image_size}²×"
                              f"{self.data.channels} take {shard_bytes:,} bytes, more than the {MAX_SHARD_BYTES:,} a "
                              "shard may hold (each is read whole); use smaller shards")

    @property
    def arm(self) -> str | None:
        return arm_of(self)

    def _check_unet(self) -> None:
        """What the U-Net's down path needs of the image size, checked before any file is written."""
        levels = len(self.model.channel_mults)
        factor = 2 ** (levels - 1)
        if self.data.image_size % factor:
            raise ConfigError(f"data.image_size: {self.data.image_size} must be divisible by {factor} for "
                              f"model.channel_mults={list(self.model.channel_mults)} ({levels} resolutions, halved "
                              f"{levels - 1} times); choose a multiple of {factor} or fewer channel_mults")
        resolutions = [self.data.image_size // 2**k for k in range(levels)]
        unknown = sorted(set(self.model.attn_resolutions) - set(resolutions))
        if unknown:
            raise ConfigError(f"model.attn_resolutions: {unknown} do not occur in this U-Net; its resolutions "
                              f"are {resolutions} (data.image_size halved per channel_mults level)")


def check_heldout_range(noise: NoiseConfig, train: TrainConfig) -> None:
    """Refuse a held-out σ grid whose ends, with 0 resolved to the trained ends, are not ordered."""
    high = train.heldout_sigma_max or noise.sigma_max
    low = train.heldout_sigma_min or noise.sigma_min
    if not low < high:
        raise ConfigError(f"train.heldout_sigma_min: {low} is not below the held-out grid's top σ {high} "
                          "(train.heldout_sigma_max, or noise.sigma_max when it is 0); lower it or set both")


def check_sampling_range(noise: NoiseConfig, sampler: SamplerConfig) -> None:
    """Refuse a sampling ladder that leaves the trained σ range [noise.sigma_min, noise.sigma_max]."""
    low, high = noise.sigma_min, noise.sigma_max
    for key in ("sigma_max", "sigma_min"):
        value = getattr(sampler, key)
        if value and not low <= value <= high:
            raise ConfigError(f"sampler.{key}: {value} is outside the trained range [{low}, {high}] "
                              "(noise.sigma_min..noise.sigma_max), where the network never saw σ; choose a value "
                              f"within it, or 0 for the trained noise.{key}")
    top, bottom = sampler.sigma_max or high, sampler.sigma_min or low
    if not bottom < top:
        raise ConfigError(f"sampler.sigma_min: the sampling ladder would run from {top} down to {bottom}; "
                          "choose sampler.sigma_min below sampler.sigma_max (or 0 for noise.sigma_min)")


class _Invalid(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise _Invalid(key, message)


# Loading -------------------------------------------------------------------------------------

def config_from_dict(tree: Mapping[str, Any], overrides: Sequence[str] = (), *, source: str = "") -> Config:
    """A Config from a nested dict (a checkpoint's, a sweep's), plus `section.key=value` overrides."""
    if not isinstance(tree, Mapping):
        raise ConfigError(f"{source or 'the config'} must hold a mapping of sections, got {type(tree).__name__}")
    tree = {section: dict(values) if isinstance(values, Mapping) else values for section, values in tree.items()}
    tree = _migrate(tree, source)
    for item in overrides:
        _apply_override(tree, item)
    return _build(Config, tree, prefix="")


MAX_CONFIG_BYTES = 1 << 20  # a config file; the project's are a few KiB
MAX_YAML_NODES = 100_000  # values in a config once its aliases (*name) are expanded; the project's have ~100
SHOWN_CHARS = 200  # of a value in an error message


def _shown(value: Any) -> str:
    """`value`'s repr for an error message: at most SHOWN_CHARS characters, built without expanding it whole."""
    shortener = reprlib.Repr()
    shortener.maxlevel, shortener.maxstring, shortener.maxother, shortener.maxlong = 3, 80, 80, 40
    shortener.maxlist = shortener.maxtuple = shortener.maxdict = shortener.maxset = 8
    short = shortener.repr(value)
    return short if len(short) <= SHOWN_CHARS else short[:SHOWN_CHARS] + "…"


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply `section.key=value` overrides."""
    tree: Any = {}
    if path is not None:
        path = config_path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass a YAML file such as configs/debug.yaml")
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is {path.stat().st_size:,} bytes, more than the "
                              f"{MAX_CONFIG_BYTES:,} a config may have; pass the config itself (a few KiB)")
        try:
            tree = yaml.load(path.read_text(), Loader=_StrictLoader)
        except RecursionError:
            raise ConfigError(f"config file {path}: nested too deeply to be a config; fix the YAML there") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(f"config file {path}{where}: {problem}; fix the YAML there") from None
        if tree is None:
            tree = {}
    return config_from_dict(tree, overrides, source=str(path) if path else "")


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the second would silently win), and a
    document of more than MAX_YAML_NODES values with its aliases expanded (an alias bomb: a few hundred bytes
    whose nested aliases stand for billions of values)."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        size = _expanded_size(node, {})
        if size > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(None, None, f"its aliases (*name) expand to {size:,} values, more than "
                                              f"the {MAX_YAML_NODES:,} a config may have", node.start_mark)
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many values `node` stands for with every alias expanded (each shared node counted once per use)."""
    if id(node) not in sizes:
        sizes[id(node)] = 0  # a node inside itself (a recursive alias) adds nothing more
        children = node.value if isinstance(node, yaml.SequenceNode) else (
            [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) else [])
        sizes[id(node)] = 1 + sum(_expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def _no_duplicate_keys(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


# The layout before the ladder and the sampler were separate sections: old key → new key.
_LEGACY_KEYS = {
    **{f"noise.{key}": f"sampler.{key}" for key in ("steps_per_level", "step_lr", "snr", "init", "final_denoise")},
    "eval.num_samples": "generate.num_samples",
    "eval.shard_size": "generate.shard_size",
    "eval.sample_batch_size": "generate.batch_size",
    "eval.batch_size": "evaluate.batch_size",
    "eval.extractor": "evaluate.extractor",
    "eval.weights": "evaluate.weights",
    "eval.precision": "sampler.precision",
    "eval.channels_last": "sampler.channels_last",
    "eval.compile": "sampler.compile",
}


def _legacy_assignments(key: str, value: Any) -> list[tuple[str, Any]] | None:
    """The new (key, value) pairs of an old key, or None when `key` is not an old one."""
    if key == "noise.schedule":
        arm = ARMS.get(value) if isinstance(value, str) else None
        if arm is None:
            raise ConfigError(f"noise.schedule: {_shown(value)} is not a valid choice; choose one of "
                              f"{', '.join(ARMS)} "
                              "(the arms now set noise.ladder and sampler.step_rule)")
        return [("noise.ladder", arm.ladder), ("sampler.step_rule", arm.step_rule),
                *((f"sampler.{key}", value) for key, value in arm.sampler)]
    if key in _LEGACY_KEYS:
        return [(_LEGACY_KEYS[key], value)]
    if key.startswith("eval."):
        return None  # an unknown eval.* key: _build names it
    return None


def _migrate(tree: dict[str, Any], source: str) -> dict[str, Any]:
    """Translate old-layout keys of a config tree into the new sections (with a warning)."""
    moved = []
    for section in ("noise", "eval"):
        values = tree.get(section)
        if not isinstance(values, dict):
            continue
        for key in list(values):
            assignments = _legacy_assignments(f"{section}.{key}", values[key])
            if assignments is None:
                continue
            value = values.pop(key)
            for new_key, new_value in assignments:
                new_section, name = new_key.split(".")
                target = tree.setdefault(new_section, {})
                if not isinstance(target, dict):
                    raise ConfigError(f"{new_section} must be a mapping of keys, got {_shown(target)}")
                if name in target and target[name] != new_value:
                    raise ConfigError(f"{source or 'the config'} sets both {section}.{key} (old layout) and "
                                      f"{new_key}; keep only {new_key}")
                target[name] = new_value
            moved.append(f"{section}.{key} → {', '.join(k for k, _ in assignments)}")
        if section == "eval" and not values:
            tree.pop("eval")
    if moved:
        fix = (f"rewrite it with: hpc-ncsn config --config {source} > NEW.yaml" if source.endswith((".yaml", ".yml"))
               else "use the new keys")
        warnings.warn(f"{source or 'config'} uses the old layout ({'; '.join(moved)}); read as the new keys, "
                      f"{fix}", LegacyConfigWarning, stacklevel=3)
    return tree


@functools.lru_cache(maxsize=1 << 16)
def _override_value(raw: str) -> Any:
    """An override's value as YAML reads it (parsed once per text: a sweep applies the same few to every cell)."""
    return yaml.safe_load(raw)


def _apply_override(tree: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {_shown(item)} must look like section.key=value, e.g. noise.sigma_max=50")
    value = copy.deepcopy(_override_value(raw)) if raw.strip() else ""
    assignments = _legacy_assignments(key, value)
    if assignments is not None:
        warnings.warn(f"override {key} is of the old layout; read as "
                      f"{', '.join(f'{k}={v}' for k, v in assignments)}", LegacyConfigWarning, stacklevel=3)
    for key, value in assignments or [(key, value)]:
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {_shown(item)}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value


@functools.cache
def _fields(cls: type) -> tuple[dict[str, dataclasses.Field], dict[str, Any]]:
    """A section's fields and their resolved type hints, computed once per class (resolving the hints costs
    milliseconds, and a sweep of thousands of cells builds a config per cell)."""
    return {f.name: f for f in dataclasses.fields(cls)}, typing.get_type_hints(cls)


@functools.cache
def _nested(cls: type) -> frozenset[str]:
    """The fields of `cls` that are sections (dataclasses) themselves."""
    return frozenset(name for name, hint in _fields(cls)[1].items() if dataclasses.is_dataclass(hint))


def _build(cls: type, values: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the config"
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys, got {_shown(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    fields, hints = _fields(cls)
    for key in values:
        if key not in fields:
            raise ConfigError(_unknown_key_message(prefix + str(key), str(key), list(fields)))
    key = (cls, _key(values)) if issubclass(cls, _Section) else None
    if key is not None and key[1] is not None and key in _BUILT:
        return _BUILT[key]  # a section is immutable: the cells of a sweep share the ones they have in common
    nested = _nested(cls)
    kwargs = {name: _build(hints[name], value, prefix + name + ".") if name in nested
              else _coerce(value, hints[name], prefix + name) for name, value in values.items()}
    built = cls(**kwargs)
    if key is not None and key[1] is not None:
        if len(_BUILT) >= 4096:
            _BUILT.clear()
        _BUILT[key] = built
    return built


_BUILT: dict[tuple, Any] = {}  # validated sections by (class, their values)


def _key(values: Mapping[str, Any]) -> str | None:
    """A section's values as a cache key that tells apart what the loader tells apart (1, 1.0, true and "1" differ);
    None for values that are not plain JSON data."""
    try:
        return json.dumps(values, sort_keys=True)
    except (TypeError, ValueError):
        return None


def _unknown_key_message(full_key: str, key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    section = full_key[: -len(key) - 1]
    where = f"keys in {section!r}" if section else "sections"
    return f"unknown config key {_shown(full_key)}{hint}; valid {where}: {', '.join(valid)}"


_YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """`value` as the field type `hint` (int → float, list → tuple), or ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off/yes/on as booleans
            value = next((c for c in args if str(c).lower() in _YAML_BOOL_WORDS[value]), value)
        if value not in args:
            raise ConfigError(f"{key}: {_shown(value)} is not a valid choice; choose one of "
                              f"{', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {_shown(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            items = tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        elif len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)} ({_shown(value)})")
        else:
            items = tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return value if isinstance(value, tuple) and all(a is b for a, b in zip(items, value)) else items
    if origin in (typing.Union, types.UnionType):
        raise AssertionError(f"config field {key} uses a Union type, which the loader does not support")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {_shown(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {_shown(value)}")
    if hint is float:
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            if not math.isfinite(number):
                raise ConfigError(f"{key}: expected a finite number, got {_shown(value)}")
            return value if type(value) is float else float(number)
        raise ConfigError(f"{key}: expected a number, got {_shown(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {_shown(value)}")
    raise AssertionError(f"config field {key} has unsupported type {hint!r}")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) of a config, for YAML/JSON output."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    nested = _nested(type(config))
    return {name: config_to_dict(getattr(config, name)) if name in nested else plain(getattr(config, name))
            for name in _fields(type(config))[0]}


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def config_reference(width: int = 88) -> str:
    """Every section and key with its default (and its choices), for `train.py --help`."""
    import textwrap

    lines = []
    for section in dataclasses.fields(Config):
        cls = section.default_factory
        hints = typing.get_type_hints(cls)
        defaults = config_to_dict(cls())
        entries = []
        for item in dataclasses.fields(cls):
            entry = f"{item.name}={json_like(defaults[item.name])}"
            if typing.get_origin(hints[item.name]) is Literal:
                entry += f"\N{NO-BREAK SPACE}({'|'.join(str(choice) for choice in typing.get_args(hints[item.name]))})"
            entries.append(entry)
        lines += textwrap.wrap("  ".join(entries), width, initial_indent=f"  {section.name + ':':<10}",
                               subsequent_indent=" " * 12, break_on_hyphens=False)
    return "\n".join(lines).replace("\N{NO-BREAK SPACE}", " ")  # a key stays on one line with its choices


def json_like(value: Any) -> str:
    """How a value is written in an override: true/false, [1,2], quotes only around an empty string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ",".join(json_like(item) for item in value) + "]"
    if value == "":
        return "''"
    return str(value)
