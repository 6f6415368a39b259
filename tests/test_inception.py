"""The real torch-fidelity Inception-v3 path, offline: weights made by the test (random, not the TF port).

The numbers are meaningless as image quality; what is tested is that our evaluator
runs torch-fidelity's own extractor from a weights file and agrees with
torch-fidelity's calculate_metrics on the same images. Few images: Inception at
299×299 is slow on a CPU.
"""

import sys
from pathlib import Path

import pytest
import torch

from hpc_ncsn.evaluate.extractors import INCEPTION, extract_features, load_extractor
from hpc_ncsn.evaluate.scores import FeatureStats, frechet_distance, inception_score, kernel_inception_distance
from helpers import UInt8Images

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from random_inception import write_random_inception  # noqa: E402

N = 24
pytestmark = pytest.mark.slow  # Inception at 299×299 on a CPU


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory) -> str:
    return str(write_random_inception(tmp_path_factory.mktemp("inception") / "random-inception.pth"))


def two_image_sets():
    generator = torch.Generator().manual_seed(1)
    smooth = torch.nn.functional.interpolate(torch.rand(2 * N, 3, 8, 8, generator=generator), size=32,
                                             mode="bilinear")
    images = (smooth * 255).round().to(torch.uint8)
    images[N:] = (images[N:].float() * 0.6).round().to(torch.uint8)  # a darker second set
    return images[:N], images[N:]


def test_evaluator_runs_torch_fidelity_inception_from_a_weights_file_and_agrees(random_inception_weights, tmp_path):
    import torch_fidelity

    extractor = load_extractor(INCEPTION, random_inception_weights, torch.device("cpu"), tmp_path)
    first, second = two_image_sets()
    f1, l1 = extract_features(extractor, first, batch_size=8)
    f2, _ = extract_features(extractor, second, batch_size=8)
    assert f1.shape == (N, 2048) and l1.shape == (N, 1008) and torch.isfinite(f1).all()
    stats = [FeatureStats.empty(2048).update(f).to_numpy() for f in (f1, f2)]
    ours = frechet_distance(*stats[0], *stats[1])
    kid, _ = kernel_inception_distance(f1.numpy(), f2.numpy(), subsets=10, subset_size=N // 2)
    isc, _ = inception_score(l1, splits=2)
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8Images(first), input2=UInt8Images(second), fid=True, kid=True, isc=True, kid_subsets=10,
        kid_subset_size=N // 2, isc_splits=2, feature_extractor=INCEPTION,
        feature_extractor_weights_path=random_inception_weights, cuda=False, verbose=False, cache=False,
        batch_size=8, save_cpu_ram=True)
    assert ours > 0
    # 24 samples in 2048 dimensions: rank-deficient covariances, scipy's sqrtm there, our eigendecomposition here.
    assert ours == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)
    assert kid == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)  # theirs: float32 kernels
    assert isc == pytest.approx(theirs["inception_score_mean"], rel=1e-6)


def test_missing_weights_file_is_named():
    with pytest.raises(FileNotFoundError, match="no-such.pth not found"):
        load_extractor(INCEPTION, "/no/such/dir/no-such.pth", torch.device("cpu"))
