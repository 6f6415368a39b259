"""Image folders as an evaluator input: the files (PNG, JPEG, BMP, WebP, in subfolders too: what EDM,
torch-fidelity and image tools write), in the order of their paths, checked against the data set's size and
channels before a single image is used, and read in chunks that are one process's unit of work."""

from __future__ import annotations

import warnings
from pathlib import Path

from ..config import DataConfig
from ..errors import UserError

__all__ = ["IMAGE_CHUNK", "IMAGE_SUFFIXES", "BadImages", "image_files", "image_pieces", "read_images"]

IMAGE_CHUNK = 1000  # image files read and scored at a time (and one process's unit of work)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class BadImages(UserError, ValueError):
    """An image folder that cannot be scored as it is; the message names the file and the fix."""


def image_files(folder: Path, data_cfg: DataConfig) -> list[Path]:
    """The image files under `folder` (recursively), sorted by path; at least two, each of the data set's size
    and channels (its header read: checked before a single image is used)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BadImages(f"--images {folder}: not a folder; pass the folder that holds the image files")
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if len(files) < 2:
        raise BadImages(f"--images {folder}: {len(files)} image file(s) ({', '.join(IMAGE_SUFFIXES)}); FID needs at "
                        "least 2 (and thousands for a number worth comparing)")
    for path in files:
        _open_image(path, data_cfg).close()
    return files


def image_pieces(folder: Path, data_cfg: DataConfig, rank: int, world: int):
    """(pieces, count, meta) of this rank's share of an image folder: pieces yields (first index, uint8 NHWC
    images) chunk by chunk, count is how many images they hold, meta what the report records of the folder."""
    files = image_files(folder, data_cfg)
    mine = list(range(rank * IMAGE_CHUNK, len(files), world * IMAGE_CHUNK))
    pieces = ((start, read_images(files[start:start + IMAGE_CHUNK], data_cfg)) for start in mine)
    return pieces, sum(len(files[start:start + IMAGE_CHUNK]) for start in mine), {"images": len(files)}


def _open_image(path: Path, data_cfg: DataConfig):
    """A PIL image of `path` whose header says 8-bit gray or RGB of the data set's size; else BadImages."""
    from PIL import Image

    mode, size = {1: "L", 3: "RGB"}[data_cfg.channels], data_cfg.image_size
    try:
        with warnings.catch_warnings():  # PIL warns of a large image; its size is refused below, before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as error:  # a header claiming over twice PIL's MAX_IMAGE_PIXELS
        raise BadImages(f"{path}: its header claims more than {2 * Image.MAX_IMAGE_PIXELS:,} pixels (a decompression "
                        f"bomb), not a {data_cfg.name} image of {size}×{size}; remove it") from None
    except (OSError, ValueError) as error:
        raise BadImages(f"{path}: not a readable image ({error}); remove it or write it again") from None
    if image.mode != mode or image.size != (size, size):
        image.close()
        raise BadImages(f"{path}: {image.mode} {image.size[0]}×{image.size[1]}, but {data_cfg.name} images are "
                        f"{mode} {size}×{size} (8-bit, data.image_size, data.channels); write the images in that "
                        "format or evaluate against a config whose data section matches them")
    return image


def read_images(files: list[Path], data_cfg: DataConfig):
    """uint8 (n, H, W, C) of image files that must match the data set's size and channels."""
    import numpy as np

    size = data_cfg.image_size
    images = np.empty((len(files), size, size, data_cfg.channels), np.uint8)
    for position, path in enumerate(files):
        with _open_image(path, data_cfg) as image:
            try:
                pixels = np.asarray(image)
            except (OSError, ValueError) as error:  # a header that promised more than the file holds
                raise BadImages(f"{path}: not a readable image ({error}); remove it or write it again") from None
        images[position] = pixels.reshape(size, size, data_cfg.channels)
    return images
