"""Training end to end, in real processes: 1 and 2 gloo ranks, SIGKILL and resume, NaN skips."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hpc_ncsn.config import load_config
from hpc_ncsn.train import train
from hpc_ncsn.train.batches import batch_indices
from hpc_ncsn.train.run_folder import DamagedCheckpoints, RunFolder
from helpers import HANG_GUARD_S, TINY_TRAINING, free_port

slow = pytest.mark.slow  # real processes (subprocess, gloo, DeepSpeed)

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}  # threads: the product sets them


def train_cmd(out: Path, *extra: str, launcher: tuple[str, ...] = ()) -> list[str]:
    script = [str(ROOT / "train.py"), "--config", str(ROOT / "configs/debug.yaml"), *TINY_TRAINING,
              f"train.out_dir={out}", *extra]
    return [*launcher, *script] if launcher else [sys.executable, *script]


def accelerate(processes: int, *flags: str) -> tuple[str, ...]:
    return (str(BIN / "accelerate"), "launch", "--num_processes", str(processes), "--main_process_port",
            str(free_port()), *flags)


def run(cmd: list[str], timeout: int = HANG_GUARD_S, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout, **kwargs)
    assert result.returncode == 0, f"{cmd}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-5000:]}"
    return result


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_state(out: Path) -> tuple[dict, dict]:
    latest = sorted((out / "checkpoints").glob("step-*"))[-1]
    weights = load_file(latest / "model.safetensors")
    ema = torch.load(latest / "ema.pt", weights_only=True)["ema"]["shadow"]
    return weights, ema


def assert_same(a: dict, b: dict, exact: bool = True, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


@slow
def test_short_training_on_digits_lowers_the_loss(tmp_path):
    out = tmp_path / "run"
    run(train_cmd(out, "train.steps=40", "train.checkpoint_every=40", "train.sample_every=40"))
    losses = [m["loss"] for m in metrics(out)]
    assert len(losses) == 20 and all(m["images_per_s"] > 0 for m in metrics(out))
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3
    record = metrics(out)[-1]
    assert len(record["loss_per_level"]) == 10 and record["skipped_steps"] == 0
    assert {"step", "loss", "grad_norm", "lr", "images_per_s"} <= record.keys()
    grid = out / "samples" / "step-00000040.png"
    assert grid.read_bytes()[:4] == b"\x89PNG"
    from PIL import Image

    assert Image.open(grid).width >= 400  # small images enlarged to be judged without zooming
    assert load_config(out / "config.yaml").train.steps == 40


@slow
def test_one_and_two_processes_train_the_same_model(tmp_path):
    # fp32 both (auto would be bf16 alone on a CPU with bf16 instructions and fp32 under accelerate launch)
    common = ["train.steps=6", "train.checkpoint_every=3", "model.dropout=0.0", "train.mixed_precision=no"]
    single = run(train_cmd(tmp_path / "one", *common))
    result = subprocess.run(train_cmd(tmp_path / "two", *common, launcher=accelerate(2, "--multi_gpu")),
                            env={**env(), "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True,
                            timeout=HANG_GUARD_S)
    assert result.returncode == 0, result.stderr[-5000:]
    # DeepSpeed is installed but not imported off its path: its import warns "Setting accelerator to CPU".
    for done in (single, result):
        assert "Setting accelerator to CPU" not in done.stdout + done.stderr
    assert "2 process(es), global batch 16 = 2 × 1 × 8" in result.stdout + result.stderr
    assert json.loads(next((tmp_path / "two/checkpoints").glob("step-00000006")).joinpath("meta.json")
                      .read_text())["world_size"] == 2
    # Same global batch, noise and init: only the order of float sums differs, which
    # Adam's first steps amplify for parameters whose gradient is nearly zero.
    losses = [[m["loss"] for m in metrics(tmp_path / name)] for name in ("one", "two")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    weights_one, ema_one = final_state(tmp_path / "one")
    weights_two, ema_two = final_state(tmp_path / "two")
    earlier = load_file(tmp_path / "one/checkpoints/step-00000003/model.safetensors")
    moved = l2({k: weights_one[k] - earlier[k] for k in weights_one})
    assert l2({k: weights_one[k] - weights_two[k] for k in weights_one}) < 0.05 * moved
    assert l2({k: ema_one[k] - ema_two[k] for k in ema_one}) < 0.05 * moved


def l2(tensors: dict) -> float:
    return float(sum(t.double().square().sum() for t in tensors.values()).sqrt())


def largest_difference(a: dict, b: dict) -> float:
    """The largest entry-wise |a - b| over two state dicts with the same keys."""
    return max(float((a[key] - b[key]).abs().max()) for key in b)


@slow
def test_gradient_accumulation_matches_the_whole_batch(tmp_path):
    # fp32: the sums' order is all that differs (bf16 rounds each micro-batch's activations on its own)
    common = ["train.steps=4", "train.checkpoint_every=2", "model.dropout=0.0", "train.mixed_precision=no"]
    run(train_cmd(tmp_path / "whole", *common))
    run(train_cmd(tmp_path / "accumulated", *common, "train.grad_accum=4"))
    losses = [[m["loss"] for m in metrics(tmp_path / name)] for name in ("whole", "accumulated")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    whole, _ = final_state(tmp_path / "whole")
    accumulated, _ = final_state(tmp_path / "accumulated")
    earlier = load_file(tmp_path / "whole/checkpoints/step-00000002/model.safetensors")
    assert l2({k: whole[k] - accumulated[k] for k in whole}) < 0.05 * l2({k: whole[k] - earlier[k] for k in whole})


@slow
def test_bf16_mixed_precision_trains_on_cpu(tmp_path):
    run(train_cmd(tmp_path / "bf16", "train.steps=4", "train.mixed_precision=bf16"))
    records = metrics(tmp_path / "bf16")
    assert all(r["loss"] == r["loss"] and r["skipped_steps"] == 0 for r in records)
    weights, ema = final_state(tmp_path / "bf16")
    assert all(t.dtype == torch.float32 for t in weights.values())  # fp32 master weights, bf16 compute


@slow
def test_the_launchers_precision_is_used_unless_the_run_config_names_one(tmp_path):
    """`accelerate launch --mixed_precision bf16 train.py` trains in bf16 (train.mixed_precision: auto);
    an explicit run-config value wins with a warning naming both; without a launcher, auto is bf16 where
    this CPU computes it natively (AVX-512 BF16, AMX) and fp32 elsewhere; the precision in effect is recorded."""
    from hpc_ncsn.network import native_bf16

    common = ["train.steps=2", "train.checkpoint_every=2", "train.log_every=1"]
    launched = accelerate(1, "--mixed_precision", "bf16")
    quiet = run(train_cmd(tmp_path / "auto", *common, launcher=launched))
    loud = run(train_cmd(tmp_path / "explicit", *common, "train.mixed_precision=no", launcher=launched))
    plain = run(train_cmd(tmp_path / "plain", *common))
    fp32_alone = run(train_cmd(tmp_path / "fp32", *common, "train.mixed_precision=no"))
    warning = "train.mixed_precision=no overrides the launcher's --mixed_precision bf16"
    assert warning in loud.stderr and "overrides" not in quiet.stderr + plain.stderr + fp32_alone.stderr
    native = "bf16" if native_bf16(torch.device("cpu")) else "no"
    for name, precision in (("auto", "bf16"), ("explicit", "no"), ("plain", native), ("fp32", "no")):
        assert {record["mixed_precision"] for record in metrics(tmp_path / name)} == {precision}, name
        meta = json.loads((tmp_path / name / "checkpoints/step-00000002/meta.json").read_text())
        assert meta["mixed_precision"] == precision, name
    fp32 = final_state(tmp_path / "fp32")[0]
    # fp32 under the launcher = fp32 without it, up to the summation order of its thread count
    assert_same(final_state(tmp_path / "explicit")[0], fp32, exact=False, atol=1e-5)
    auto = final_state(tmp_path / "auto")[0]
    assert largest_difference(auto, fp32) > 1e-4  # bf16 autocast really ran
    plain_state = final_state(tmp_path / "plain")[0]
    if native == "bf16":
        assert largest_difference(plain_state, fp32) > 1e-4
    else:
        assert_same(plain_state, fp32, exact=False, atol=1e-5)


@slow
def test_a_launchers_gradient_accumulation_and_compiler_are_the_run_configs_with_one_warning_line(tmp_path):
    """`ACCELERATE_GRADIENT_ACCUMULATION_STEPS` (what `accelerate launch --gradient_accumulation_steps` exports, and
    what a user may export around `accelerate launch`) is what Accelerate's own Accelerator takes in place of the
    value a script passes it, and `accelerate launch --dynamo_backend` makes its `prepare` compile the model. Here
    train.grad_accum and train.compile win, in every launch: the training equals the one without them, bit for
    bit, and one warning line names both values."""
    common = ["train.steps=2", "train.checkpoint_every=2", "train.log_every=1"]
    outcomes = {}
    for name, flags, extra in (("plain", (), {}), ("asked", (), {"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "2"}),
                               ("compiled", ("--dynamo_backend", "inductor"), {})):
        result = subprocess.run(train_cmd(tmp_path / name, *common, launcher=accelerate(1, *flags)),
                                env={**env(), **extra}, capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert result.returncode == 0, result.stderr[-3000:]
        outcomes[name] = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert outcomes["plain"] == []
    assert outcomes["asked"] == ["warning: train.grad_accum=1 overrides the launcher's --gradient_accumulation_steps "
                                 "(ACCELERATE_GRADIENT_ACCUMULATION_STEPS), 2; the run config decides batch, "
                                 "accumulation and clipping: set train.* to change them"]
    assert outcomes["compiled"] == ["warning: the network runs eagerly (train.compile=false, or DeepSpeed), "
                                    "overriding the launcher's --dynamo_backend inductor (ACCELERATE_DYNAMO_BACKEND); "
                                    "the run config decides compilation: set train.compile to change it"]
    for name in ("asked", "compiled"):
        for ours, theirs in zip(final_state(tmp_path / "plain"), final_state(tmp_path / name)):
            assert_same(ours, theirs)
        assert [m["loss"] for m in metrics(tmp_path / "plain")] == [m["loss"] for m in metrics(tmp_path / name)]


def test_a_launcher_precision_training_cannot_use_is_one_line_naming_the_flag(monkeypatch):
    """What `accelerate launch --mixed_precision fp8|fp16` tells its processes, on this CPU."""
    from hpc_ncsn.config import ConfigError
    from hpc_ncsn.train.session import resolve_mixed_precision

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(ConfigError, match="launcher asks for mixed precision 'fp8'.*--mixed_precision no, bf16, fp16"):
        resolve_mixed_precision("auto", on_cpu=True)
    assert resolve_mixed_precision("bf16", on_cpu=True) == "bf16"
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(ConfigError, match="the launcher's --mixed_precision fp16 needs a GPU"):
        resolve_mixed_precision("auto", on_cpu=True)


def kill_when(process: subprocess.Popen, condition, timeout: float = HANG_GUARD_S) -> bool:
    """SIGKILL `process` once condition() holds; False if it exited first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return False
        if condition():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.0005)
    raise TimeoutError("condition never held")


def resume_and_compare(out: Path, reference: Path, steps: list[str]) -> None:
    """Resume the run in `out` to the end: weights, EMA and every logged loss equal the uninterrupted `reference`."""
    result = run(train_cmd(out, *steps))
    assert "resumed from" in result.stdout + result.stderr
    weights_ref, ema_ref = final_state(reference)
    weights_out, ema_out = final_state(out)
    assert_same(weights_ref, weights_out)
    assert_same(ema_ref, ema_out)
    assert [m["loss"] for m in metrics(out)] == [m["loss"] for m in metrics(reference)]


@slow
def test_sigkill_at_any_point_then_resume_is_bit_identical(tmp_path):
    steps = ["train.steps=14", "train.checkpoint_every=2", "train.keep_checkpoints=2", "train.log_every=1"]
    reference = tmp_path / "reference"
    run(train_cmd(reference, *steps))

    out = tmp_path / "killed"
    checkpoints = out / "checkpoints"
    saving = lambda: any(checkpoints.glob(".tmp-step-*"))  # noqa: E731
    killed_during_save = 0
    for attempt in range(4):  # Kill during a save until one lands inside it.
        process = subprocess.Popen(train_cmd(out, *steps), env=env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        if not kill_when(process, saving):
            break
        killed_during_save += any(checkpoints.glob(".tmp-step-*"))
        if killed_during_save:
            break
    assert killed_during_save, "no kill landed during a checkpoint save"
    for delay in (0.3, 0.9):  # Then kill mid-run, between or during steps.
        process = subprocess.Popen(train_cmd(out, *steps), env=env(), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        started = time.time()
        kill_when(process, lambda: any(checkpoints.glob("step-*")) and time.time() - started > 4 + delay)
    resume_and_compare(out, reference, steps)
    assert [m["step"] for m in metrics(out)] == list(range(1, 15))
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-00000012", "step-00000014"]


@slow
def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes_bit_identical(tmp_path):
    steps = ["train.steps=30", "train.checkpoint_every=100", "train.log_every=1"]
    reference = tmp_path / "reference"
    run(train_cmd(reference, *steps))
    out = tmp_path / "interrupted"
    process = subprocess.Popen(train_cmd(out, *steps), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    deadline = time.time() + HANG_GUARD_S  # a hang guard only: a busy machine may take minutes to reach step 5
    while not ((out / "metrics.jsonl").is_file() and len(metrics(out)) >= 5) and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)  # Ctrl-C at the terminal
    stdout, stderr = process.communicate(timeout=HANG_GUARD_S)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted: saving at the next safe point" in stderr and "Traceback" not in stderr
    stopped = [line for line in stderr.splitlines() if line.startswith("stopped: ")]
    assert len(stopped) == 1 and "stop requested (SIGINT)" in stopped[0] and "rerun to resume" in stopped[0]
    saved = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert len(saved) == 1 and 5 <= int(saved[0].split("-")[1]) < 30  # no checkpoint was due: the one Ctrl-C made
    resume_and_compare(out, reference, steps)


NAN_SCRIPT = """
import sys, torch
import hpc_ncsn.train.step as step
from hpc_ncsn.cli import train_main

real, calls, bad = step.dsm_loss, [0], {bad}

def poisoned(*args, **kwargs):
    out = real(*args, **kwargs)
    calls[0] += 1
    if calls[0] in bad:
        return type(out)(out.loss * float("nan"), out.per_example, out.levels)
    return out

step.dsm_loss = poisoned
sys.exit(train_main(["--config", *sys.argv[1:]]))  # train.py, with its losses poisoned
"""


def nan_run(tmp_path: Path, bad: str, *extra: str) -> subprocess.CompletedProcess:
    script = tmp_path / "nan_train.py"
    script.write_text(NAN_SCRIPT.format(bad=bad))
    cmd = [sys.executable, str(script), str(ROOT / "configs/debug.yaml"), *TINY_TRAINING,
           f"train.out_dir={tmp_path / 'run'}", *extra]
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=HANG_GUARD_S)


@slow
def test_non_finite_steps_are_skipped_without_touching_weights_or_ema(tmp_path):
    result = nan_run(tmp_path, "{5, 6}", "train.steps=8", "train.checkpoint_every=1", "train.keep_checkpoints=10",
                     "train.log_every=1")
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "run" / "checkpoints"

    def state(step):
        folder = root / f"step-{step:08d}"
        return load_file(folder / "model.safetensors"), torch.load(folder / "ema.pt", weights_only=True)["ema"]

    (w4, e4), (w6, e6), (w7, e7) = state(4), state(6), state(7)
    assert_same(w4, w6)
    assert_same(e4["shadow"], e6["shadow"])
    assert any(not torch.equal(w6[k], w7[k]) for k in w6)
    assert any(not torch.equal(e6["shadow"][k], e7["shadow"][k]) for k in w6)
    records = metrics(tmp_path / "run")
    assert [r["skipped_steps"] for r in records] == [0, 0, 0, 0, 1, 2, 2, 2]
    assert all(r["grad_norm"] != r["grad_norm"] for r in records[4:6])


@slow
def test_too_many_consecutive_skips_stop_the_run_with_a_clear_error(tmp_path):
    result = nan_run(tmp_path, "range(1, 10**6)", "train.steps=50", "train.max_consecutive_skips=3")
    assert result.returncode != 0
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: 3 consecutive steps had a non-finite loss or gradient (step 3)" in result.stderr


def test_batches_cover_each_epoch_exactly_once():
    seen = torch.cat([batch_indices(100, 16, step, seed=3) for step in range(25)])
    for epoch in range(4):
        assert sorted(seen[epoch * 100 : (epoch + 1) * 100].tolist()) == list(range(100))
    assert not torch.equal(seen[:100], seen[100:200])
    assert torch.equal(batch_indices(100, 16, 7, seed=3), batch_indices(100, 16, 7, seed=3))
    assert not torch.equal(batch_indices(100, 16, 7, seed=3), batch_indices(100, 16, 7, seed=4))


def test_resuming_with_another_experiment_config_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text((ROOT / "configs/debug.yaml").read_text())
    folder = RunFolder(tmp_path)
    folder.check(load_config(ROOT / "configs/debug.yaml", ["train.steps=9999", "sampler.steps_per_level=9"]))
    with pytest.raises(ValueError, match=r"noise.sigma_max: 8.54 → 20.0.*pick a new train.out_dir"):
        folder.check(load_config(ROOT / "configs/debug.yaml", ["noise.sigma_max=20"]))
    with pytest.raises(ValueError, match=r"train.seed: 0 → 1"):
        folder.check(load_config(ROOT / "configs/debug.yaml", ["train.seed=1"]))


@slow
def test_batch_size_must_split_over_processes_and_accumulation(tmp_path):
    result = subprocess.run(train_cmd(tmp_path / "r", "train.batch_size=10", "train.grad_accum=3", "train.steps=1"),
                            env=env(), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode != 0
    assert "train.batch_size=10 must be divisible by processes × grad_accum = 1 × 3" in result.stderr


def needs(module: str, extra: str) -> None:
    """Skip, saying how to enable the test, when an optional extra is not installed (CI installs .[dev])."""
    pytest.importorskip(module, reason=f"{module} is not installed: pip install -e '.[{extra}]' (or '.[dev]') "
                                       "runs this test")


def deepspeed_env(tmp_path: Path) -> dict:
    cache = Path(os.environ.get("HPC_NCSN_TEST_CACHE", Path.home() / ".cache" / "hpc_ncsn-tests"))
    return {**env(), "TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions")}


@slow
def test_deepspeed_zero2_on_cpu_trains_resumes_and_exports_plain_weights(tmp_path):
    from hpc_ncsn.checkpoint import load_ema_model

    needs("deepspeed", "deepspeed")
    out = tmp_path / "ds"
    launcher = accelerate(2, "--config_file", str(ROOT / "configs/accelerate/zero2.yaml"))
    for steps in (4, 6):
        result = subprocess.run(train_cmd(out, f"train.steps={steps}", "train.checkpoint_every=2", launcher=launcher),
                                env=deepspeed_env(tmp_path), capture_output=True, text=True, timeout=HANG_GUARD_S)
        assert result.returncode == 0, result.stderr[-5000:]
    assert "resumed from" in result.stdout + result.stderr and "at step 4" in result.stdout + result.stderr
    assert (out / "checkpoints/step-00000006/pytorch_model").is_dir()
    records = metrics(out)
    assert [r["step"] for r in records] == [2, 4, 6]
    assert all(r["loss"] == r["loss"] and r["skipped_steps"] == 0 for r in records)
    model, config, step = load_ema_model(out / "checkpoints/step-00000006")
    assert step == 6 and config.train.steps == 6
    x = torch.rand(2, 1, 8, 8)
    assert torch.isfinite(model(x, torch.tensor([0.1, 1.0]))).all()


@slow
def test_deepspeed_zero3_is_refused_with_the_reason(tmp_path):
    needs("deepspeed", "deepspeed")
    zero3 = tmp_path / "zero3.yaml"
    zero3.write_text((ROOT / "configs/accelerate/zero2.yaml").read_text().replace("zero_stage: 2", "zero_stage: 3"))
    launcher = accelerate(1, "--config_file", str(zero3))
    result = subprocess.run(train_cmd(tmp_path / "r", "train.steps=2", launcher=launcher),
                            env=deepspeed_env(tmp_path), capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert result.returncode != 0
    assert "ZeRO-3 shards the parameters" in result.stderr and "zero2.yaml" in result.stderr


@slow
def test_two_simulated_nodes_on_loopback_train_together(tmp_path):
    out = tmp_path / "nodes"
    port = free_port()
    node_env = {**env(), "ACCELERATE_USE_CPU": "1"}
    nodes = []
    for rank in (0, 1):
        launcher = (str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
                    "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port))
        nodes.append(subprocess.Popen(train_cmd(out, "train.steps=4", "train.checkpoint_every=2", launcher=launcher),
                                      env=node_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [node.communicate(timeout=HANG_GUARD_S) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-5000:]
    meta = json.loads((out / "checkpoints/step-00000004/meta.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 4


def test_trainings_of_another_precision_run_one_after_the_other_in_one_process(tmp_path):
    """What a sweep with --cluster debug does: Accelerate's per-process state is renewed for the new precision."""
    common = [*TINY_TRAINING, "train.steps=2", "train.checkpoint_every=2", "train.log_every=1"]
    for precision in ("no", "bf16", "no"):
        out = tmp_path / precision
        train(load_config(ROOT / "configs/debug.yaml", [*common, f"train.mixed_precision={precision}",
                                                        f"train.out_dir={out}"]))
        assert [m["step"] for m in metrics(out)] == [1, 2]
    bf16, _ = final_state(tmp_path / "bf16")
    fp32, _ = final_state(tmp_path / "no")
    assert any(not torch.equal(bf16[key], fp32[key]) for key in fp32)  # bf16 autocast really ran


@slow
def test_tensorboard_gets_what_metrics_jsonl_gets_and_a_resumed_run_logs_each_step_once(tmp_path):
    needs("tensorboard", "tracking")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    common = ["train.log_with=tensorboard", "train.checkpoint_every=4", "train.sample_every=4"]
    run(train_cmd(out, "train.steps=8", *common))
    for part in (out / "checkpoints" / "step-00000008").iterdir():  # killed after step 8 was logged, before its save
        part.unlink()
    (out / "checkpoints" / "step-00000008").rmdir()
    run(train_cmd(out, "train.steps=12", *common))  # resumes from step 4: steps 6 and 8 are logged again

    events = EventAccumulator(str(out / "trackers" / "hpc_ncsn"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    records = metrics(out)
    assert [r["step"] for r in records] == [2, 4, 6, 8, 10, 12]
    for key in ("loss", "grad_norm", "lr", "images_per_s", "skipped_steps"):
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [r["step"] for r in records], key  # once each: the rerun's purged
        assert [e.value for e in logged] == pytest.approx([r[key] for r in records], rel=1e-6), key
    assert not any(tag.startswith("loss_per_level") for tag in events.Tags()["scalars"])  # not one per level
    for part in range(4):  # 10 levels in 4 parts (3, 3, 2, 2), the mean of the levels a batch drew in an interval
        logged = events.Scalars(f"loss_by_sigma/q{part}")
        chunks = [(r["step"], [v for v in np.array_split(np.array(r["loss_per_level"], dtype=float), 4)[part]
                               if not np.isnan(v)]) for r in records]
        expected = [(step, float(np.mean(values))) for step, values in chunks if values]
        assert [e.step for e in logged] == [step for step, _ in expected]
        assert [e.value for e in logged] == pytest.approx([value for _, value in expected], rel=1e-6)
    grids = events.Images("samples")
    assert [g.step for g in grids] == [4, 8, 12]
    png = Image.open(out / "samples" / "step-00000012.png")
    assert (grids[-1].width, grids[-1].height) == png.size


def test_a_tracker_that_is_unknown_or_not_installed_is_one_line_naming_the_fix():
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    from hpc_ncsn.config import ConfigError
    from hpc_ncsn.train.trackers import tracker_names

    assert tracker_names("") == []
    needs("tensorboard", "tracking")
    assert tracker_names(" tensorboard ") == ["tensorboard"]
    with pytest.raises(ConfigError, match=r"^train.log_with: unknown tracker 'tensorbord'; choose from aim, "):
        tracker_names("tensorboard,tensorbord")
    installed = {str(tracker) for tracker in get_available_trackers()}
    absent = sorted(set(LOGGER_TYPE_TO_CLASS) - installed)[0]
    with pytest.raises(ConfigError, match=rf"^train.log_with: {absent} is not installed in this environment; "
                                          rf"pip install {absent}, or drop it"):
        tracker_names(f"tensorboard,{absent}")
    with pytest.raises(ConfigError, match="train.log_with"):
        load_config(ROOT / "configs/debug.yaml", ["train.log_with=tensorboard,,wandb"])


DAMAGED = ["meta.json", "ema.pt", "model.safetensors", "optimizer.bin"]


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
    """A tiny run of 6 steps with its checkpoints of steps 2, 4 and 6 kept, and its final weights and losses."""
    out = tmp_path_factory.mktemp("checkpoints") / "run"
    settings = [*TINY_TRAINING, "train.steps=6", "train.checkpoint_every=2", "train.keep_checkpoints=3",
                "train.log_every=1"]
    train(load_config(ROOT / "configs/debug.yaml", [*settings, f"train.out_dir={out}"]))
    return out, settings, final_state(out), [m["loss"] for m in metrics(out)]


def torn(path: Path) -> None:
    """Cut a file in half: what a full disk, a dying node or a careless copy leaves."""
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damaged", DAMAGED)
def test_a_damaged_newest_checkpoint_is_skipped_in_one_line_and_the_run_resumes_from_the_older_one(
        three_checkpoints, damaged, tmp_path, capsys):
    """Resumed from step 4 after step 6's file was torn, the run redoes steps 5 and 6 exactly as it first did."""
    source, settings, (weights, ema), losses = three_checkpoints
    out = tmp_path / "run"
    shutil.copytree(source, out)
    torn(out / "checkpoints" / "step-00000006" / damaged)
    capsys.readouterr()
    train(load_config(ROOT / "configs/debug.yaml", [*settings, f"train.out_dir={out}"]))
    said = capsys.readouterr().out.splitlines()
    warnings = [line for line in said if line.startswith("warning: skipped damaged")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: skipped damaged checkpoint(s) step-00000006 (")
    assert warnings[0].endswith("; resuming from the older step-00000004")
    assert f"resumed from {out / 'checkpoints' / 'step-00000004'} at step 4" in said
    resumed_weights, resumed_ema = final_state(out)
    assert_same(weights, resumed_weights)
    assert_same(ema, resumed_ema)
    assert [m["loss"] for m in metrics(out)] == losses


def test_a_run_whose_every_checkpoint_is_damaged_is_one_line_naming_each(three_checkpoints, tmp_path):
    source, settings, _, _ = three_checkpoints
    out = tmp_path / "run"
    shutil.copytree(source, out)
    for step, damaged in zip((2, 4, 6), DAMAGED):
        torn(out / "checkpoints" / f"step-{step:08d}" / damaged)
    with pytest.raises(DamagedCheckpoints, match=r"every checkpoint in .* is damaged: step-00000006 \(.+\); "
                                                 r"step-00000004 \(.+\); step-00000002 \(.+\); restore one, or move"):
        train(load_config(ROOT / "configs/debug.yaml", [*settings, f"train.out_dir={out}"]))


@pytest.fixture
def commands_in_process(monkeypatch):
    """`main([...])` sets the product's thread variables in this process; put them back afterwards."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(name, "1")


def one_generation(run_or_checkpoint: Path, out: Path) -> int:
    from hpc_ncsn.cli import main

    return main(["generate", "--run-dir", str(run_or_checkpoint), "--out", str(out), "--num-samples", "4",
                 "--shard-size", "4", "--batch-size", "4"])


def test_generate_export_and_heldout_of_a_run_whose_newest_ema_is_torn_use_the_older_checkpoint_in_one_line(
        three_checkpoints, tmp_path, capsys, commands_in_process):
    """The same samples as from step 4's folder named explicitly; export and held-out DSM take step 4 too."""
    from hpc_ncsn.cli import main
    from hpc_ncsn.samples.shards import read_manifest

    out = tmp_path / "run"
    shutil.copytree(three_checkpoints[0], out)
    torn(out / "checkpoints" / "step-00000006" / "ema.pt")
    capsys.readouterr()
    said = []
    for command in (lambda: one_generation(out, tmp_path / "samples"),
                    lambda: main(["export", "--run-dir", str(out), "--safetensors", str(tmp_path / "model")]),
                    lambda: main(["heldout", "--run-dir", str(out), "--examples", "8", "--batch-size", "8"])):
        assert command() == 0
        said.append([line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")])
    for warnings in said:
        assert len(warnings) == 1 and warnings[0].startswith("warning: skipped damaged checkpoint(s) step-00000006 "
                                                             "(ema.pt: ")
        assert warnings[0].endswith("; using the older step-00000004")
    assert read_manifest(tmp_path / "samples")["meta"]["checkpoint"] == "step-00000004"
    assert one_generation(out / "checkpoints" / "step-00000004", tmp_path / "explicit") == 0
    images = [[shard["images_sha256"] for shard in read_manifest(folder)["shards"]]
              for folder in (tmp_path / "samples", tmp_path / "explicit")]
    assert images[0] == images[1]
    assert json.loads((tmp_path / "model" / "config.json").read_text())["step"] == 4
    assert json.loads((out / "heldout_dsm.json").read_text())["step"] == 4


def test_generating_from_a_run_whose_every_checkpoint_is_damaged_or_from_a_damaged_named_one_is_one_line(
        three_checkpoints, tmp_path, capsys, commands_in_process):
    out = tmp_path / "run"
    shutil.copytree(three_checkpoints[0], out)
    for step, damaged in zip((2, 4, 6), ("ema.pt", "meta.json", "ema.pt")):
        torn(out / "checkpoints" / f"step-{step:08d}" / damaged)
    capsys.readouterr()
    assert one_generation(out, tmp_path / "samples") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: every checkpoint in {out / 'checkpoints'} is damaged: "
                                               "step-00000006 (ema.pt: ")
    assert "; step-00000004 (meta.json: " in err[0] and "; step-00000002 (ema.pt: " in err[0]
    assert err[0].endswith("; restore one from a copy, or train the run again")
    assert one_generation(out / "checkpoints" / "step-00000006", tmp_path / "samples") == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: checkpoint {out / 'checkpoints' / 'step-00000006'} is "
                                               "damaged (ema.pt: ")
    assert err[0].endswith("pass an intact checkpoint folder, or its run folder to use the newest intact one")
