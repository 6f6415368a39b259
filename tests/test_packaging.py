"""Installed like the anchors: one version source that the changelog names, and a wheel that carries the configs,
so the commands work from an installed wheel outside the checkout."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import hpc_ncsn
from hpc_ncsn.config import CONFIGS_DIR, ConfigError, config_path, config_to_yaml, load_config
from helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parent.parent


def test_the_version_has_one_source_and_the_newest_changelog_release_names_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hpc_ncsn.__version__"}
    releases = re.findall(r"^## (\d+\.\d+\.\d+)", (ROOT / "CHANGELOG.md").read_text(), flags=re.MULTILINE)
    assert releases[0] == hpc_ncsn.__version__, "bump hpc_ncsn.__version__ with each CHANGELOG release section"


def test_configs_given_as_configs_name_are_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config_path("configs/fashion.yaml") == CONFIGS_DIR / "fashion.yaml"
    assert config_path("debug.yaml") == CONFIGS_DIR / "debug.yaml"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "debug.yaml").write_text("train:\n  steps: 3\n")
    assert load_config("configs/debug.yaml").train.steps == 3  # a file where the user points wins
    with pytest.raises(ConfigError, match="config file configs/nothing.yaml does not exist"):
        load_config("configs/nothing.yaml")


@pytest.mark.slow  # builds the wheel (setuptools) and runs the installed commands
def test_a_built_wheel_installed_elsewhere_runs_the_sweep_and_reads_the_shipped_configs(tmp_path):
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    source = tmp_path / "source"  # a copy of the checkout, so the build leaves nothing in the working tree
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
                    str(tmp_path / "dist"), f"{source}{os.sep}"], check=True, capture_output=True, timeout=HANG_GUARD_S)
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == f"hpc_ncsn-{hpc_ncsn.__version__}-py3-none-any.whl"
    site = tmp_path / "site"  # installed into a folder of its own: the shared environment is left alone
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)], check=True,
                   capture_output=True, timeout=HANG_GUARD_S)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    command = str(site / "bin" / "hpc-ncsn")

    def installed(*args: str) -> str:
        result = subprocess.run([command, *args], cwd=elsewhere, env=env, capture_output=True, text=True,
                                timeout=HANG_GUARD_S)
        assert result.returncode == 0, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        return result.stdout

    probe = subprocess.run([sys.executable, "-c", "import hpc_ncsn; print(hpc_ncsn.__file__, hpc_ncsn.__version__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert Path(probe[0]).is_relative_to(site) and probe[1] == hpc_ncsn.__version__  # not the checkout's copy
    for name in ("debug", "fashion", "cifar10"):  # the shipped files hold the checkout's configs
        shipped = installed("config", "--config", f"configs/{name}.yaml")
        assert shipped == config_to_yaml(load_config(ROOT / "configs" / f"{name}.yaml"))
    planned = installed("sweep", "--dry-run", "--out", str(tmp_path / "sweep"))  # its default: configs/debug.yaml
    assert "train (4 tasks, 4 to run)" in planned and "aggregate:" in planned
    assert (site / "hpc_ncsn" / "configs" / "accelerate" / "zero2.yaml").is_file()
