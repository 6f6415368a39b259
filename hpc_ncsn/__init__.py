"""hpc_ncsn: score-based generative modeling (NCSN, NCSNv2) experiments on HPC clusters.

The public API, in pipeline order: config → data → schedules/planning → model →
loss → sampling → training. Heavy optional pieces (torchvision, scikit-learn, matplotlib)
are imported where they are used.
"""

from .config import (
    Config,
    ConfigError,
    DataConfig,
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
from .training import TrainingDiverged, load_ema_model, train

__version__ = "0.1.0"

__all__ = [
    "ARMS",
    "Config",
    "ConfigError",
    "DSMLoss",
    "DataConfig",
    "EMA",
    "GaussianMixture",
    "MLPScore",
    "ModelConfig",
    "NoiseConfig",
    "NoisePlan",
    "SamplerPlan",
    "TrainConfig",
    "TrainingDiverged",
    "UNet",
    "annealed_langevin",
    "build_score_model",
    "config_to_yaml",
    "count_parameters",
    "dsm_loss",
    "geometric_sigmas",
    "initial_state",
    "ladder",
    "langevin",
    "linear_sigmas",
    "load_ema_model",
    "load_config",
    "load_images",
    "max_pairwise_distance",
    "ncsn_step_sizes",
    "per_level_loss",
    "plan_noise",
    "sample_normal",
    "sample_uniform",
    "snr_step_size",
    "to_model_scale",
    "to_uint8",
    "train",
    "toy_mixture",
]
