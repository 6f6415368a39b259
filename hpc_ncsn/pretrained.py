"""A trained network to hand to someone: its EMA weights as safetensors, its config as JSON, a model card.

    <out>/model.safetensors   the EMA weights, float32, under the network's own parameter names
    <out>/config.json         {"format", "hpc_ncsn_version", "step", "source", "weights_sha256", "config": <resolved>}
    <out>/README.md           what it is, the sampler it was tuned for, how to load and sample it

`export_pretrained(run_or_checkpoint, out)` writes the folder (under a temporary name, then
renamed); `from_pretrained(folder)` rebuilds the network from config.json and loads the weights with
safetensors (no pickle, no torch.load) once their sha256 is the one config.json records;
`load_pretrained(folder)` gives the config and the step with it (what `generate --model` samples).
`initial_weights(path, config)` is what `train.init_from` starts
from (an export folder, or a checkpoint or run folder of this project), after checking that its
network is the one `config` builds (one line naming every difference).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .checkpoint import CHECKPOINTS, EMA_FILE, load_newest_ema_model
from .config import Config, config_from_dict, config_to_dict
from .errors import UserError
from .files import atomic_write, file_sha256, publish_dir
from .untrusted import read_bounded

__all__ = ["CARD", "CONFIG", "FORMAT", "WEIGHTS", "ArchitectureMismatch", "export_pretrained", "from_pretrained",
           "initial_weights", "load_pretrained", "pretrained_config"]

WEIGHTS, CONFIG, CARD = "model.safetensors", "config.json", "README.md"
FORMAT = "hpc_ncsn-pretrained-1"
MAX_CONFIG_BYTES = 1 << 20  # config.json: a resolved config and a few keys, a few kB
# What decides the network and its tensors' meaning: the model section (dropout aside: it only acts in training),
# and the data's image size and channels.
_ARCHITECTURE_DATA_KEYS = ("image_size", "channels")
_FREE_MODEL_KEYS = ("dropout",)


class ArchitectureMismatch(UserError, ValueError):
    """Weights whose network is not the one the config builds; the message names every difference."""


def _card(config: Config, step: int, source: Path, parameters: int) -> str:
    data, sampler, noise = config.data, config.sampler, config.noise
    sampler_lines = "\n".join(f"| `sampler.{key}` | `{value}` |" for key, value in config_to_dict(config)["sampler"]
                              .items())
    return f"""# hpc_ncsn score network (NCSN/NCSNv2 noise-conditional score model)

EMA weights of step {step} of `{source}`: a {config.model.kind} with {parameters:,} parameters, trained by
denoising score matching on `{data.name}` at {data.image_size}×{data.image_size}×{data.channels}, images on
[0, 1]; noise ladder {noise.ladder}, σ_1 = {noise.sigma_max:g}, σ_L = {noise.sigma_min:g}, L = {noise.num_levels}.

## Load

```python
from hpc_ncsn.pretrained import from_pretrained, pretrained_config
model = from_pretrained("THIS_FOLDER")      # a torch nn.Module in eval mode; no pickle is read
config = pretrained_config("THIS_FOLDER")   # the resolved training config (config.json's "config")
```

Sample it into checked HDF5 shards: `hpc-ncsn generate --model THIS_FOLDER --out samples --num-samples 1000`
(the sampler below; `sampler.*` overrides after it). Fine-tune from it:
`python train.py --config CONFIG train.init_from=THIS_FOLDER`.

## Sampler it was run with

| key | value |
|---|---|
{sampler_lines}

`config.json` holds the whole resolved config; `weights_sha256` there is the sha256 of `{WEIGHTS}`.
"""


def export_pretrained(run_or_checkpoint: Path, out: Path) -> Path:
    """Write the EMA network of a run's newest checkpoint (or of the checkpoint given) as `out` (module docstring)."""
    from safetensors.torch import save_file

    from . import __version__
    from .model import count_parameters

    model, config, step, checkpoint = load_newest_ema_model(run_or_checkpoint)
    out = Path(out)
    scratch = out.parent / f".tmp-{out.name}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    tensors = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    save_file(tensors, str(scratch / WEIGHTS), metadata={"format": FORMAT, "step": str(step)})
    record = {"format": FORMAT, "hpc_ncsn_version": __version__, "step": step, "source": str(checkpoint),
              "weights_sha256": file_sha256(scratch / WEIGHTS), "config": config_to_dict(config)}
    atomic_write(scratch / CONFIG, json.dumps(record, indent=2) + "\n")
    atomic_write(scratch / CARD, _card(config, step, checkpoint, count_parameters(model)))
    return publish_dir(scratch, out)


def _record(folder: Path) -> dict:
    path = Path(folder) / CONFIG
    if not (path.is_file() and (Path(folder) / WEIGHTS).is_file()):
        if any((Path(folder) / name).exists() for name in (CHECKPOINTS, EMA_FILE, "config.yaml")):
            raise UserError(f"{folder} is a run or checkpoint folder, not an exported model (no {CONFIG} and "
                            f"{WEIGHTS}); pass it where a run folder goes (generate --run-dir), or export it with "
                            f"'hpc-ncsn export --run-dir {folder} --safetensors DIR'")
        raise UserError(f"{folder} is not an exported model (no {CONFIG} and {WEIGHTS}); write one with "
                        "'hpc-ncsn export --run-dir RUN --safetensors DIR'")
    try:
        record = json.loads(read_bounded(path, MAX_CONFIG_BYTES, "export the model again"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not JSON ({error}); export the model again") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise UserError(f"{path}: format {found!r}, not {FORMAT!r}; export the model again with this version")
    missing = [key for key in ("step", "weights_sha256", "config") if key not in record]
    if missing:
        raise UserError(f"{path} has no {', '.join(missing)}; export the model again")
    return record


def pretrained_config(folder: Path) -> Config:
    """The resolved training config an exported model folder records."""
    return config_from_dict(_record(folder)["config"], source=str(Path(folder) / CONFIG))


def _architecture_differences(weights: Config, wanted: Config) -> list[str]:
    have, want = config_to_dict(weights), config_to_dict(wanted)
    keys = [("model", key) for key in want["model"] if key not in _FREE_MODEL_KEYS] + [("data", key) for key in _ARCHITECTURE_DATA_KEYS]
    return [f"{section}.{key}: {have[section][key]!r} there, {want[section][key]!r} here" for section, key in keys
            if have[section][key] != want[section][key]]


def _load_weights(model, folder: Path, sha256: str) -> None:
    from safetensors.torch import load_file

    if file_sha256(Path(folder) / WEIGHTS) != sha256:
        raise UserError(f"{Path(folder) / WEIGHTS} is not the file its {CONFIG} describes (its sha256 differs from "
                        "weights_sha256: torn, or replaced by other weights); copy or export the model again")
    tensors = load_file(str(Path(folder) / WEIGHTS))
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(tensors)) + sorted(
        name for name in set(expected) & set(tensors) if expected[name].shape != tensors[name].shape)
    if wrong:
        raise ArchitectureMismatch(f"{folder / WEIGHTS} does not fit the network its {CONFIG} describes "
                                   f"({len(wrong)} tensors differ in name or shape, first {wrong[0]}); export it again")
    model.load_state_dict(tensors, strict=True)


def load_pretrained(folder: Path, device="cpu"):
    """(model, config, record) of an exported model folder: the network, weights checked against config.json's
    sha256 and loaded with safetensors, in eval mode on `device`; the resolved config; config.json itself."""
    from .model import build_score_model

    record = _record(folder)
    config = config_from_dict(record["config"], source=str(Path(folder) / CONFIG))
    model = build_score_model(config.model, config.data)
    _load_weights(model, Path(folder), record["weights_sha256"])
    return model.to(device).eval(), config, record


def from_pretrained(folder: Path, device="cpu"):
    """The network of an exported model folder, weights loaded with safetensors, in eval mode on `device`."""
    return load_pretrained(folder, device)[0]


def initial_weights(path: Path, config: Config) -> tuple[dict, str]:
    """(state dict, description) of the weights `train.init_from` names, checked against the network `config`
    builds: an export folder (safetensors) or a checkpoint / run folder (its ema.pt)."""
    path = Path(path)
    if (path / CONFIG).is_file():
        model, source, record = load_pretrained(path)
        where = f"{path} (step {record['step']}, sha256 {record['weights_sha256'][:16]}…)"
    elif path.exists():
        model, source, step, checkpoint = load_newest_ema_model(path)
        where = f"the EMA weights of {checkpoint} (step {step})"
    else:
        raise UserError(f"train.init_from={path} does not exist; pass an exported model folder, a checkpoint folder "
                        "or a run folder")
    differences = _architecture_differences(source, config)
    if differences:
        raise ArchitectureMismatch(f"train.init_from={path} holds another network ({'; '.join(differences)}); "
                                   "use its model and data sizes, or other weights")
    return model.state_dict(), where
