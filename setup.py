"""Kept for tools that still call `python setup.py`; the package is described in pyproject.toml.

One addition: the wheel carries the repository's configs/ (the YAML configs and the accelerate launch files) as
hpc_ncsn/configs/, so `--config configs/debug.yaml` and the sweep's default work from an installed wheel
(hpc_ncsn.config.CONFIGS_DIR finds them there; a checkout reads configs/ itself).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIGS = Path(__file__).resolve().parent / "configs"


class BuildWithConfigs(build_py):
    """build_py, then configs/**/*.yaml copied to hpc_ncsn/configs/ in the build."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "hpc_ncsn" / "configs"
        for source in sorted(CONFIGS.rglob("*.yaml")):
            destination = target / source.relative_to(CONFIGS)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)


setup(cmdclass={"build_py": BuildWithConfigs})
