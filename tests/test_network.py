"""The fast paths hold to the plain fp32 eager baseline: training step, EMA, sampler, compile fallback."""

import contextlib
import warnings

import pytest
import torch
from torch import nn

from hpc_ncsn.config import arm_overrides, load_config
from hpc_ncsn.ema import EMA
from hpc_ncsn.model import build_score_model
from hpc_ncsn.network import CompiledOrEager, NetworkSpeed, native_bf16, resolve_precision, score_function
from hpc_ncsn.sampling import SamplerPlan, annealed_langevin, initial_state
from hpc_ncsn.train import Training
from helpers import TINY


def tiny_config(*extra: str):
    return load_config("configs/debug.yaml", [*TINY, "model.dropout=0.0", *extra])


def failing_backend(graph_module, example_inputs):
    raise RuntimeError("no working compiler on this machine")


def test_auto_precision_is_bf16_exactly_where_the_cpu_has_bf16_instructions():
    """native_bf16 against the kernel's own list of this CPU's flags; auto resolves by it, named values stay."""
    flags = set()
    for line in open("/proc/cpuinfo"):
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if not flags:
        pytest.skip("no x86 flags in /proc/cpuinfo on this machine")
    assert native_bf16(torch.device("cpu")) == bool(flags & {"avx512_bf16", "amx_bf16"})
    assert [resolve_precision("auto", native) for native in (True, False)] == ["bf16", "fp32"]
    assert [resolve_precision(named, native) for named in ("fp32", "bf16") for native in (True, False)] == \
        ["fp32", "fp32", "bf16", "bf16"]
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", True)
    sampler = load_config("configs/debug.yaml", []).sampler
    assert sampler.precision == "auto"
    assert NetworkSpeed.from_sampler(sampler, torch.device("cpu")).precision == \
        resolve_precision("auto", native_bf16(torch.device("cpu")))


def test_compile_failure_falls_back_to_eager_with_a_warning():
    config = tiny_config()
    torch.manual_seed(0)
    model = build_score_model(config.model, config.data).eval()
    x, sigma = torch.rand(3, 1, 8, 8), torch.full((3,), 0.5)
    network = CompiledOrEager(model, backend=failing_backend)
    with pytest.warns(RuntimeWarning, match="torch.compile of the score network failed .*no working compiler"):
        out = network(x, sigma)
    assert not network.is_compiled and "no working compiler" in network.fallback_reason
    assert torch.equal(out, model(x, sigma))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once; from now on plain eager calls
        assert torch.equal(network(x, sigma), model(x, sigma))


def test_errors_of_the_model_itself_are_raised_not_taken_for_compile_failures():
    config = tiny_config()
    network = CompiledOrEager(build_score_model(config.model, config.data), backend="eager")
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 1, 8, 8\)"):
        network(torch.rand(2, 3, 8, 8), torch.ones(2))
    assert network.is_compiled and network.fallback_reason is None


def test_ema_skip_flag_leaves_average_and_count_unchanged_and_loop_equals_foreach():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.SiLU(), nn.Linear(4, 2))
    fast, loop = EMA(model, rate=0.99), EMA(model, rate=0.99, foreach=False)
    for step in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        before = [s.clone() for s in fast.shadow]
        skip = torch.tensor(float(step in (2, 3)))
        fast.update(model, skip=skip)
        loop.update(model, skip=skip)
        if step in (2, 3):
            assert all(torch.equal(a, b) for a, b in zip(before, fast.shadow))
        else:
            assert any(not torch.equal(a, b) for a, b in zip(before, fast.shadow))
        for a, b in zip(fast.shadow, loop.shadow):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert fast.num_updates == loop.num_updates == 4


def _steps(config, steps: int):
    """Run `steps` of train.py's step from the same initialization; per-step losses, final weights, EMA."""
    run = Training.start(config)
    losses = []
    for _ in range(steps):
        run.levels.take(run.accelerator)
        norm = run.step()
        assert float(norm) == float(norm), "a step of the fast path was skipped"
        losses.append(run.levels.mean())
    weights = [p.detach().float().clone() for p in run.accelerator.unwrap_model(run.model).parameters()]
    return losses, weights, [s.clone() for s in run.ema.shadow], run


def test_optimized_training_step_matches_the_fp32_eager_baseline_within_bf16_tolerance(tmp_path):
    common = ("train.lr=1e-3", "train.warmup_steps=1")
    baseline = tiny_config(*common, f"train.out_dir={tmp_path / 'base'}", "train.mixed_precision=no",
                           "train.fused_optimizer=false", "train.channels_last=false", "train.compile=false")
    fast = tiny_config(*common, f"train.out_dir={tmp_path / 'fast'}", "train.mixed_precision=bf16",
                       "train.fused_optimizer=true", "train.channels_last=true", "train.compile=true")
    base_losses, base_weights, base_ema, _ = _steps(baseline, 3)
    fast_losses, fast_weights, fast_ema, run = _steps(fast, 3)
    assert run.run_step.apply == "fused" and run.network.network.is_compiled, run.network.network.fallback_reason
    conv = next(p for p in run.accelerator.unwrap_model(run.model).parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    # Same batches, noise and initialization: the losses differ by bf16 rounding only.
    assert fast_losses == pytest.approx(base_losses, rel=2e-2)
    assert base_losses[0] != base_losses[1]
    # After three Adam steps of size ~1e-3 the weights agree far closer than they moved.
    initial = [p.detach().float() for p in build_score_model(baseline.model, baseline.data).parameters()]
    moved = sum(float((w - i).square().sum()) for w, i in zip(base_weights, initial)) ** 0.5
    apart = sum(float((a - b).square().sum()) for a, b in zip(base_weights, fast_weights)) ** 0.5
    ema_apart = sum(float((a - b).square().sum()) for a, b in zip(base_ema, fast_ema)) ** 0.5
    assert moved > 0.01 and apart < 0.1 * moved and ema_apart < 0.1 * moved


@pytest.mark.parametrize("arm", ["geometric", "snr"])
def test_sampler_with_bf16_channels_last_network_matches_fp32_eager(arm):
    config = tiny_config(*arm_overrides(arm), "noise.num_levels=6")
    torch.manual_seed(0)
    model = build_score_model(config.model, config.data).eval()
    plan = SamplerPlan.from_config(config.noise, config.sampler)
    indices = torch.arange(6)
    x0 = initial_state(0, indices, (1, 8, 8), init="gaussian", sigma_max=config.noise.sigma_max)

    def draw(speed):
        replica = build_score_model(config.model, config.data).eval()
        replica.load_state_dict(model.state_dict())
        with torch.no_grad():
            return annealed_langevin(score_function(replica, speed), x0.clone(), plan, seed=0, indices=indices)

    base = draw(NetworkSpeed())
    layout_only = draw(NetworkSpeed("fp32", channels_last=True))
    fast = draw(NetworkSpeed("bf16", channels_last=True))
    scale = float(base.abs().max())
    # The layout changes the order of float sums only; bf16 moves the result by its rounding.
    torch.testing.assert_close(layout_only, base, rtol=0, atol=1e-5 * scale)
    assert float((fast - base).abs().max()) < 2e-2 * scale
    assert not torch.equal(fast, base)


class HostRead(AssertionError):
    """A tensor's value was read on the host: on a GPU, the host would wait for the device there."""


@contextlib.contextmanager
def no_host_reads(watched=lambda tensor: True):
    """Fail on any Tensor.item/tolist/bool/float/int of a `watched` tensor (on a GPU each one is a sync)."""
    names = ("item", "tolist", "__bool__", "__float__", "__int__")
    saved = {name: getattr(torch.Tensor, name) for name in names}

    def trap(name):
        def read(self, *args, **kwargs):
            if watched(self):
                raise HostRead(f"Tensor.{name} of a {tuple(self.shape)} tensor")
            return saved[name](self, *args, **kwargs)
        return read

    for name in names:
        setattr(torch.Tensor, name, trap(name))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize("fused", ["true", "false"])
def test_the_fused_training_step_reads_nothing_on_the_host_and_the_plain_one_does(tmp_path, fused):
    run = Training.start(tiny_config(f"train.out_dir={tmp_path}", f"train.fused_optimizer={fused}",
                                     "train.mixed_precision=bf16", "train.channels_last=true", "train.grad_accum=2"))
    run.step()
    if fused == "true":
        with no_host_reads():
            norm = run.step()
        assert isinstance(norm, torch.Tensor) and float(norm) > 0
    else:  # the guard catches the host-side read of the skip flag on the plain path
        with pytest.raises(HostRead), no_host_reads():
            run.step()


@pytest.mark.parametrize("arm", ["geometric", "linear", "snr"])
def test_the_sampling_loop_reads_no_chain_value_on_the_host(arm):
    config = tiny_config(*arm_overrides(arm), "noise.num_levels=6")
    model = build_score_model(config.model, config.data).eval()
    plan = SamplerPlan.from_config(config.noise, config.sampler)
    batch = 5  # not the ladder's length, so the ladder's own (host) values stay readable
    indices = torch.arange(batch)
    x = initial_state(0, indices, (1, 8, 8), init="gaussian", sigma_max=config.noise.sigma_max)
    score = score_function(model, NetworkSpeed("bf16", channels_last=True))
    chains = lambda tensor: tensor.ndim == 0 or tensor.shape[0] == batch  # noqa: E731
    with torch.no_grad(), no_host_reads(chains):
        out = annealed_langevin(score, x, plan, seed=0, indices=indices)
    assert out.shape == x.shape and torch.isfinite(out).all()
