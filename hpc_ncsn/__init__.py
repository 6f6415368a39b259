"""hpc_ncsn: score-based generative modeling (NCSN, NCSNv2) experiments on HPC clusters.

The pipeline, stage by stage (docs/architecture.md):

    config  data → schedules, planning → model → loss → sampling        the science, pure functions
            train/      Accelerate/DeepSpeed loop, EMA, checkpoints      (checkpoint.py: the checkpoint format)
            samples/    generation into HDF5 shards                      (h5py only in samples/shards.py)
            evaluate/   FID/KID/IS from shards                           (torch-fidelity only here)
            sweep/      arm × seed grids on Slurm or locally, the table (submitit only here)
    cli/    every command, parsed and dispatched; train.py and launch/sweep.py call it

The names below are resolved lazily (PEP 562): `import hpc_ncsn` or
`import hpc_ncsn.config` does not import torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"  # the one place: pyproject.toml reads it, CHANGELOG.md names it, shards record it

# Public name → the module that defines it.
_PUBLIC = {
    "config": ["ARMS", "Config", "ConfigError", "DataConfig", "EvaluateConfig", "GenerateConfig", "ModelConfig",
               "NoiseConfig", "SamplerConfig", "TrainConfig", "config_from_dict", "config_to_yaml", "load_config"],
    "data": ["GaussianMixture", "load_images", "to_model_scale", "to_uint8", "toy_mixture"],
    "schedules": ["edm_sigmas", "geometric_sigmas", "ladder", "linear_sigmas", "ncsn_step_sizes", "snr_step_size"],
    "planning": ["NoisePlan", "max_pairwise_distance", "plan_noise"],
    "audit": ["AuditRecord", "UnstableSampler", "audit_arm", "audit_config"],
    "model": ["MLPScore", "UNet", "build_score_model", "count_parameters"],
    "loss": ["DSMLoss", "dsm_loss", "per_level_loss"],
    "heldout": ["common_grid", "heldout_dsm", "write_heldout_dsm"],
    "stats": ["compare_to_baseline", "paired_comparison", "welch_comparison"],
    "ema": ["EMA"],
    "rng": ["sample_normal", "sample_uniform"],
    "sampling": ["SamplerPlan", "annealed_langevin", "draw", "initial_state", "langevin", "sample", "sampling_ladder"],
    "solvers": ["ancestral", "probability_flow"],
    "network": ["CompiledOrEager", "NetworkSpeed", "score_function"],
    "checkpoint": ["load_ema_model", "resolve_checkpoint"],
    "pretrained": ["export_pretrained", "from_pretrained", "pretrained_config"],
    "train": ["Training", "TrainingDiverged", "train"],
    "samples.shards": ["ShardError", "read_manifest", "read_shard", "write_shard"],
    "samples.validation": ["validate_shard", "validate_shards", "verify_folder"],
    "samples.generate": ["generate"],
    "evaluate.scores": ["FeatureStats", "frechet_distance", "inception_score", "kernel_inception_distance"],
    "evaluate.fidelity": ["fid_infinity", "fidelity_diversity"],
    "evaluate.extractors": ["extract_features", "load_extractor"],
    "evaluate.evaluator": ["evaluate", "reference_statistics"],
    "sweep.plan": ["SweepSpec", "plan"],
    "sweep.aggregate": ["aggregate"],
}
_WHERE = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hpc_ncsn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
