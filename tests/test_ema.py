import pytest
import torch
from torch import nn

from hpc_ncsn.ema import EMA


def net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 2))


def test_update_is_the_exponential_moving_average():
    model = net(0)
    ema = EMA(model, rate=0.9, warmup=False)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, model.parameters())]
    for average, want in zip(ema.shadow, expected):
        assert torch.allclose(average, want, atol=1e-6)


def test_warmup_follows_the_tensorflow_schedule_then_the_rate():
    model = nn.Linear(1, 1, bias=False)
    ema = EMA(model, rate=0.999)
    value = model.weight.item()
    expected = value
    for n in range(2000):
        with torch.no_grad():
            model.weight.fill_(float(n))
        ema.update(model)
        rate = min(0.999, (1 + n) / (10 + n))
        expected = rate * expected + (1 - rate) * n
    assert ema.shadow[0].item() == pytest.approx(expected, rel=1e-4)
    assert ema.num_updates == 2000
    assert ema.shadow[0].item() > 1000  # without warm-up it would still weigh the start heavily


def test_bf16_model_keeps_a_float32_average():
    model = net(1).to(torch.bfloat16)
    ema = EMA(model, rate=0.999)
    assert all(s.dtype == torch.float32 for s in ema.shadow)
    ema.update(model)


def test_state_dict_round_trip_and_copy_to():
    model = net(2)
    ema = EMA(model, rate=0.99)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2)
    ema.update(model)
    restored = EMA(net(3), rate=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.rate == 0.99 and restored.num_updates == 1 and restored.warmup
    assert all(torch.equal(a, b) for a, b in zip(restored.shadow, ema.shadow))
    target = net(4)
    restored.copy_to(target)
    assert all(torch.equal(p, s) for p, s in zip(target.parameters(), ema.shadow))


def test_mismatched_model_is_refused():
    ema = EMA(net(0))
    with pytest.raises(ValueError, match="other parameter names"):
        ema.update(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="does not fit"):
        EMA(nn.Linear(3, 2)).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="rate"):
        EMA(net(0), rate=1.0)
