import dataclasses
import sys
import subprocess
from pathlib import Path

import pytest
import yaml

from hpc_ncsn.config import (
    Config,
    ConfigError,
    LegacyConfigWarning,
    NoiseConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    config_to_yaml,
    load_config,
)

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_load_and_are_frozen():
    config = load_config()
    assert config == Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.noise.sigma_max = 1.0


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path, tmp_path):
    config = load_config(path)
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(config_to_yaml(config))
    assert load_config(dumped) == config


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"noise": {"sigma_max": 10, "num_levels": 20}, "data": {"name": "digits"}}))
    config = load_config(path, ["noise.num_levels=30", "sampler.step_rule=snr", "model.channel_mults=[1,2,4]",
                                "sampler.step_lr=2e-5", "sampler.final_denoise=false"])
    assert config.noise.sigma_max == 10.0 and isinstance(config.noise.sigma_max, float)
    assert config.noise.num_levels == 30 and config.sampler.step_rule == "snr" and config.arm == "snr"
    assert config.model.channel_mults == (1, 2, 4)
    assert config.sampler.step_lr == 2e-5 and config.sampler.final_denoise is False
    assert config_to_dict(config)["model"]["channel_mults"] == [1, 2, 4]


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("noise.sigma_mx=3", r"unknown config key 'noise.sigma_mx' \(did you mean 'sigma_max'\?\); valid keys in 'noise': ladder, sigma_max"),
        ("nois.sigma_max=3", r"unknown config key 'nois' \(did you mean 'noise'\?\); valid sections: data, noise, sampler, model, train, generate, evaluate"),
        ("noise.sigma_max=-1", r"noise.sigma_max: must be > 0"),
        ("noise.sigma_min=0", r"noise.sigma_min: must be > 0"),
        ("noise.sigma_min=60", r"noise.sigma_min: must be smaller than sigma_max"),
        ("noise.num_levels=1", r"noise.num_levels: must be at least 2"),
        ("noise.num_levels=2.5", r"noise.num_levels: expected an integer, got 2.5"),
        ("noise.num_levels=true", r"noise.num_levels: expected an integer"),
        ("noise.sigma_max=big", r"noise.sigma_max: expected a number, got 'big'"),
        ("noise.ladder=cosine", r"noise.ladder: 'cosine' is not a valid choice; choose one of geometric, linear"),
        ("sampler.step_rule=adaptive", r"sampler.step_rule: 'adaptive' is not a valid choice; choose one of ncsn, snr"),
        ("noise.schedule=cosine", r"noise.schedule: 'cosine' is not a valid choice; choose one of geometric, linear, snr"),
        ("sampler.final_denoise=1", r"sampler.final_denoise: expected true or false"),
        ("noise.sigma_max=inf", r"noise.sigma_max: expected a finite number, got .inf"),
        ("train.lr=.nan", r"train.lr: expected a finite number"),
        ("sampler.step_lr=-1e-5", r"sampler.step_lr: must be > 0, or 0 for technique 4"),
        ("generate.num_samples=1", r"generate.num_samples: must be at least 2"),
        ("evaluate.kid_subset_size=1", r"evaluate.kid_subset_size: must be >= 2"),
        ("evaluate.is_splits=0", r"evaluate.is_splits: must be >= 1"),
        ("evaluate.precision_k=0", r"evaluate.precision_k: must be >= 1"),
        ("evaluate.density_k=0", r"evaluate.density_k: must be >= 1"),
        ("evaluate.fidelity_size=5", r"evaluate.fidelity_size: must exceed precision_k and density_k \(5\)"),
        ("evaluate.fid_infinity_points=1", r"evaluate.fid_infinity_points: must be >= 2"),
        ("evaluate.fidelity=maybe", r"evaluate.fidelity: expected true or false"),
        ("evaluate.fid_infinity=1", r"evaluate.fid_infinity: expected true or false"),
        ("noise.num_levels=100000", r"noise.num_levels: must be at most 10,000"),
        ("data.image_size=4096", r"data.image_size: must be at most 512"),
        ("data.image_size=15", r"data.image_size: 15 must be divisible by 2 for model.channel_mults=\[1, 2\]"),
        ("model.attn_resolutions=[5]", r"model.attn_resolutions: \[5\] do not occur in this U-Net"),
        ("train.sample_images=5000", r"train.sample_images: must be in 1..1024"),
        ("model.channel_mults=3", r"model.channel_mults: expected a list"),
        ("model.channel_mults=[1,a]", r"model.channel_mults\[1\]: expected an integer"),
        ("data.toy_weights=[1]", r"data.toy_weights: needs one weight per mean"),
        ("data.channels=2", r"data.channels: must be 1 or 3"),
        ("noise=3", r"noise must be a mapping"),
        ("noise.sigma_max", r"must look like section.key=value"),
        ("model.kind=mlp", r"model.kind: 'mlp' works on data.name=toy2d only"),
        ("train.heldout_examples=-1", r"train.heldout_examples: must be >= 0 \(0: no held-out DSM loss"),
        ("train.heldout_sigma_max=-2", r"train.heldout_sigma_max: must be >= 0"),
        ("train.heldout_sigma_min=.nan", r"train.heldout_sigma_min: expected a finite number"),
        ("train.heldout_sigma_min=1000", r"train.heldout_sigma_min: 1000.0 is not below the held-out grid's top σ 50"),
        ("train.heldout_sigma_max=1e9", r"train.heldout_sigma_max: must be 0 or in \[1e-06, 1e\+06\]"),
    ],
)
@pytest.mark.filterwarnings("ignore::hpc_ncsn.config.LegacyConfigWarning")
def test_bad_values_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_sections_built_in_python_are_checked_like_loaded_ones():
    with pytest.raises(ConfigError, match="train.steps: must be >= 0"):
        TrainConfig(steps=-1)
    with pytest.raises(ConfigError, match="train.mixed_precision: 'fp8' is not a valid choice"):
        TrainConfig(mixed_precision="fp8")
    with pytest.raises(ConfigError, match="noise.sigma_max: expected a finite number"):
        NoiseConfig(sigma_max=float("inf"))
    with pytest.raises(ConfigError, match="noise must be a NoiseConfig"):
        Config(noise={"ladder": "linear"})
    assert NoiseConfig(sigma_max=3).sigma_max == 3.0 and isinstance(NoiseConfig(sigma_max=3).sigma_max, float)


OLD_LAYOUT = """
noise:
  schedule: snr
  sigma_max: 8.54
  steps_per_level: 3
  step_lr: 1.61e-5
eval:
  num_samples: 250
  sample_batch_size: 50
  batch_size: 100
  precision: bf16
"""


def test_a_config_of_the_old_layout_loads_as_the_new_keys_with_a_warning(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(OLD_LAYOUT)
    with pytest.warns(LegacyConfigWarning, match=r"noise.schedule → noise.ladder, sampler.step_rule.*"
                                                  r"hpc-ncsn config --config .*old.yaml > NEW.yaml"):
        config = load_config(path)
    assert (config.noise.ladder, config.sampler.step_rule, config.arm) == ("geometric", "snr", "snr")
    assert config.sampler.steps_per_level == 3 and config.sampler.step_lr == 1.61e-5
    assert config.sampler.precision == "bf16" and config.evaluate.batch_size == 100
    assert (config.generate.num_samples, config.generate.batch_size) == (250, 50)
    rewritten = tmp_path / "new.yaml"
    rewritten.write_text(config_to_yaml(config))
    assert load_config(rewritten) == config
    with pytest.warns(LegacyConfigWarning, match="override noise.schedule"):
        assert load_config(rewritten, ["noise.schedule=linear"]).arm == "linear"


def test_old_and_new_keys_that_disagree_are_refused(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("noise:\n  steps_per_level: 3\nsampler:\n  steps_per_level: 7\n")
    with pytest.raises(ConfigError, match="sets both noise.steps_per_level"):
        load_config(path)


def test_checkpoint_configs_of_the_old_layout_still_load():
    old = {"noise": {"schedule": "linear", "sigma_max": 5.0, "steps_per_level": 2}, "eval": {"num_samples": 10}}
    with pytest.warns(LegacyConfigWarning):
        config = config_from_dict(old)
    assert config.noise.ladder == "linear" and config.sampler.steps_per_level == 2
    assert config.generate.num_samples == 10


def test_yaml_mistakes_name_the_file_and_line(tmp_path):
    duplicate = tmp_path / "dup.yaml"
    duplicate.write_text("noise:\n  sigma_max: 5\n  sigma_max: 50\n")
    with pytest.raises(ConfigError, match=r"dup.yaml line 3, column 3: key 'sigma_max' is given twice"):
        load_config(duplicate)
    broken = tmp_path / "broken.yaml"
    broken.write_text("noise: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken.yaml line \d+, column \d+: .*fix the YAML"):
        load_config(broken)


def test_importing_the_config_does_not_import_torch():
    code = "import hpc_ncsn.config, hpc_ncsn, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cifar10_needs_rgb():
    with pytest.raises(ConfigError, match="data.channels: must be 3 for cifar10"):
        load_config(None, ["data.name=cifar10", "data.channels=1"])


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(bad)


def test_at_the_sigma_and_learning_rate_bounds_the_first_training_step_is_finite():
    """A direct check of SIGMA_RANGE and lr <= 1: the tiny U-Net's DSM loss at σ = 1e6 and 1e-6 on real digit
    pixels, its gradients, and one Adam step at lr = 1 (then the loss again) are all finite in float32."""
    import torch

    from hpc_ncsn.config import SIGMA_RANGE
    from hpc_ncsn.loss import dsm_loss
    from hpc_ncsn.model import build_score_model
    from helpers import TINY_NETWORK

    config = load_config(Path(__file__).parent.parent / "configs" / "debug.yaml", [*TINY_NETWORK, "train.lr=1"])
    torch.manual_seed(0)
    model = build_score_model(config.model, config.data)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    x = torch.rand(8, config.data.channels, 8, 8) * 2 - 1
    sigmas = torch.tensor([SIGMA_RANGE[1], SIGMA_RANGE[0]])
    levels, noise = torch.tensor([0, 1] * 4), torch.randn_like(x)
    for _ in range(2):
        loss = dsm_loss(model, x, sigmas, levels=levels, noise=noise).loss
        optimizer.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        assert all(torch.isfinite(p).all() for p in model.parameters())
