"""CIFAR-10 from a local copy of the official `cifar-10-python.tar.gz` (`hpc-ncsn fetch cifar10 --from FILE`).

The archive is checked against the md5 that torchvision's `CIFAR10` class publishes (`tgz_md5`,
read from the installed package), its seven python-pickle batches are checked for shape
(10,000 rows of 3,072 bytes per batch, labels 0..9) with an unpickler that admits only numpy
arrays, and they are placed in `<root>/cifar-10-batches-py/` (written under a temporary name,
then renamed), where torchvision's class reads them (`open_cifar10`; its own per-file md5s apply).
`verify=False` (`--no-verify`) takes an archive of the same format with another hash (a subset,
a re-pack you trust): the folder then carries an `UNVERIFIED` note with the archive's sha256,
and the loader skips torchvision's per-file md5s for it, saying so.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np

from .errors import UserError
from .files import atomic_write, publish_dir

__all__ = ["BATCHES", "CIFAR10_URL", "Cifar10Error", "FOLDER", "UNVERIFIED", "install_cifar10", "official_md5",
           "open_cifar10"]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
FOLDER = "cifar-10-batches-py"
BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
UNVERIFIED = "UNVERIFIED"
MAX_MEMBER_BYTES = 64 << 20  # an official batch is 31 MB; a member claiming more is refused unread


class Cifar10Error(UserError, ValueError):
    """A CIFAR-10 archive that is not the official one (or not in its format); the message says what to pass."""


def official_md5() -> str:
    """The md5 of the official cifar-10-python.tar.gz, as torchvision's CIFAR10 class publishes it."""
    from torchvision.datasets import CIFAR10

    return CIFAR10.tgz_md5


class _ArraysOnly(pickle.Unpickler):
    """An unpickler for CIFAR's batches: dicts, lists, strings, bytes and numpy arrays, nothing callable else."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refuses {module}.{name}")
        return super().find_class(module, name)


def _check_batch(name: str, data: bytes) -> int:
    """The number of images of one batch, after checking its structure; raises ValueError."""
    try:
        entry = _ArraysOnly(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:  # any unpickling failure means: not a CIFAR batch
        raise ValueError(f"{name} is not a CIFAR python batch ({error})") from None
    if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
        raise ValueError(f"{name} holds no 'data' and 'labels'")
    pixels, labels = np.asarray(entry["data"]), list(entry["labels"])
    if pixels.dtype != np.uint8 or pixels.ndim != 2 or pixels.shape[1] != 3072 or len(labels) != pixels.shape[0]:
        raise ValueError(f"{name} holds {pixels.dtype} {pixels.shape} and {len(labels)} labels, not N × 3072 uint8 "
                         "with N labels")
    if any(not 0 <= int(label) <= 9 for label in labels):
        raise ValueError(f"{name} has labels outside 0..9")
    return pixels.shape[0]


def _digests(path: Path) -> tuple[str, str]:
    md5, sha = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            md5.update(block)
            sha.update(block)
    return md5.hexdigest(), sha.hexdigest()


def install_cifar10(source: Path, root: Path, verify: bool = True, dry_run: bool = False) -> list[str]:
    """Check `source` (cifar-10-python.tar.gz) and place its batches in `root/cifar-10-batches-py/`; returns
    what was (or would be) done, a line per batch."""
    source, root = Path(source), Path(root)
    if not source.is_file():
        raise Cifar10Error(f"{source} is not a file; pass the path of cifar-10-python.tar.gz (from {CIFAR10_URL})")
    md5, sha256 = _digests(source)
    expected = official_md5()
    if verify and md5 != expected:
        raise Cifar10Error(f"{source}: md5 {md5} is not the official cifar-10-python.tar.gz's {expected}; pass the "
                           f"file from {CIFAR10_URL}, or add --no-verify for an archive in its format that you trust")
    try:
        archive = tarfile.open(source, "r:gz")
    except (tarfile.TarError, OSError) as error:
        raise Cifar10Error(f"{source} is not a .tar.gz ({error}); pass cifar-10-python.tar.gz") from None
    wanted = {f"{FOLDER}/{name}" for name in BATCHES + ("batches.meta",)}
    with archive:
        members = {member.name: member for member in archive.getmembers() if member.name in wanted}
        missing = sorted(wanted - set(members))
        if missing:
            raise Cifar10Error(f"{source} lacks {', '.join(missing)}; pass the python version, "
                               f"cifar-10-python.tar.gz ({CIFAR10_URL})")
        contents = {}
        for name, member in sorted(members.items()):
            if not member.isfile() or member.size > MAX_MEMBER_BYTES:
                raise Cifar10Error(f"{source}: {name} is not a regular file under {MAX_MEMBER_BYTES >> 20} MiB; "
                                   "pass cifar-10-python.tar.gz")
            contents[Path(name).name] = archive.extractfile(member).read()
    done = []
    for name in BATCHES:
        try:
            count = _check_batch(name, contents[name])
        except ValueError as error:
            raise Cifar10Error(f"{source}: {error}; pass cifar-10-python.tar.gz ({CIFAR10_URL})") from None
        done.append(f"{source}:{FOLDER}/{name} ({count} images) → {root / FOLDER / name}")
    note = "" if md5 == expected else f" (sha256 {sha256}: not the official archive, placed unverified)"
    done[-1] += note
    if dry_run:
        return done
    scratch = root / f".tmp-{FOLDER}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    for name, data in contents.items():
        (scratch / name).write_bytes(data)
    if md5 != expected:
        atomic_write(scratch / UNVERIFIED, f"{source} sha256 {sha256} md5 {md5}; official md5 {expected}\n")
    publish_dir(scratch, root / FOLDER)
    return done


def open_cifar10(roots: list[Path], train: bool):
    """torchvision's CIFAR10 over the first root holding `cifar-10-batches-py/` (None if none does). A folder
    placed with --no-verify is read without torchvision's per-file md5 checks, with a note on stderr."""
    from torchvision.datasets import CIFAR10

    class Unverified(CIFAR10):  # the same reader; check_integrity(path, None) only asks that the file exists
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    for root in roots:
        folder = Path(root) / FOLDER
        if not folder.is_dir():
            continue
        if (folder / UNVERIFIED).is_file():
            print(f"note: {folder} was placed with --no-verify ({(folder / UNVERIFIED).read_text().strip()})",
                  file=sys.stderr)
            return Unverified(root=str(root), train=train, download=False)
        return CIFAR10(root=str(root), train=train, download=False)
    return None
