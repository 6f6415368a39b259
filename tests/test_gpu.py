"""On a CUDA GPU: what the CPU tests cannot show. Skipped without one; bench/gpu_check.sh runs them on a GPU node.

- bf16 autocast training steps against fp32 ones from the same initialization and batches;
- the fused optimizer, the device-resident data set and the compiled step, running;
- no host synchronisation in a training step or a sampler call (torch.cuda.set_sync_debug_mode("error"));
- a training killed (SIGKILL) and resumed is bit-exact with an uninterrupted one;
- the sampler's Philox noise is the same on the CPU and the GPU;
- the evaluator's FID with the real Inception equals torch-fidelity's on the same images.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hpc_ncsn.config import arm_overrides, load_config
from hpc_ncsn.model import build_score_model
from hpc_ncsn.network import NetworkSpeed, score_function
from hpc_ncsn.rng import sample_normal, sample_uniform
from hpc_ncsn.sampling import SamplerPlan, annealed_langevin, initial_state
from helpers import HANG_GUARD_S, TINY, TINY_TRAINING, UInt8Images

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU (torch.cuda.is_available() is False); bench/gpu_check.sh runs these on a GPU node")]

# bf16 keeps 8 bits of mantissa: three steps of the same batches give losses within 2% of fp32's, and weights
# that differ by far less than the steps moved them (the CPU holds the same bounds: tests/test_network.py).
BF16_LOSS_RTOL = 2e-2
BF16_WEIGHT_SHARE = 0.1


def tiny_config(*extra: str):
    return load_config(ROOT / "configs" / "debug.yaml", [*TINY, "model.dropout=0.0", *extra])


def _steps(config, steps: int):
    from hpc_ncsn.train import Training

    run = Training.start(config)
    losses = []
    for _ in range(steps):
        run.levels.take(run.accelerator)
        run.step()
        losses.append(run.levels.mean())
    weights = [p.detach().float().clone() for p in run.accelerator.unwrap_model(run.model).parameters()]
    return losses, weights, run


def test_bf16_training_steps_match_fp32_within_the_stated_tolerance(tmp_path):
    common = ("train.lr=1e-3", "train.warmup_steps=1", "train.compile=false", "train.fused_optimizer=true")
    base_losses, base_weights, base = _steps(tiny_config(*common, f"train.out_dir={tmp_path / 'a'}",
                                                         "train.mixed_precision=no"), 3)
    fast_losses, fast_weights, _ = _steps(tiny_config(*common, f"train.out_dir={tmp_path / 'b'}",
                                                      "train.mixed_precision=bf16"), 3)
    assert next(base.model.parameters()).device.type == "cuda"
    assert fast_losses == pytest.approx(base_losses, rel=BF16_LOSS_RTOL) and fast_losses != base_losses
    initial = [p.detach().float().cuda() for p in build_score_model(base.config.model, base.config.data).parameters()]
    moved = sum(float((w - i).square().sum()) for w, i in zip(base_weights, initial)) ** 0.5
    apart = sum(float((a - b).square().sum()) for a, b in zip(base_weights, fast_weights)) ** 0.5
    assert moved > 0.01 and apart < BF16_WEIGHT_SHARE * moved


def test_fused_optimizer_device_data_and_compiled_step_run_without_host_syncs(tmp_path):
    from hpc_ncsn.train import Training

    run = Training.start(tiny_config(f"train.out_dir={tmp_path}", "train.mixed_precision=bf16",
                                     "train.fused_optimizer=true", "train.channels_last=true", "train.compile=true"))
    assert run.run_step.apply == "fused" and run.data.device.type == "cuda"
    assert run.network.network.is_compiled, run.network.network.fallback_reason
    for _ in range(3):  # compile and warm up
        run.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        norm = run.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(norm)


@pytest.mark.parametrize("arm", ["geometric", "snr"])
def test_the_sampler_makes_no_host_sync(arm):
    config = tiny_config(*arm_overrides(arm), "noise.num_levels=6")
    model = build_score_model(config.model, config.data).eval().cuda()
    plan = SamplerPlan.from_config(config.noise, config.sampler)
    indices = torch.arange(5, device="cuda")
    x = initial_state(0, indices, (1, 8, 8), init="gaussian", sigma_max=config.noise.sigma_max)
    score = score_function(model, NetworkSpeed("bf16", channels_last=True))
    with torch.no_grad():
        annealed_langevin(score, x.clone(), plan, seed=0, indices=indices)  # warm up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = annealed_langevin(score, x.clone(), plan, seed=0, indices=indices)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert out.device.type == "cuda" and bool(torch.isfinite(out).all())


def test_philox_noise_is_the_same_on_the_cpu_and_the_gpu():
    indices = torch.arange(10_000, 10_064)
    for stream_step in (0, 7):
        cpu = sample_uniform(3, indices, (3, 8, 8), step=stream_step)
        gpu = sample_uniform(3, indices.cuda(), (3, 8, 8), step=stream_step)
        assert torch.equal(cpu, gpu.cpu())  # the same Philox words, exactly
        normal_cpu = sample_normal(3, indices, (3, 8, 8), step=stream_step)
        normal_gpu = sample_normal(3, indices.cuda(), (3, 8, 8), step=stream_step)
        # Box–Muller's log/cos/sqrt: each device's float32 maths library, correctly rounded to within an ulp or two
        torch.testing.assert_close(normal_gpu.cpu(), normal_cpu, rtol=1e-6, atol=1e-6)


def _train(out: Path, steps: int) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs" / "debug.yaml"),
            *TINY_TRAINING, f"train.out_dir={out}", f"train.steps={steps}", "train.checkpoint_every=4",
            "train.log_every=1"]


def _final(out: Path) -> tuple[dict, dict, list]:
    from safetensors.torch import load_file

    latest = sorted((out / "checkpoints").glob("step-*"))[-1]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return load_file(latest / "model.safetensors"), torch.load(latest / "ema.pt", weights_only=True), losses


def test_a_killed_and_resumed_gpu_training_is_bit_exact(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run(_train(tmp_path / "reference", 40), env=env, check=True, capture_output=True, timeout=HANG_GUARD_S)
    out = tmp_path / "killed"
    process = subprocess.Popen(_train(out, 40), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + HANG_GUARD_S
    while not list((out / "checkpoints").glob("step-*")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the training ended before it could be killed"
    subprocess.run(_train(out, 40), env=env, check=True, capture_output=True, timeout=HANG_GUARD_S)
    weights, ema, losses = _final(out)
    weights_ref, ema_ref, losses_ref = _final(tmp_path / "reference")
    assert all(torch.equal(weights[key], weights_ref[key]) for key in weights_ref) and weights.keys() == weights_ref.keys()
    assert all(torch.equal(a, b) for a, b in zip(ema["ema"]["shadow"], ema_ref["ema"]["shadow"]))
    assert losses[-1] == losses_ref[-1] and len(losses) >= len(losses_ref)


def test_evaluator_fid_with_the_real_inception_equals_torch_fidelity_on_the_gpu():
    import torch_fidelity

    from hpc_ncsn.evaluate.extractors import INCEPTION, extract_features, load_extractor
    from hpc_ncsn.evaluate.inception import prepared_default
    from hpc_ncsn.evaluate.scores import FeatureStats, frechet_distance
    from hpc_ncsn.files import cache_dir

    weights = os.environ.get("HPC_NCSN_INCEPTION_WEIGHTS") or (
        str(prepared_default(cache_dir()).path) if prepared_default(cache_dir()) else None)
    if weights is None:
        pytest.skip("no real Inception: run 'hpc-ncsn fetch inception --from FILE' or set HPC_NCSN_INCEPTION_WEIGHTS")
    generator = torch.Generator().manual_seed(1)
    count = 2000
    smooth = torch.nn.functional.interpolate(torch.rand(2 * count, 3, 8, 8, generator=generator), size=32,
                                             mode="bilinear")
    images = (smooth * 255).round().to(torch.uint8)
    images[count:] = (images[count:].float() * 0.7).round().to(torch.uint8)
    first, second = images[:count], images[count:]
    extractor = load_extractor(INCEPTION, weights, torch.device("cuda"))
    stats = [FeatureStats.empty(2048).update(extract_features(extractor, part)[0]).to_numpy()
             for part in (first, second)]
    ours = frechet_distance(*stats[0], *stats[1])
    theirs = torch_fidelity.calculate_metrics(
        input1=UInt8Images(first), input2=UInt8Images(second), fid=True, feature_extractor=INCEPTION,
        feature_extractor_weights_path=weights, cuda=True, verbose=False, cache=False, batch_size=200)
    print(f"FID of {count} vs {count} images on the GPU: ours {ours:.6f}, torch-fidelity "
          f"{theirs['frechet_inception_distance']:.6f}")
    # Both accumulate float64 statistics of the same float32 features; the trace term: see test_real_data.py.
    assert ours == pytest.approx(theirs["frechet_inception_distance"], rel=1e-5)
