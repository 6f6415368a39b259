"""Cluster settings in a file (--profile for the sweep's Slurm options) and the launcher's DeepSpeed batch,
accumulation and clipping that the run config overrides, each named in one warning."""

import argparse
import json
from pathlib import Path

import pytest

from hpc_ncsn.cli import main
from hpc_ncsn.config import ConfigError, TrainConfig
from hpc_ncsn.sweep.launch import add_arguments, slurm_options
from hpc_ncsn.sweep.profile import record_options
from hpc_ncsn.sweep.slurm import SlurmOptions, sbatch_text, slurm_parameters
from hpc_ncsn.train.launcher_settings import overridden_compile, overridden_launcher_settings
from test_sweep_plan import GOLDEN_TRAIN_SBATCH

PYTHON = "apptainer exec --nv /images/hpc_ncsn.sif python"


def options(*argv: str) -> SlurmOptions:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return slurm_options(parser.parse_args(list(argv)))


def test_a_profile_gives_the_golden_sbatch_script_and_flags_override_it(tmp_path):
    profile = tmp_path / "cluster.yaml"
    profile.write_text(f"partition: cpu\ngpus_per_node: 4\nnodes: 2\ntime_train: 60\nsetup: [module load cuda]\n"
                       f"sbatch: {{exclusive: false}}\npython: {PYTHON}\n")
    merged = options("--profile", str(profile), "--partition", "gpu", "--time-train", "2880", "--sbatch",
                     "exclusive=true")
    text = sbatch_text(Path("/sweeps/x"), slurm_parameters(merged, "train", "x"), 4, merged.python)
    assert text == GOLDEN_TRAIN_SBATCH.replace("\\\n", "")  # the same script as the same options given as flags
    alone = options("--profile", str(profile))
    assert (alone.partition, alone.time_train, alone.sbatch, alone.time_sample) == (
        "cpu", 60, ("exclusive=false",), SlurmOptions.time_sample)  # unset keys keep SlurmOptions' defaults
    assert options("--profile", str(profile), "--setup", "module load gcc").setup == ("module load gcc",)


def test_an_unknown_or_mistyped_profile_key_is_one_line(tmp_path, capsys):
    profile = tmp_path / "cluster.yaml"
    profile.write_text("partition: gpu\ntime: 60\n")
    with pytest.raises(ConfigError, match=r"unknown key 'time' \(did you mean time_train or time_sample\?\); "
                                          r"valid keys: partition, account"):
        options("--profile", str(profile))
    profile.write_text("nodes: two\n")
    with pytest.raises(ConfigError, match=r"nodes must be an integer, got 'two'"):
        options("--profile", str(profile))
    assert main(["sweep", "--cluster", "slurm", "--dry-run", "--profile", str(tmp_path / "none.yaml"),
                 "--out", str(tmp_path / "sweep")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--profile" in err[0] and "no such file" in err[0]


def test_the_options_of_a_submission_are_kept_in_sweep_json_beside_the_spec(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"axes": [["seed", [0]]], "config": "x"}))
    record_options(tmp_path, SlurmOptions(partition="gpu", setup=("module load cuda",)), tmp_path / "p.yaml")
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["axes"] == [["seed", [0]]] and saved["slurm"]["partition"] == "gpu"
    assert saved["slurm"]["setup"] == ["module load cuda"] and saved["slurm"]["profile"] == str(tmp_path / "p.yaml")


def test_deepspeed_settings_the_run_config_overrides_are_named_with_both_values(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_micro_batch_size_per_gpu": 32, "gradient_accumulation_steps": "auto",
                              "gradient_clipping": 1.0, "zero_optimization": {"stage": 2}}))
    environ = {"ACCELERATE_DEEPSPEED_CONFIG_FILE": str(ds), "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"}
    lines = overridden_launcher_settings(TrainConfig(batch_size=64, grad_accum=2, grad_clip=1.0), 16, environ)
    assert len(lines) == 2
    assert lines[0].startswith("warning: train.grad_accum=2 overrides the launcher's --gradient_accumulation_steps")
    assert lines[0].count(", 4;") == 1
    assert "=16 overrides train_micro_batch_size_per_gpu in the DeepSpeed config" in lines[1] and ", 32;" in lines[1]
    same = {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2", "ACCELERATE_GRADIENT_CLIPPING": "auto"}
    assert overridden_launcher_settings(TrainConfig(grad_accum=2), 64, same) == []
    with pytest.raises(ConfigError, match=r"^ACCELERATE_GRADIENT_CLIPPING='one' is not a number; unset it"):
        overridden_launcher_settings(TrainConfig(), 64, {"ACCELERATE_GRADIENT_CLIPPING": "one"})


def test_a_launchers_dynamo_backend_is_named_where_it_differs_from_the_runs_compilation():
    assert overridden_compile(False, {"ACCELERATE_DYNAMO_BACKEND": "NO"}) == []  # accelerate launch's default
    assert overridden_compile(True, {"ACCELERATE_DYNAMO_BACKEND": "INDUCTOR"}) == []  # the same compiler
    assert overridden_compile(False, {}) == []
    [line] = overridden_compile(True, {"ACCELERATE_DYNAMO_BACKEND": "AOT_EAGER"})
    assert line.startswith("warning: the network runs compiled with inductor (train.compile=true), overriding the "
                           "launcher's --dynamo_backend aot_eager (ACCELERATE_DYNAMO_BACKEND)")
