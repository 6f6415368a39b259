"""Write torch-fidelity's Inception-v3 with random, variance-preserving weights to a .pth file.

For machines that cannot download the TF-ported weights: the benchmark's throughput
and the tests of the real torch-fidelity code path do not depend on the weight
values. Never use these weights for a reported FID.

    python bench/random_inception.py /tmp/random-inception.pth
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn


def write_random_inception(path: Path, seed: int = 0) -> Path:
    from hpc_ncsn.evaluate.inception import inception_skeleton

    model = inception_skeleton(("2048", "logits_unbiased"))  # batch norms as built: mean 0, var 1, scale 1
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


if __name__ == "__main__":
    print(write_random_inception(Path(sys.argv[1] if len(sys.argv) > 1 else "random-inception.pth")))
