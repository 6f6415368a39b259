"""hpc_ncsn: score-based generative modeling (NCSN, NCSNv2) experiments on HPC clusters.

The public API, in pipeline order: config → data → schedules/planning → model →
loss → sampling → training → shards → generate → metrics → aggregate, and the sweep
(grid, pipeline) that launch/sweep.py drives. Heavy optional pieces (torchvision,
scikit-learn, matplotlib, torch-fidelity) are imported where they are used.
"""

__version__ = "0.1.0"

from .config import (
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    NoiseConfig,
    TrainConfig,
    config_to_yaml,
    load_config,
)
from .data import GaussianMixture, load_images, to_model_scale, to_uint8, toy_mixture
from .ema import EMA
from .loss import DSMLoss, dsm_loss, per_level_loss
from .model import MLPScore, UNet, build_score_model, count_parameters
from .planning import NoisePlan, max_pairwise_distance, plan_noise
from .sampling import SamplerPlan, annealed_langevin, initial_state, langevin, sample_normal, sample_uniform
from .schedules import ARMS, geometric_sigmas, ladder, linear_sigmas, ncsn_step_sizes, snr_step_size
from .speed import CompiledOrEager, NetworkSpeed, score_function
from .training import TrainingDiverged, load_ema_model, train
from .shards import ShardError, read_manifest, read_shard, validate_shard, validate_shards, write_shard
from .generate import generate
from .fid import FeatureStats, frechet_distance, inception_score, kernel_inception_distance
from .metrics import evaluate, extract_features, load_extractor, reference_statistics
from .grid import SweepSpec, plan
from .pipeline import run_task
from .aggregate import aggregate

__all__ = [
    "ARMS",
    "CompiledOrEager",
    "Config",
    "ConfigError",
    "DSMLoss",
    "DataConfig",
    "EMA",
    "EvalConfig",
    "FeatureStats",
    "GaussianMixture",
    "MLPScore",
    "ModelConfig",
    "NetworkSpeed",
    "NoiseConfig",
    "NoisePlan",
    "SamplerPlan",
    "ShardError",
    "SweepSpec",
    "TrainConfig",
    "TrainingDiverged",
    "UNet",
    "aggregate",
    "annealed_langevin",
    "build_score_model",
    "config_to_yaml",
    "count_parameters",
    "dsm_loss",
    "evaluate",
    "extract_features",
    "frechet_distance",
    "generate",
    "geometric_sigmas",
    "inception_score",
    "initial_state",
    "kernel_inception_distance",
    "ladder",
    "langevin",
    "linear_sigmas",
    "load_config",
    "load_ema_model",
    "load_extractor",
    "load_images",
    "max_pairwise_distance",
    "ncsn_step_sizes",
    "per_level_loss",
    "plan",
    "plan_noise",
    "read_manifest",
    "read_shard",
    "reference_statistics",
    "run_task",
    "sample_normal",
    "sample_uniform",
    "score_function",
    "snr_step_size",
    "to_model_scale",
    "to_uint8",
    "toy_mixture",
    "train",
    "validate_shard",
    "validate_shards",
    "write_shard",
]
