import json

import pytest

from hpc_ncsn.cli import main
from hpc_ncsn.data import toy_mixture
from hpc_ncsn.toy import ToySettings, run_toy


def test_annealed_langevin_recovers_the_paper_mixture_weights_and_plain_langevin_does_not():
    report, samples = run_toy(toy_mixture([[-5, -5], [5, 5]], [0.2, 0.8], 1.0), ToySettings())
    assert report["annealed_langevin"]["max_abs_error"] < 0.03
    assert report["langevin"]["max_abs_error"] > 0.2
    assert samples["annealed"].shape == (10_000, 2)


def test_toy_command_writes_json_and_figure(tmp_path, capsys):
    assert main(["toy", "--means", "[[-4,0],[4,0]]", "--weights", "[1,1]", "--num-samples", "400",
                 "--plain-steps", "50", "--steps-per-level", "20", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["true_weights"] == [0.5, 0.5]
    total = 50 + printed["settings"]["num_levels"] * 20  # plain steps, then every annealed level's steps
    assert captured.err.splitlines()[-1].startswith("toy (Langevin, then annealed): 100%|")
    assert f"| {total}/{total} steps [" in captured.err.splitlines()[-1]
    assert json.loads((tmp_path / "toy_langevin.json").read_text()) == printed
    assert (tmp_path / "toy_langevin.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_toy_and_plan_refuse_bad_input_in_one_error_line(capsys):
    for command, said in [(["toy", "--means", "[[-4,0],[4,0]]", "--weights", "[1]"], "error: toy: bad mixture ("),
                          (["toy", "--means", "7"], "error: toy --means: expected a list"),
                          (["plan", "--dim", "3072"], "error: plan --dim needs --sigma-max"),
                          (["plan", "--dim", "3072", "--sigma-max", "50", "noise.sigma_min=0.1"],
                           "error: plan: give either --dim")]:
        assert main(command) == 2, command
        err = capsys.readouterr().err
        assert err.startswith(said) and err.count("\n") == 1, (command, err)


def test_plan_command_prints_the_published_cifar10_plan(capsys):
    assert main(["plan", "--dim", "3072", "--sigma-max", "50", "--sigma-min", "0.01", "--steps", "5",
                 "--num-levels", "232"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["step_lr"] == pytest.approx(6.2e-6, rel=0.03) and plan["num_levels"] == 232


def test_plan_command_measures_sigma_max_on_a_data_set(capsys):
    assert main(["plan", "data.image_size=8", "--steps", "5"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dim"] == 64 and plan["sigma_max_method"].startswith("exact")
    assert 4.0 < plan["sigma_max"] <= 8.0


def test_config_command_prints_resolved_yaml_and_reports_errors(capsys):
    assert main(["config", "noise.ladder=linear", "sampler.step_rule=snr"]) == 0
    out = capsys.readouterr().out
    assert "ladder: linear" in out and "step_rule: snr" in out
    assert main(["config", "noise.sigma_mx=3"]) == 2
    assert "did you mean 'sigma_max'" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["aggregate", "--sweep"], ["aggregate", "--dry-run", "--sweep"],
                                     ["sweep", "--status", "--out"]])
def test_a_folder_that_holds_no_sweep_is_one_line_naming_it(tmp_path, capsys, command):
    assert main([*command, str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path} holds no sweep (no sweep.json); pass the --out of a launched sweep " \
                  "(launch/sweep.py writes it)\n"


def test_dry_runs_do_no_work(tmp_path, capsys):
    assert main(["toy", "--dry-run", "--out", str(tmp_path / "t")]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["num_samples"] == 10_000
    assert not (tmp_path / "t").exists()


def test_every_command_help_shows_real_defaults_and_one_example_per_line():
    from hpc_ncsn.cli import COMMANDS, build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps the subparsers only there
    for name, *_, epilog in COMMANDS:
        text = commands[name].format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, name
        if epilog and epilog.count("\n"):
            for line in epilog.splitlines():  # each example stays on its own line, as written
                assert line in text, (name, line)


def test_train_help_lists_every_config_key_with_its_default_and_choices():
    import dataclasses
    import subprocess
    import sys
    from pathlib import Path

    from hpc_ncsn.config import Config, TrainConfig

    root = Path(__file__).resolve().parent.parent
    text = subprocess.run([sys.executable, str(root / "train.py"), "--help"], capture_output=True, text=True,
                          check=True).stdout
    assert text.count("A run folder") == 1  # the description once, not again as the epilog
    keys = text[text.index("config keys"):]
    for section in dataclasses.fields(Config):
        assert f"  {section.name}:" in keys, section.name
        for item in dataclasses.fields(section.default_factory):
            assert f"{item.name}=" in keys, (section.name, item.name)
    assert f"steps={TrainConfig().steps} " in keys and "mixed_precision=auto (auto|no|bf16|fp16)" in keys
    assert all(len(line) <= 100 for line in keys.splitlines())


def test_plan_measures_the_toy_points_training_draws_with_the_run_seed(capsys):
    """`plan --config` on the toy measures σ_1 on the very points a training run of that config sees: the mixture
    sampled with train.seed (not a seed of its own)."""
    import torch

    from hpc_ncsn.config import load_config
    from hpc_ncsn.data import toy_mixture

    overrides = ["train.seed=3", "data.toy_size=300"]
    assert main(["plan", "--config", "configs/toy2d.yaml", "--num-levels", "10", *overrides]) == 0
    plan = json.loads(capsys.readouterr().out)
    data = load_config("configs/toy2d.yaml", overrides).data
    points = toy_mixture(data.toy_means, data.toy_weights, data.toy_std).sample(
        300, torch.Generator().manual_seed(3)).float().double()
    assert plan["sigma_max"] == pytest.approx(torch.cdist(points, points).max().item(), rel=1e-12)
