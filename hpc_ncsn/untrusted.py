"""Reading files a user may have received from someone else: every size bounded before it is allocated.

A few bytes on disk can ask for gigabytes in memory: a 3 MB `.gz` or zip member that
inflates to 7 GB, a 1 MB `.npz` whose compressed array is 3 GB of zeros, a pickled
object array that runs code as it loads. Each reader here checks what the file
declares (its size, an archive member's size, an array's shape and dtype in its
`.npy` header) against a bound the caller states, then streams the bytes and stops
at the bound even when the declaration lied. A refusal is one line naming the file,
the bound and the fix (`TooLarge`, `BadArchive`).

- `read_bounded(path, limit, fix)`: a whole file.
- `gunzip_bounded(path, limit, fix)`: a `.gz`, decompressed in blocks.
- `zip_member_bounded(archive, member, path, limit, fix)`: one member of an open zip.
- `load_npz(path, names, max_bytes=…, fix=…)`: named arrays of an `.npz`, each header read
  (shape, dtype) before its data; object arrays (pickles) are refused, never loaded.

Standard library only at import (numpy is imported by `load_npz` itself).
"""

from __future__ import annotations

import gzip
import math
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable

from .errors import UserError

__all__ = ["NPZ_MAX_BYTES", "BadArchive", "TooLarge", "gunzip_bounded", "load_npz", "read_bounded",
           "zip_member_bounded"]

NPZ_MAX_BYTES = 1 << 30  # an .npz's arrays, together, in memory (a 2048-d μ and Σ take 32 MiB)
BLOCK = 1 << 20


class TooLarge(UserError, ValueError):
    """A file (or what it decompresses to) is larger than the bound its reader states."""


class BadArchive(UserError, ValueError):
    """A compressed file or archive that cannot be read (truncated, not of its format, lacking what is asked for,
    holding a pickle); `detail` is the message's middle: what is wrong, without the file's name and the fix."""

    def __init__(self, path: Path | str, detail: str, fix: str):
        super().__init__(f"{path}: {detail}; {fix}")
        self.detail = detail


def size_text(nbytes: int) -> str:
    """Bytes in binary units, for the messages: '1.0 GiB', '512 MiB', '300 B'."""
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


def _too_large(what: str, limit: int, fix: str) -> TooLarge:
    return TooLarge(f"{what} is larger than {size_text(limit)}, the bound for it; {fix}")


def read_stream_bounded(stream: BinaryIO, limit: int, what: str, fix: str) -> bytes:
    """At most `limit` bytes of `stream`, read in blocks; TooLarge (naming `what`) as soon as there are more."""
    blocks, total = [], 0
    while True:
        block = stream.read(min(BLOCK, limit + 1 - total))
        if not block:
            return b"".join(blocks)
        total += len(block)
        if total > limit:
            raise _too_large(what, limit, fix)
        blocks.append(block)


def read_bounded(path: Path, limit: int, fix: str) -> bytes:
    """The bytes of the file `path`, refused (TooLarge) when it holds more than `limit`."""
    path = Path(path)
    if path.stat().st_size > limit:
        raise _too_large(f"{path} ({size_text(path.stat().st_size)})", limit, fix)
    with open(path, "rb") as handle:
        return read_stream_bounded(handle, limit, str(path), fix)


def gunzip_bounded(path: Path, limit: int, fix: str) -> bytes:
    """The decompressed bytes of the gzip file `path`, streamed and refused beyond `limit` (a decompression bomb
    stops there); a truncated or non-gzip file is a BadArchive."""
    try:
        with gzip.open(path, "rb") as stream:
            return read_stream_bounded(stream, limit, f"{path} decompressed", fix)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise BadArchive(path, f"not a complete gzip file ({error})", fix) from None


def zip_member_bounded(archive: zipfile.ZipFile, member: str, path: Path, limit: int, fix: str) -> bytes:
    """The bytes of `member` of the open zip `archive` (the file `path`), refused when its declared or actual size
    exceeds `limit`."""
    what = f"{path} member {member}"
    info = archive.getinfo(member)
    if info.file_size > limit:
        raise _too_large(f"{what} ({size_text(info.file_size)} decompressed)", limit, fix)
    try:
        with archive.open(info) as stream:
            return read_stream_bounded(stream, limit, what, fix)
    except (zipfile.BadZipFile, EOFError, zlib.error) as error:
        raise BadArchive(what, f"cannot be read ({error})", fix) from None


def _npy_header(stream: BinaryIO, what: str, fix: str):
    """(shape, dtype) from the header of the .npy `stream` (nothing but the header is read)."""
    from numpy.lib import format as npy

    version = npy.read_magic(stream)
    readers = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
    if version not in readers:
        raise BadArchive(what, f".npy format version {version[0]}.{version[1]}, which this reader does not take",
                         fix)
    shape, _, dtype = readers[version](stream)
    return shape, dtype


def load_npz(path: Path, names: Iterable[str], *, max_bytes: int = NPZ_MAX_BYTES,
             fix: str = "write the file again with numpy.savez") -> dict:
    """{name: array} of the arrays `names` in the .npz `path`, each one's .npy header (shape, dtype) read first:
    an object array (a pickle, which runs code when loaded) is refused, and so is anything whose arrays would take
    more than `max_bytes` together; only then is the data read. A missing array, a truncated member or a file that
    is no .npz is a BadArchive; every refusal is one line naming the file."""
    from numpy.lib import format as npy

    path, arrays, total = Path(path), {}, 0
    try:
        with zipfile.ZipFile(path) as archive:
            members = set(archive.namelist())
            for name in names:
                member, what = f"{name}.npy", f"{path} array {name!r}"
                if member not in members:
                    listed = ", ".join(sorted(m.removesuffix(".npy") for m in members)[:10]) or "none"
                    raise BadArchive(path, f"no array {name!r} (it holds {listed})", fix)
                with archive.open(member) as stream:
                    shape, dtype = _npy_header(stream, what, fix)
                    if dtype.hasobject:
                        raise BadArchive(what, "an array of Python objects (a pickle, which would run code when "
                                         "loaded) is refused", fix)
                    total += math.prod(shape) * dtype.itemsize
                    if total > max_bytes:
                        raise _too_large(f"{what} of shape {shape} and dtype {dtype} (with the arrays before it)",
                                         max_bytes, fix)
                with archive.open(member) as stream:
                    arrays[name] = npy.read_array(stream, allow_pickle=False)
                if arrays[name].shape != tuple(shape):
                    raise BadArchive(what, f"its data do not fill its declared shape {shape}", fix)
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError) as error:
        if isinstance(error, UserError):
            raise
        raise BadArchive(path, f"not a readable .npz ({type(error).__name__}: {str(error)[:200]})", fix) from None
    return arrays
