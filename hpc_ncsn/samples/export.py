"""Sample folders for other tools: a torch Dataset over the shards, PNG files, one .npz.

- `ShardDataset(folder)`: sample i as a uint8 (C, H, W) tensor, the folder verified
  against its manifest first (hpc_ncsn.samples.validation.verify_folder).
- `export_png(folder, out)`: `000000.png`, `000001.png`, ... (sample index, 8-bit gray
  or RGB, lossless): what torch-fidelity's `fidelity --input1 DIR` and EDM's `fid.py`
  read.
- `export_npz(folder, path)`: one `arr_0` array, uint8 (N, H, W, C), the format of the
  guided-diffusion / ADM evaluation suite.

Every file is published atomically (hpc_ncsn.files), so an interrupted export leaves
whole files only; a rerun writes them again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..files import atomic_path, make_folder
from .shards import read_shard
from .validation import verify_folder

__all__ = ["ShardDataset", "export_npz", "export_png"]


class ShardDataset(torch.utils.data.Dataset):
    """A map-style torch Dataset over a verified sample folder (torch-fidelity takes it as an input)."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = Path(folder)
        manifest, self.infos = verify_folder(self.folder)
        self.meta = manifest["meta"]
        self._starts = np.array([info.start for info in self.infos])
        self._cached: tuple[int, np.ndarray] | None = None  # the last shard read (datasets are read in order)

    def __len__(self) -> int:
        return int(self.meta["num_samples"])

    def images(self, shard: int) -> np.ndarray:
        """uint8 (n, H, W, C) of one shard."""
        if self._cached is None or self._cached[0] != shard:
            self._cached = (shard, read_shard(self.infos[shard].path)[0])
        return self._cached[1]

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} of a folder of {len(self)}")
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        image = self.images(shard)[index - self.infos[shard].start]
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def export_png(folder: Path, out: Path) -> int:
    """Every sample as `<index>.png` in `out`; returns the count."""
    from PIL import Image

    dataset = ShardDataset(folder)
    make_folder(out, "the PNG folder (--png)")
    width = max(6, len(str(len(dataset) - 1)))
    for shard, info in enumerate(dataset.infos):
        for offset, image in enumerate(dataset.images(shard)):
            picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
            with atomic_path(Path(out) / f"{info.start + offset:0{width}d}.png") as tmp:
                picture.save(tmp, format="PNG")
    return len(dataset)


def export_npz(folder: Path, path: Path) -> int:
    """All samples as one `arr_0` uint8 (N, H, W, C) array in `path`; returns the count."""
    dataset = ShardDataset(folder)
    images = np.concatenate([dataset.images(shard) for shard in range(len(dataset.infos))])
    with atomic_path(Path(path)) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, arr_0=images)
    return len(images)
