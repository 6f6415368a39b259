"""Your own images as a data set (`data.name=folder`): a folder of PNG/JPEG files, searched recursively, or a .zip.

The rule, per image (PIL):

1. channels: converted with PIL's `convert` to "L" (data.channels=1; ITU-R 601-2 luma,
   L = R·299/1000 + G·587/1000 + B·114/1000) or "RGB" (data.channels=3; grey is repeated,
   an alpha channel is dropped, a palette is expanded);
2. size: `data.fit=crop` takes the centred square of side min(W, H) and resizes it to
   data.image_size × data.image_size with PIL's bilinear filter (antialiased when shrinking);
   `data.fit=exact` takes the image as it is and refuses one that is not
   image_size × image_size.

Files are read in the order of their relative paths (sorted), so row i is the same image on every
machine; files whose suffix is not .png/.jpg/.jpeg are skipped. The decoded array is cached
(`cache_dir()/data/folders/<key>.npy`, the key a hash of every file's name, size and mtime and of
the rule), so jobs after the first read one file. A zip is bounded: at most `MAX_ZIP_BYTES` decompressed.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from .errors import UserError
from .files import atomic_path, cache_dir

__all__ = ["FolderDataError", "IMAGE_SUFFIXES", "MAX_ZIP_BYTES", "read_image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MAX_ZIP_BYTES = 8 << 30  # 8 GiB decompressed: a zip claiming more (or lying about it) is refused
_RULE_VERSION = 1  # bump when the conversion rule changes: old cached arrays are then not reused


class FolderDataError(UserError, ValueError):
    """An image folder or zip that cannot be read as a data set; the message names the file and the fix."""


def _members(source: Path) -> tuple[list[str], list[tuple], zipfile.ZipFile | None]:
    """(sorted relative names of the image files, their (name, size, mtime) identity, the open zip or None)."""
    if source.is_dir():
        files = sorted(str(p.relative_to(source).as_posix()) for p in source.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        identity = [(name, (source / name).stat().st_size, (source / name).stat().st_mtime_ns) for name in files]
        return files, identity, None
    if source.is_file() and zipfile.is_zipfile(source):
        archive = zipfile.ZipFile(source)
        infos = sorted((info for info in archive.infolist() if not info.is_dir()
                        and PurePosixPath(info.filename).suffix.lower() in IMAGE_SUFFIXES), key=lambda i: i.filename)
        total = sum(info.file_size for info in infos)
        if total > MAX_ZIP_BYTES:
            archive.close()
            raise FolderDataError(f"{source}: its images would take {total / 2**30:.1f} GiB decompressed, over the "
                                  f"{MAX_ZIP_BYTES / 2**30:.0f} GiB bound; unpack it and pass the folder as data.path")
        stat = source.stat()
        identity = [(str(source.name), stat.st_size, stat.st_mtime_ns)] + [(i.filename, i.file_size, i.CRC) for i in infos]
        return [info.filename for info in infos], identity, archive
    raise FolderDataError(f"data.path={source} is neither a folder nor a .zip file; point it at a folder of "
                          "PNG/JPEG images or a .zip of them")


def _read_bounded(archive: zipfile.ZipFile, name: str) -> bytes:
    """A zip member's bytes, refusing one that inflates beyond what its header declares."""
    declared = archive.getinfo(name).file_size
    with archive.open(name) as handle:
        data = handle.read(declared + 1)
    if len(data) > declared:
        raise FolderDataError(f"{archive.filename}: {name} inflates beyond its declared {declared} bytes; "
                              "the zip is damaged or hostile: rebuild it")
    return data


def _convert(image, name: str, size: int, channels: int, fit: str) -> np.ndarray:
    """One PIL image → uint8 (C, size, size) by the module's rule."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    if fit == "exact":
        if (width, height) != (size, size):
            raise FolderDataError(f"{name} is {width}×{height}, not data.image_size={size} square; resize the "
                                  "images, or set data.fit=crop (centre square, resized)")
    else:
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        image = image.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _decode(source: Path, files: list[str], archive, size: int, channels: int, fit: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(files), channels, size, size), dtype=np.uint8)
    for row, name in enumerate(files):
        shown = f"{source}/{name}" if archive is None else f"{source}:{name}"
        try:
            raw = (source / name).read_bytes() if archive is None else _read_bounded(archive, name)
            with Image.open(io.BytesIO(raw)) as image:
                image.load()
                out[row] = _convert(image, shown, size, channels, fit)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise FolderDataError(f"{shown} cannot be read as an image ({error}); remove or replace it") from None
    return out


def read_image_folder(path: str | Path, size: int, channels: int, fit: str = "crop",
                      cache: Path | None = None) -> torch.Tensor:
    """The images of a folder (recursively) or a .zip as uint8 (N, channels, size, size), by the module's rule."""
    source = Path(path).expanduser()
    if not source.exists():
        raise FolderDataError(f"data.path={source} does not exist; point it at a folder of PNG/JPEG images or a .zip")
    files, identity, archive = _members(source)
    try:
        if not files:
            raise FolderDataError(f"data.path={source} holds no .png/.jpg/.jpeg file (searched recursively); put "
                                  "images there or point data.path elsewhere")
        key = hashlib.sha256(json.dumps([_RULE_VERSION, str(source.resolve()), identity, size, channels, fit])
                             .encode()).hexdigest()[:24]
        cached = (cache if cache is not None else cache_dir() / "data" / "folders") / f"{key}.npy"
        if cached.is_file():
            return torch.from_numpy(np.load(cached, allow_pickle=False))
        images = _decode(source, files, archive, size, channels, fit)
    finally:
        if archive is not None:
            archive.close()
    cached.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(cached) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, images, allow_pickle=False)
    return torch.from_numpy(images)
