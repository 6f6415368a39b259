import pytest
import torch

from hpc_ncsn.config import load_config
from hpc_ncsn.data import DataUnavailableError, load_images, resize_uint8, to_model_scale, to_uint8, toy_mixture


def test_digits_are_the_real_scikit_learn_digits_resized():
    images = load_images(load_config(None, ["data.name=digits", "data.image_size=16", "data.channels=1"]).data)
    assert images.shape == (1797, 1, 16, 16) and images.dtype == torch.uint8
    assert images.min() == 0 and images.max() >= 250
    native = load_images(load_config(None, ["data.image_size=8"]).data)
    from sklearn.datasets import load_digits

    expected = torch.from_numpy(load_digits().images * 255 / 16).round().to(torch.uint8)
    assert torch.equal(native[:, 0], expected)


def test_digits_as_rgb_repeat_the_gray_channel():
    images = load_images(load_config(None, ["data.image_size=8", "data.channels=3"]).data)
    assert images.shape == (1797, 3, 8, 8)
    assert torch.equal(images[:, 0], images[:, 2])


def test_uint8_round_trip_is_exact():
    images = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = to_model_scale(images)
    assert x.dtype == torch.float32 and x.min() == 0 and x.max() == 1
    assert torch.equal(to_uint8(x), images)


def test_to_uint8_clamps_and_refuses_nan():
    assert to_uint8(torch.tensor([-0.5, 0.5, 1.7])).tolist() == [0, 128, 255]
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.tensor([0.1, float("nan")]))
    with pytest.raises(TypeError, match="floating-point"):
        to_uint8(torch.tensor([1, 2]))


def test_model_scale_refuses_wrong_dtype():
    with pytest.raises(TypeError, match="expected uint8 images.*float32.*to_uint8"):
        to_model_scale(torch.rand(2, 3, 4, 4))


def test_resize_keeps_uint8_and_range():
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    resized = resize_uint8(images, 32)
    assert resized.shape == (3, 1, 32, 32) and resized.dtype == torch.uint8
    assert resize_uint8(images, 8) is images


def test_cifar10_offline_names_where_to_put_the_files(tmp_path):
    config = load_config(None, ["data.name=cifar10", "data.channels=3", "data.image_size=32",
                                "model.attn_resolutions=[16]", f"data.data_root={tmp_path}"])
    with pytest.raises(DataUnavailableError, match=rf"{tmp_path}.*cifar-10-batches-py.*data.download=true"):
        load_images(config.data)


def test_mixture_score_is_the_gradient_of_its_log_density():
    mixture = toy_mixture([[-5, -5], [5, 5], [0, 4]], [1, 4, 2], 0.8)
    x = torch.randn(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    for sigma in (0.0, 0.5, 3.0):
        variance = mixture.std**2 + sigma**2
        y = x.clone().requires_grad_(True)
        squared = ((y[:, None] - mixture.means[None]) ** 2).sum(-1)
        log_p = torch.logsumexp(torch.log(mixture.weights) - 0.5 * squared / variance, dim=1).sum()
        (grad,) = torch.autograd.grad(log_p, y)
        assert torch.allclose(mixture.score(x, sigma), grad, atol=1e-10)


def test_mixture_samples_follow_the_weights():
    mixture = toy_mixture([[-5, -5], [5, 5]], [1, 4], 1.0)
    samples = mixture.sample(20_000, torch.Generator().manual_seed(0))
    assert torch.allclose(mixture.mode_weights(samples), torch.tensor([0.2, 0.8], dtype=torch.float64), atol=0.01)


def test_mixture_rejects_bad_parameters():
    with pytest.raises(ValueError):
        toy_mixture([[0, 0], [1, 1]], [1.0], 1.0)
    with pytest.raises(ValueError):
        toy_mixture([[0, 0]], [1.0], 0.0)
