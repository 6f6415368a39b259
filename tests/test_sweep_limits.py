"""Slurm's size limits on a sweep (hpc_ncsn.sweep.limits): arrays split to fit MaxArraySize, the %N throttle shared
by a stage's arrays, a sweep larger than the job limit refused in one line before anything is submitted.
The split on a real Slurm whose MaxArraySize is low: tests/test_slurm.py."""

import subprocess
import sys
from pathlib import Path

import pytest

from hpc_ncsn.sweep.limits import DEFAULT_MAX_ARRAY_SIZE, Limits, array_plan, read_limits, split
from hpc_ncsn.sweep.scheduler import Refused
from helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("count,size", [(1, 8), (8, 8), (9, 8), (17, 8), (1001, 1001), (1002, 1001), (5, 1)])
def test_split_keeps_every_task_once_in_order_in_arrays_no_larger_than_the_limit(count, size):
    tasks = [f"task-{k}" for k in range(count)]
    arrays = split(tasks, size)
    assert [task for array in arrays for task in array] == tasks
    assert all(1 <= len(array) <= size for array in arrays)
    assert len(arrays) == -(-count // size)  # as few arrays as the limit allows


def test_array_plan_splits_each_stage_and_shares_the_throttle_among_its_arrays():
    stages = [("train", list(range(20))), ("sample", list(range(30))), ("aggregate", ["table"]), ("none", [])]
    plan = array_plan(stages, Limits(max_array_size=8), parallelism=6)
    assert [(stage, [len(a) for a in arrays], n) for stage, arrays, n in plan] == [
        ("train", [8, 8, 4], 2), ("sample", [8, 8, 8, 6], 2), ("aggregate", [1], 6)]
    # never below one task at a time per array
    assert {n for _, _, n in array_plan(stages, Limits(max_array_size=2), parallelism=3)} == {1, 3}


def test_a_sweep_beyond_the_job_limit_is_refused_in_one_line_counting_the_jobs_already_queued():
    stages = [("train", list(range(4))), ("sample", list(range(6))), ("aggregate", ["table"])]
    assert array_plan(stages, Limits(max_jobs=11), parallelism=4)  # 11 jobs fit
    with pytest.raises(Refused) as refused:
        array_plan(stages, Limits(max_jobs=11, source="--max-submit-jobs"), parallelism=4, queued=1)
    message = str(refused.value)
    assert "\n" not in message and "11 jobs" in message and "1 job(s) already queued" in message
    assert "--max-submit-jobs" in message and "nothing was submitted" in message


def test_given_limits_win_and_a_bad_one_is_refused():
    assert read_limits(8, 5) == Limits(8, 5, "--max-array-size and --max-submit-jobs")
    for bad in ((0, None), (None, -1)):
        with pytest.raises(Refused, match="give a positive number"):
            read_limits(*bad)


def test_without_slurm_the_defaults_hold(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol here
    assert read_limits() == Limits(DEFAULT_MAX_ARRAY_SIZE, None, "Slurm's defaults")
    assert read_limits(max_submit_jobs=3).max_jobs == 3


def test_the_launcher_refuses_a_sweep_beyond_the_job_limit_before_writing_anything(tmp_path):
    command = [sys.executable, str(ROOT / "launch" / "sweep.py"), "--cluster", "slurm", "--out", str(tmp_path / "s"),
               "--arms", "geometric", "--seeds", "0,1", "--max-array-size", "8", "--max-submit-jobs", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "needs 5 jobs" in result.stderr, result.stderr
    assert not (tmp_path / "s").exists()


def test_the_dry_run_shows_each_stage_split_to_fit_and_its_throttle(tmp_path):
    command = [sys.executable, str(ROOT / "launch" / "sweep.py"), "--cluster", "slurm", "--dry-run", "--out",
               str(tmp_path / "s"), "--arms", "geometric,linear", "--seeds", "0,1", "--max-array-size", "3",
               "--array-parallelism", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    stages = [line for line in result.stdout.splitlines() if line.startswith("--- ")]
    assert stages == [f"--- {stage} stage: 4 tasks in 2 arrays of at most 3 (MaxArraySize, from --max-array-size), "
                      "the first of 3 ---" for stage in ("train", "sample")] + ["--- aggregate stage: array of 1 ---"]
    # each of a stage's two arrays runs at most 4 / 2 at once; the table's one array keeps the flag's value
    assert [line for line in result.stdout.splitlines() if line.startswith("#SBATCH --array")] == [
        "#SBATCH --array=0-2%2", "#SBATCH --array=0-2%2", "#SBATCH --array=0-0%1"]
    assert not (tmp_path / "s").exists()
