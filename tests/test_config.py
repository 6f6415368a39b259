import dataclasses
from pathlib import Path

import pytest
import yaml

from hpc_ncsn.config import Config, ConfigError, config_to_dict, config_to_yaml, load_config

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
    config = load_config(path, ["noise.num_levels=30", "noise.schedule=snr", "model.channel_mults=[1,2,4]",
                                "noise.step_lr=2e-5", "noise.final_denoise=false"])
    assert config.noise.sigma_max == 10.0 and isinstance(config.noise.sigma_max, float)
    assert config.noise.num_levels == 30 and config.noise.schedule == "snr"
    assert config.model.channel_mults == (1, 2, 4)
    assert config.noise.step_lr == 2e-5 and config.noise.final_denoise is False
    assert config_to_dict(config)["model"]["channel_mults"] == [1, 2, 4]


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("noise.sigma_mx=3", r"unknown config key 'noise.sigma_mx' \(did you mean 'sigma_max'\?\); valid keys in 'noise': schedule, sigma_max"),
        ("nois.sigma_max=3", r"unknown config key 'nois' \(did you mean 'noise'\?\); valid sections: data, noise, model, train"),
        ("noise.sigma_max=-1", r"noise.sigma_max: must be > 0"),
        ("noise.sigma_min=0", r"noise.sigma_min: must be > 0"),
        ("noise.sigma_min=60", r"noise.sigma_min: must be smaller than sigma_max"),
        ("noise.num_levels=1", r"noise.num_levels: must be at least 2"),
        ("noise.num_levels=2.5", r"noise.num_levels: expected an integer, got 2.5"),
        ("noise.num_levels=true", r"noise.num_levels: expected an integer"),
        ("noise.sigma_max=big", r"noise.sigma_max: expected a number, got 'big'"),
        ("noise.schedule=cosine", r"noise.schedule: 'cosine' is not a valid choice; choose one of geometric, linear, snr"),
        ("noise.final_denoise=1", r"noise.final_denoise: expected true or false"),
        ("model.channel_mults=3", r"model.channel_mults: expected a list"),
        ("model.channel_mults=[1,a]", r"model.channel_mults\[1\]: expected an integer"),
        ("data.toy_weights=[1]", r"data.toy_weights: needs one weight per mean"),
        ("data.channels=2", r"data.channels: must be 1 or 3"),
        ("noise=3", r"noise must be a mapping"),
        ("noise.sigma_max", r"must look like section.key=value"),
        ("model.kind=mlp", r"model.kind: 'mlp' works on data.name=toy2d only"),
    ],
)
def test_bad_values_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


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
