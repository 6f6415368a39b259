"""Cluster settings in a file: a Slurm profile (`--profile cluster.yaml`) for the sweep's `--cluster slurm` options.

    # cluster.yaml: any of SlurmOptions' fields, by name
    partition: gpu
    account: my-project
    qos: normal
    constraint: a100|h100
    time_train: 2880          # minutes
    gpus_per_node: 4
    setup: ["module load cuda/12.4", "source ~/venvs/ncsn/bin/activate"]
    sbatch: {exclusive: true, reservation: ml}   # or a list of KEY=VALUE
    python: apptainer exec --nv hpc_ncsn.sif python

`merge_options` lays the command line over the profile over SlurmOptions' defaults: a flag given on
the command line wins; `--sbatch KEY=VALUE` replaces that KEY only, `--setup` lines replace the
profile's lines. An unknown key is refused in one line that lists the valid ones. `record_options`
keeps what a submission used in sweep.json (key "slurm", outside the spec a rerun must match).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from pathlib import Path

from ..config import ConfigError
from ..files import atomic_write
from .plan import SPEC_FILE
from .slurm import SlurmOptions

__all__ = ["PROFILE_KEYS", "merge_options", "read_profile", "record_options"]

PROFILE_KEYS = {field.name: field for field in dataclasses.fields(SlurmOptions)}
_LISTS = ("sbatch", "setup")


def _check_value(path: Path, key: str, value):
    if key == "sbatch":
        if isinstance(value, dict):
            value = [f"{name}={json.dumps(item) if isinstance(item, bool) else item}" for name, item in value.items()]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{path}: sbatch must be a mapping (exclusive: true) or a list of KEY=VALUE strings")
        return tuple(value)
    if key == "setup":
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise ConfigError(f"{path}: setup must be a list of command lines (strings)")
        return tuple(value)
    wanted = int if PROFILE_KEYS[key].type in ("int", "int | None") else str
    if not isinstance(value, wanted) or isinstance(value, bool):
        raise ConfigError(f"{path}: {key} must be {'an integer' if wanted is int else 'a string'}, got {value!r}")
    return value


def read_profile(path: Path) -> dict:
    """The Slurm options a profile file sets (field name → value), each checked."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--profile {path}: no such file; write a YAML file of Slurm options (docs/sweeps.md)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"--profile {path}: not YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--profile {path}: must be a mapping of Slurm options, e.g. 'partition: gpu'")
    unknown = [key for key in data if key not in PROFILE_KEYS]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), PROFILE_KEYS, n=2, cutoff=0.5)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"--profile {path}: unknown key {unknown[0]!r}{hint}; valid keys: {', '.join(PROFILE_KEYS)}")
    return {key: _check_value(path, key, value) for key, value in data.items()}


def merge_options(profile: dict, flags: dict) -> SlurmOptions:
    """SlurmOptions from a profile's values and the command line's (`flags`: None where a flag was not given)."""
    values = dict(profile)
    for key, value in flags.items():
        if key == "sbatch" and value:
            given = {item.partition("=")[0] for item in value}
            values[key] = tuple(item for item in values.get(key, ()) if item.partition("=")[0] not in given) + \
                tuple(value)
        elif key == "setup" and value:
            values[key] = tuple(value)
        elif key not in _LISTS and value is not None:
            values[key] = value
    return SlurmOptions(**values)


def record_options(root: Path, options: SlurmOptions, profile: Path | None) -> None:
    """Keep the Slurm options of the latest submission (and the profile they came from) in sweep.json."""
    path = Path(root) / SPEC_FILE
    record = json.loads(path.read_text())
    record["slurm"] = {"profile": str(profile.resolve()) if profile else None, **dataclasses.asdict(options)}
    atomic_write(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
