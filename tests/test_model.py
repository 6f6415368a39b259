import pytest
import torch

from hpc_ncsn.config import load_config
from hpc_ncsn.model import MLPScore, UNet, build_score_model, count_parameters


def small_unet(**overrides) -> UNet:
    kwargs = dict(in_channels=1, image_size=16, base_channels=16, channel_mults=(1, 2), num_res_blocks=1,
                  attn_resolutions=(8,), dropout=0.0)
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = UNet(**kwargs)
    with torch.no_grad():  # the zero-initialized output convs would hide bugs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("channels, size, mults, attn", [(1, 8, (1, 2), ()), (1, 16, (1, 2), (8,)),
                                                          (3, 32, (1, 2, 2), (16,)), (3, 64, (1, 1, 2, 2), (16,))])
def test_output_has_the_input_shape(channels, size, mults, attn):
    model = small_unet(in_channels=channels, image_size=size, channel_mults=mults, attn_resolutions=attn)
    x = torch.rand(2, channels, size, size)
    assert model(x, torch.tensor([0.1, 5.0])).shape == x.shape


def test_cifar10_config_is_ddpm_sized():
    config = load_config("configs/cifar10.yaml")
    with torch.device("meta"):
        model = build_score_model(config.model, config.data)
    assert 33e6 < count_parameters(model) < 40e6


def test_output_is_divided_by_sigma_and_depends_on_sigma():
    scaled = small_unet()
    raw = small_unet(scale_by_sigma=False)
    raw.load_state_dict(scaled.state_dict())
    x = torch.rand(3, 1, 16, 16)
    sigma = torch.tensor([0.01, 1.0, 50.0])
    with torch.no_grad():
        assert torch.allclose(scaled(x, sigma) * sigma.view(-1, 1, 1, 1), raw(x, sigma), rtol=1e-4, atol=1e-6)
        assert not torch.allclose(raw(x, torch.full((3,), 0.5)), raw(x, torch.full((3,), 2.0)))


def test_examples_are_independent_of_their_batch():
    model = small_unet()
    x, sigma = torch.rand(5, 1, 16, 16), torch.tensor([0.1, 0.2, 0.5, 1.0, 3.0])
    with torch.no_grad():
        whole = model(x, sigma)
        single = torch.cat([model(x[i : i + 1], sigma[i : i + 1]) for i in range(5)])
    torch.testing.assert_close(whole, single, rtol=1e-4, atol=1e-4)


def test_every_parameter_gets_a_gradient():
    model = small_unet().train()
    model(torch.rand(2, 1, 16, 16), torch.tensor([0.3, 3.0])).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_channels_last_and_bf16_autocast():
    model = small_unet()
    x, sigma = torch.rand(2, 1, 16, 16), torch.tensor([0.5, 2.0])
    with torch.no_grad():
        reference = model(x, sigma)
        assert torch.allclose(model(x.to(memory_format=torch.channels_last), sigma), reference, atol=1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x, sigma)
    assert torch.isfinite(low).all()
    assert torch.allclose(low.float(), reference, rtol=0.1, atol=0.1 * reference.abs().max().item())


def test_bad_shapes_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="image_size=10 must be divisible by .* 4"):
        UNet(in_channels=1, image_size=10, channel_mults=(1, 2, 2), attn_resolutions=())
    with pytest.raises(ValueError, match=r"attn_resolutions \[4\] do not occur; .* \[16, 8\]"):
        UNet(in_channels=1, image_size=16, channel_mults=(1, 2), attn_resolutions=(4,))
    model = small_unet()
    with pytest.raises(ValueError, match=r"expected input \(N, 1, 16, 16\)"):
        model(torch.rand(2, 3, 16, 16), 1.0)
    with pytest.raises(ValueError, match="sigma must be a scalar"):
        model(torch.rand(2, 1, 16, 16), torch.ones(3))


def test_mlp_score_net():
    torch.manual_seed(0)
    model = MLPScore(dim=2, hidden=32, depth=2)
    x = torch.randn(7, 2)
    out = model(x, torch.full((7,), 0.5))
    assert out.shape == (7, 2)
    assert not torch.allclose(out * 0.5, model(x, torch.full((7,), 2.0)) * 2.0)
    with pytest.raises(ValueError):
        model(torch.randn(7, 3), 1.0)


def test_unknown_kind_lists_the_choices():
    config = load_config()
    with pytest.raises(ValueError, match="unet, mlp"):
        build_score_model(type("M", (), {"kind": "resnet"})(), config.data)
