from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hpc_ncsn.config import load_config
from hpc_ncsn.model import MLPScore, UNet, build_score_model, count_parameters

CIFAR_MODEL = SimpleNamespace(kind="unet", base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                              attn_resolutions=(16,), dropout=0.1, scale_by_sigma=True, mlp_hidden=128, mlp_depth=3)
CIFAR_DATA = SimpleNamespace(channels=3, image_size=32)


def small_unet(**overrides) -> UNet:
    """A narrow U-Net in eval mode whose zero-initialised convs are perturbed, so that every path matters."""
    kwargs = dict(in_channels=1, image_size=16, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                  attn_resolutions=(8,), dropout=0.0)
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = UNet(**kwargs)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("channels, size, mults, attn", [(1, 8, (1, 2), ()), (1, 16, (1, 2), (8,)),
                                                          (3, 32, (1, 2, 2), (16,)), (3, 64, (1, 1, 2, 2), (16, 8))])
def test_output_has_the_input_shape(channels, size, mults, attn):
    model = small_unet(in_channels=channels, image_size=size, channel_mults=mults, attn_resolutions=attn,
                       base_channels=8)
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        assert model(x, torch.tensor([0.1, 5.0])).shape == x.shape


def test_cifar10_config_is_ddpm_sized():
    config = load_config(Path(__file__).resolve().parent.parent / "configs/cifar10.yaml")
    with torch.device("meta"):
        model = build_score_model(config.model, config.data)
    assert isinstance(model, UNet)
    assert 33e6 < count_parameters(model) < 40e6


def test_count_parameters_skips_frozen_ones():
    model = MLPScore(dim=2, hidden=4, depth=1)
    total = count_parameters(model)
    model.net[0].weight.requires_grad_(False)
    assert count_parameters(model) == total - model.net[0].weight.numel()


def test_output_is_divided_by_sigma_and_depends_on_sigma():
    scaled = small_unet()
    raw = small_unet(scale_by_sigma=False)
    raw.load_state_dict(scaled.state_dict())
    x = torch.rand(3, 1, 16, 16)
    sigma = torch.tensor([0.01, 1.0, 50.0])
    with torch.no_grad():
        torch.testing.assert_close(scaled(x, sigma) * sigma.view(-1, 1, 1, 1), raw(x, sigma), rtol=1e-4, atol=1e-6)
        assert not torch.allclose(raw(x, torch.full((3,), 0.5)), raw(x, torch.full((3,), 0.52)), atol=1e-4)


def test_scalar_sigma_is_broadcast():
    model = small_unet()
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        reference = model(x, torch.full((3,), 0.7))
        torch.testing.assert_close(model(x, 0.7), reference)
        torch.testing.assert_close(model(x, torch.tensor(0.7)), reference)


def test_examples_are_independent_of_their_batch():
    model = small_unet()
    x, sigma = torch.rand(4, 1, 16, 16), torch.tensor([0.5, 1.0, 2.0, 3.0])
    with torch.no_grad():
        whole = model(x, sigma)
        single = torch.cat([model(x[i : i + 1], sigma[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(whole, single, rtol=1e-5, atol=1e-5)


def test_every_parameter_gets_a_gradient():
    model = small_unet().train()
    model(torch.rand(2, 1, 16, 16), torch.tensor([0.3, 3.0])).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_channels_last_matches_contiguous():
    model = small_unet()
    x, sigma = torch.rand(2, 1, 16, 16), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        reference = model(x, sigma)
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last), sigma), reference,
                                   rtol=0, atol=1e-5)
        model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last), sigma), reference,
                                   rtol=0, atol=1e-5)


def test_bf16_autocast_is_finite_and_close():
    model = small_unet()
    x, sigma = torch.rand(2, 1, 16, 16), torch.tensor([0.01, 2.0])
    with torch.no_grad():
        reference = model(x, sigma)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, sigma)
    assert torch.isfinite(low).all()
    assert torch.allclose(low.float(), reference, rtol=0.1, atol=0.05 * reference.abs().max().item())


def test_bad_construction_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"image_size=10 must be divisible by .* = 4 .*channel_mults=\(1, 2, 2\)"):
        UNet(in_channels=1, image_size=10, channel_mults=(1, 2, 2), attn_resolutions=())
    with pytest.raises(ValueError, match=r"attn_resolutions \[4\] do not occur .* valid resolutions are \[16, 8\]"):
        UNet(in_channels=1, image_size=16, channel_mults=(1, 2), attn_resolutions=(4,))


def test_bad_inputs_are_refused_with_what_was_expected():
    model = small_unet()
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 1, 16, 16\)"):
        model(torch.rand(2, 3, 16, 16), 1.0)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 1, 16, 16\)"):
        model(torch.rand(2, 1, 32, 32), 1.0)
    with pytest.raises(ValueError, match=r"sigma must be a scalar or have shape \(2,\)"):
        model(torch.rand(2, 1, 16, 16), torch.ones(3))


def test_mlp_score_net():
    torch.manual_seed(0)
    model = MLPScore(dim=2, hidden=32, depth=2)
    raw = MLPScore(dim=2, hidden=32, depth=2, scale_by_sigma=False)
    raw.load_state_dict(model.state_dict())
    x = torch.randn(7, 2)
    with torch.no_grad():
        out = model(x, torch.full((7,), 0.5))
        assert out.shape == (7, 2)
        torch.testing.assert_close(out * 0.5, raw(x, 0.5))
        assert not torch.allclose(raw(x, 0.5), raw(x, 0.52), atol=1e-4)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 2\)"):
        model(torch.randn(7, 3), 1.0)


def test_mlp_handles_other_dims_and_odd_widths():
    model = MLPScore(dim=5, hidden=33, depth=1)
    assert model(torch.randn(4, 5), 1.0).shape == (4, 5)


def test_build_mlp_and_unknown_kind():
    model = build_score_model(SimpleNamespace(**{**vars(CIFAR_MODEL), "kind": "mlp", "mlp_hidden": 16}), CIFAR_DATA)
    assert isinstance(model, MLPScore)
    assert model(torch.randn(3, 2), 0.1).shape == (3, 2)
    with pytest.raises(ValueError, match=r"unknown model kind 'resnet'; valid kinds: unet, mlp"):
        build_score_model(SimpleNamespace(**{**vars(CIFAR_MODEL), "kind": "resnet"}), CIFAR_DATA)
