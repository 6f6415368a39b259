"""The sweep as data, in this process: cells, shared trainings, task objects, sweep.json, the sbatch text."""

import argparse
import json
import pickle
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc_ncsn.config import ConfigError, load_config
from hpc_ncsn.sweep.launch import add_arguments, build_spec, check_numbers, slurm_options
from hpc_ncsn.sweep.plan import SweepSpec, plan, training_identity
from hpc_ncsn.sweep.slurm import SlurmOptions, sbatch_text, slurm_parameters
from hpc_ncsn.sweep.tasks import STAGES, SampleTask, TrainTask
from helpers import HANG_GUARD_S

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "debug.yaml"


def spec(**axes) -> SweepSpec:
    return SweepSpec.from_config(DEBUG, {"arm": ["geometric", "linear", "snr"], "seed": [0, 1], **axes})


def test_the_snr_arm_and_sampler_axes_share_the_trainings_they_do_not_change(tmp_path):
    sweep = plan(spec(**{"sampler.steps_per_level": [3, 5]}), tmp_path)
    assert len(sweep.sample) == 12 and len(sweep.train) == 4  # (geometric, linear) × 2 seeds
    by_name = {task.name: task for task in sweep.sample}
    snr = by_name["arm-snr_seed-1_sampler.steps_per_level-5"]
    assert snr.train.name == "arm-geometric_seed-1_sampler.steps_per_level-3"
    assert snr.config["sampler"]["step_rule"] == "snr" and snr.config["sampler"]["steps_per_level"] == 5
    assert snr.train.config["train"]["out_dir"] == str(tmp_path / "train" / snr.train.name)
    assert snr.seed == 1 and snr.group == (("arm", "snr"), ("sampler.steps_per_level", 5))
    assert "sampler.steps_per_level=5" in snr.sampling_overrides()


def test_keys_that_change_the_weights_get_their_own_training(tmp_path):
    sweep = plan(spec(**{"train.lr": [1e-3, 2e-3]}), tmp_path)
    assert len(sweep.train) == 8 and len(sweep.sample) == 12


def test_training_identity_ignores_sampling_sections_and_the_output_folder():
    from hpc_ncsn.config import config_to_dict

    base = config_to_dict(load_config(DEBUG))
    other = config_to_dict(load_config(DEBUG, ["sampler.step_rule=snr", "generate.num_samples=9",
                                               "evaluate.batch_size=3", "train.out_dir=elsewhere"]))
    assert training_identity(base) == training_identity(other)
    assert training_identity(base) != training_identity(config_to_dict(load_config(DEBUG, ["noise.ladder=linear"])))


def test_a_plan_read_back_from_sweep_json_names_every_task_as_the_launcher_did(tmp_path):
    # Axes whose keys sort before the built-in ones: sweep.json must keep the launcher's order.
    original = spec(**{"data.image_size": [8, 16], "model.base_channels": [8]})
    original.save(tmp_path)
    again = plan(SweepSpec.load(tmp_path), tmp_path)
    first = plan(original, tmp_path)
    assert [t.name for t in again.train] == [t.name for t in first.train]
    assert [t.name for t in again.sample] == [t.name for t in first.sample]
    assert first.sample[0].name == "arm-geometric_seed-0_data.image_size-8_model.base_channels-8"
    assert SweepSpec.load(tmp_path).differences(original) == []
    reordered = SweepSpec.from_config(DEBUG, {"seed": [0, 1], "arm": ["geometric", "linear", "snr"],
                                              "data.image_size": [8, 16], "model.base_channels": [8]})
    assert reordered.differences(original)


def test_a_sweep_saved_before_a_config_key_existed_is_the_same_sweep_with_that_keys_default(tmp_path):
    original = spec()
    original.save(tmp_path)
    saved = json.loads((tmp_path / "sweep.json").read_text())
    del saved["base"]["train"]["log_with"]  # as a sweep launched before train.log_with was added
    (tmp_path / "sweep.json").write_text(json.dumps(saved))
    assert SweepSpec.load(tmp_path).differences(original) == []
    assert plan(SweepSpec.load(tmp_path), tmp_path).train[0].config["train"]["log_with"] == ""
    changed = SweepSpec.from_config(DEBUG, dict(original.axes), ("train.log_with=tensorboard",))
    assert SweepSpec.load(tmp_path).differences(changed) == ["base.train.log_with: '' → 'tensorboard'",
                                                             "overrides: [] → ['train.log_with=tensorboard']"]


def test_tasks_travel_to_jobs_as_objects():
    sweep = plan(spec(), Path("/sweeps/x"))
    for _, tasks in sweep.stages():
        for task in tasks:
            copy = pickle.loads(pickle.dumps(task))
            assert copy == task and copy.stage in STAGES
    assert [stage for stage, _ in sweep.stages()] == list(STAGES) == ["train", "sample", "aggregate"]
    assert isinstance(sweep.train[0], TrainTask) and isinstance(sweep.sample[0], SampleTask)


def test_a_pickled_task_brings_only_the_task_records_along(tmp_path):
    """A job unpickles its task: that imports the records' module, not the status store, the table writer
    or the bodies (hpc_ncsn.sweep.work)."""
    (tmp_path / "task.pkl").write_bytes(pickle.dumps(plan(spec(), tmp_path).sample[0]))
    probe = ("import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read()); "
             "print(sorted(m for m in sys.modules if m.startswith('hpc_ncsn.sweep')))")
    loaded = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "task.pkl")], capture_output=True,
                            text=True, check=True).stdout
    assert loaded.strip() == "['hpc_ncsn.sweep', 'hpc_ncsn.sweep.tasks']"


def test_cells_that_would_share_a_folder_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"would share the folder .*give the axis values that differ"):
        plan(spec(**{"data.data_root": ["a/b", "ab"]}), tmp_path)


def test_a_repeated_axis_value_is_refused():
    with pytest.raises(ConfigError, match=r"axis 'seed' repeats a value: \[0, 0\]"):
        SweepSpec.from_config(DEBUG, {"arm": ["geometric"], "seed": [0, 0]})



def sweep_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--config", str(DEBUG), *argv])


def test_axis_values_split_at_top_level_commas_only():
    axes = build_spec(sweep_args("--arms", "geometric", "--seeds", "0", "--axis", "model.channel_mults=[1,2],[1,2,2]",
                                 "--axis", "data.data_root='a,b',c")).axes
    assert axes["model.channel_mults"] == [[1, 2], [1, 2, 2]] and axes["data.data_root"] == ["a,b", "c"]


@pytest.mark.parametrize("argv, message", [
    (["--axis", "model.channel_mults=[1,2],[1,2"], r"--axis model.channel_mults '\[1,2\],\[1,2': an unclosed '\]'"),
    (["--axis", "model.channel_mults=[1,2]],[1]"], r"unbalanced '\]'"),
    (["--axis", "sampler.snr=@x"], r"--axis sampler.snr '@x': a value is not valid YAML"),
    (["--axis", "train.seed=5,6"], r"train.seed from its seed; an axis over it would mislabel the cells: use --seeds"),
    (["--axis", "noise.ladder=linear,geometric"], r"noise.ladder from its arm; .* use --arms"),
    (["--arms", "edm", "--axis", "sampler.num_levels=10,18"], r"sampler.num_levels from its arm"),
    (["--axis", "schedule=linear"], r"schedule is already an axis; give its values with --arms"),
    (["--axis", "seed=3"], r"seed is already an axis; give its values with --seeds"),
    (["train.seed=5"], r"'train.seed=5': each cell sets train.seed from its seed, which would overwrite this"),
    (["--max-requeues", "-1"], r"--max-requeues -1: must be >= 0 \(0: a task is never requeued\)"),
    (["--local-parallel", "0"], r"--local-parallel 0: must be >= 1"),
])
def test_sweep_flags_that_would_mislabel_cells_or_fail_every_task_are_refused_up_front(argv, message):
    args = sweep_args(*argv)
    with pytest.raises(ConfigError, match=message):
        check_numbers(args)
        build_spec(args)


def test_sampler_keys_no_requested_arm_sets_stay_free_axes():
    assert build_spec(sweep_args("--arms", "geometric,snr", "--axis", "sampler.num_levels=10,18")).axes[
        "sampler.num_levels"] == [10, 18]


def test_a_bad_sweep_flag_is_one_line_from_the_launcher(tmp_path):
    result = launcher(tmp_path, "--max-requeues", "-1", "--axis", "model.channel_mults=[1,2],[1,2,2]")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == "error: --max-requeues -1: must be >= 0 (0: a task is never requeued)\n"
    planned = launcher(tmp_path, "--arms", "geometric", "--seeds", "0", "--axis", "model.channel_mults=[1,2],[1,2,2]",
                       "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert "train (2 tasks" in planned.stdout and "arm-geometric_seed-0_model.channel_mults-1,2,2/" in planned.stdout

GOLDEN_TRAIN_SBATCH = """#!/bin/bash

# Parameters
#SBATCH --array=0-3%4
#SBATCH --error=/sweeps/x/logs/%A_%a/%A_%a_0_log.err
#SBATCH --exclusive
#SBATCH --gpus-per-node=4
#SBATCH --job-name=ncsn:x:train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=/sweeps/x/logs/%A_%a/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --signal=USR2@120
#SBATCH --time=2880
#SBATCH --wckey=submitit

# setup
module load cuda

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /sweeps/x/logs/%A_%a/%A_%a_%t_log.out --error /sweeps/x/logs/%A_%a/%A_%a_%t_log.err \
apptainer exec --nv /images/hpc_ncsn.sif python -u -m submitit.core._submit /sweeps/x/logs/%j
"""


def test_the_training_array_sbatch_script_is_what_submitit_submits():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--partition", "gpu", "--gpus-per-node", "4", "--nodes", "2", "--time-train", "2880",
                              "--setup", "module load cuda", "--sbatch", "exclusive=true",
                              "--python", "apptainer exec --nv /images/hpc_ncsn.sif python"])
    options = slurm_options(args)
    text = sbatch_text(Path("/sweeps/x"), slurm_parameters(options, "train", "x"), 4, options.python)
    assert text == GOLDEN_TRAIN_SBATCH.replace("\\\n", "")


def test_slurm_options_refuse_a_malformed_sbatch_or_setup_line_when_built():
    with pytest.raises(ConfigError, match=r"--sbatch 'exclusive': write KEY=VALUE"):
        SlurmOptions(sbatch=("exclusive",))
    with pytest.raises(ConfigError, match=r"--setup .*: give each command as its own --setup"):
        SlurmOptions(setup=("module load cuda\nrm -rf /",))


def sbatch_arguments(text: str) -> list[list[str]]:
    """Each `#SBATCH` line's arguments as sbatch reads them: whitespace separates, quotes group, an unquoted '#'
    ends the line (shlex in POSIX mode with comments; the values here hold no backslash, where the two differ)."""
    return [shlex.split(line[len("#SBATCH"):], comments=True) for line in text.splitlines()
            if line.startswith("#SBATCH")]


def test_no_slurm_string_can_leave_its_sbatch_line(tmp_path):
    for flag in ("partition", "account", "qos", "constraint"):
        for value in ("gpu\n#SBATCH --uid=0", "gpu\r", "a#b", "a b", "it's", 'a"b', "a\\b", "a\x00"):
            with pytest.raises(ConfigError, match=f"--{flag} ") as refused:
                SlurmOptions(**{flag: value})
            assert "\n" not in str(refused.value)
    for item in ("comment=two\nlines", "comment=a\\b", "mail user=x"):
        with pytest.raises(ConfigError, match="--sbatch "):
            SlurmOptions(sbatch=(item,))
    # Slurm's own syntax passes, and a free-text --sbatch value with '#', quotes and spaces stays one argument.
    options = SlurmOptions(partition="gpu,gpu-long", account="proj.x_1", qos="normal",
                           constraint="[a100|h100]&ib*2", sbatch=("comment=run #3 of 'x' \"y\"",))
    text = sbatch_text(tmp_path, slurm_parameters(options, "train", "x"), 2)
    arguments = sbatch_arguments(text)
    assert all(len(line) == 1 for line in arguments)
    assert ["--comment=run #3 of 'x' \"y\""] in arguments and ["--constraint=[a100|h100]&ib*2"] in arguments
    assert ["--partition=gpu,gpu-long"] in arguments and ["--account=proj.x_1"] in arguments
    for key, value in (("max_requeues", -1), ("nodes", 0), ("time_train", -5), ("array_parallelism", 0)):
        with pytest.raises(ConfigError, match=f"--{key.replace('_', '-')} {value}: must be an integer >="):
            SlurmOptions(**{key: value})
    with pytest.raises(ConfigError, match="the sweep folder's name"):
        slurm_parameters(options, "train", "x\ny")
    with pytest.raises(ConfigError, match="the sweep folder .* unquoted"):
        sbatch_text(tmp_path / "a b;touch x", slurm_parameters(options, "train", "x"), 2)


def test_anchors_are_one_row_per_seed_and_travel_in_sweep_json(tmp_path):
    fashion = SweepSpec.from_config(DEBUG, {"arm": ["geometric", "linear"], "seed": [0, 3]},
                                    ("data.name=fashion_mnist", "evaluate.reference=test"), ("real", "untrained"))
    sweep = plan(fashion, tmp_path)
    anchors = [task for task in sweep.sample if task.train is None]
    assert [(task.name, task.group, task.seed) for task in anchors] == [
        ("anchor-real_seed-0", (("anchor", "real"),), 0), ("anchor-real_seed-3", (("anchor", "real"),), 3),
        ("anchor-untrained_seed-0", (("anchor", "untrained"),), 0),
        ("anchor-untrained_seed-3", (("anchor", "untrained"),), 3)]
    assert anchors[1].config["train"]["seed"] == 3 and anchors[0].held_out_split() == "train"
    assert len(sweep.train) == 4  # anchors add no training task
    fashion.save(tmp_path)
    assert SweepSpec.load(tmp_path).anchors == ("real", "untrained")
    assert SweepSpec.load(tmp_path).differences(fashion) == []
    assert "anchors" not in spec().to_json()  # sweep.json of a sweep without anchors is as before
    assert spec().differences(SweepSpec.from_config(DEBUG, spec().axes, (), ("untrained",)))


def test_an_unknown_anchor_and_a_real_anchor_without_held_out_images_are_refused():
    with pytest.raises(ConfigError, match="anchor.*'floor'.*choose from real, untrained"):
        SweepSpec.from_config(DEBUG, {"seed": [0]}, (), ("floor",))
    with pytest.raises(ConfigError, match="--anchors real: .*digits have no test split"):
        SweepSpec.from_config(DEBUG, {"seed": [0]}, (), ("real",))


def launcher(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "launch" / "sweep.py"), "--out", str(cwd / "sweep"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL)


def test_a_python_command_that_cannot_run_the_tasks_is_one_line_before_anything_is_written(tmp_path):
    older = tmp_path / "older" / "hpc_ncsn"  # an image built from another release of the project
    older.mkdir(parents=True)
    (older / "__init__.py").write_text('__version__ = "0.0.9"\n')
    cases = {
        "no-such-apptainer exec img.sif python": "'no-such-apptainer' is not a command on this machine",
        f"{sys.executable} -S": "cannot run the tasks (ModuleNotFoundError: No module named 'hpc_ncsn')",
        f"env PYTHONPATH={older.parent} {sys.executable}": "imports hpc_ncsn 0.0.9 from",
    }
    for command, expected in cases.items():
        result = launcher(tmp_path, "--python", command)
        assert result.returncode == 2 and result.stdout == "", result.stderr
        assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
        assert result.stderr.startswith(f"error: --python {command!r}")
    result = launcher(tmp_path, "--cluster", "debug", "--python", sys.executable)
    assert result.returncode == 2 and "--cluster debug runs every task in the launcher's own process" in result.stderr
    assert not (tmp_path / "sweep").exists()


def test_a_python_command_that_can_run_the_tasks_is_named_and_lands_in_the_sbatch_scripts(tmp_path):
    command = f"env HPC_NCSN_IMAGE=1 {sys.executable}"
    result = launcher(tmp_path, "--cluster", "slurm", "--dry-run", "--python", command)
    assert result.returncode == 0, result.stderr
    import hpc_ncsn
    assert result.stdout.splitlines()[0] == (f"tasks start with: {command} → {sys.executable}: hpc_ncsn "
                                             f"{hpc_ncsn.__version__} ({hpc_ncsn.__file__}), torch "
                                             f"{__import__('torch').__version__}")
    assert result.stdout.count(f" {command} -u -m submitit.core._submit ") == 3  # train, sample, aggregate
    assert not (tmp_path / "sweep").exists()


def test_the_container_recipes_copy_files_that_exist_and_install_an_extra_the_package_has():
    """The images are not built here (no registry images offline); what can drift from the tree is checked."""
    import tomllib

    folder = ROOT / "slurm" / "container"
    definition = (folder / "hpc_ncsn.def").read_text()
    files = definition.split("%files\n")[1].split("\n\n")[0].split("\n")
    dockerfile = (folder / "Dockerfile").read_text()
    copied = [word for line in dockerfile.splitlines() if line.startswith("COPY ") for word in line.split()[1:-1]]
    sources = [line.split()[0] for line in files if line.strip()] + copied
    assert "hpc_ncsn" in sources and "pyproject.toml" in sources
    assert [path for path in sources if not (ROOT / path).exists()] == []
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for recipe in (definition, dockerfile):
        assert "pip install --no-cache-dir '/opt/hpc_ncsn[deepspeed]'" in recipe and "deepspeed" in extras


def test_a_sweep_json_from_before_the_arm_rename_is_read_as_migrated_and_keeps_its_cell_names(tmp_path):
    new = spec()
    record = json.loads(new.to_json())
    assert [key for key, _ in record["axes"]] == ["arm", "seed"]
    record["axes"] = [["schedule", values] if key == "arm" else [key, values] for key, values in record["axes"]]
    old = SweepSpec.from_json(json.dumps(record))
    assert list(old.axes) == ["arm", "seed"] and old.differences(new) == []  # the same sweep
    assert [task.name for task in plan(old, tmp_path).sample][:2] == ["schedule-geometric_seed-0",
                                                                       "schedule-geometric_seed-1"]
    assert plan(old, tmp_path).sample[0].group == (("arm", "geometric"),)
    assert [task.name for task in plan(new, tmp_path).sample][:2] == ["arm-geometric_seed-0", "arm-geometric_seed-1"]
    assert [task.name for task in plan(new.named_like(old), tmp_path).train] == [task.name for task in
                                                                                 plan(old, tmp_path).train]


@pytest.mark.parametrize("status", [75, 143, 0, 1])
def test_the_sbatch_scripts_requeue_a_run_stopped_at_usr2_only(status):
    """slurm/common.sh's requeue_if_stopped: exit 75 (saved at USR2) requeues, 143 (saved at SIGTERM: scancel)
    and any other status does not (hpc_ncsn.preemption's codes)."""
    from hpc_ncsn.preemption import EXIT_REQUEUE, EXIT_STOPPED

    assert (EXIT_REQUEUE, EXIT_STOPPED) == (75, 143)
    script = (f"scontrol() {{ echo \"scontrol $*\"; }}; source {ROOT / 'slurm' / 'common.sh'}; "
              f"SLURM_JOB_ID=42 requeue_if_stopped {status}")
    said = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert said == ("preempted: requeueing job 42\nscontrol requeue 42\n" if status == 75 else "")


HOLDER = """
import signal, sys, time
from hpc_ncsn.locks import FolderLock
signal.signal(signal.SIGTERM, lambda *_: (print("SIGTERM", flush=True), sys.exit(0)))
lock = FolderLock(sys.argv[1], "sweep", what=sys.argv[2], fields={"cluster": sys.argv[3]}).acquire()
print("held", flush=True)
time.sleep(1800)  # killed by the test; as long as the hang guard, so a busy machine never outlives it
"""


@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_cancel_tells_a_running_local_sweep_by_its_lock_field_not_by_what_it_says(tmp_path, cluster):
    """--cancel SIGTERMs a local sweep's launcher (it stops its tasks); it reads the lock's `cluster` field, so
    the free text `what` (here misleading on purpose) decides nothing. A debug sweep runs in its launcher and
    is not signalled."""
    from hpc_ncsn.sweep.slurm import cancel

    sweep = plan(spec(), tmp_path)
    what = "launch/sweep.py --cluster slurm" if cluster == "local" else "launch/sweep.py --cluster local"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path), what, cluster], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        said = cancel(tmp_path, sweep)
        if cluster == "local":
            assert said.startswith(f"sent SIGTERM to the local sweep (pid {holder.pid})")
            assert holder.stdout.readline().strip() == "SIGTERM" and holder.wait(timeout=HANG_GUARD_S) == 0
        else:
            assert said == "no job of this sweep is queued or running" and holder.poll() is None
    finally:
        holder.kill()
        holder.wait()



@pytest.mark.parametrize("mismatch", ["no start time", "another start time", "another folder", "not a sweep lock"])
def test_cancel_signals_no_process_but_the_sweep_that_holds_the_lock(tmp_path, mismatch):
    """A .lock-sweep naming a live process that is not this folder's launcher (its pid reused, the lock copied
    with the folder, or a record without the start time that proves who it is): --cancel sends it nothing."""
    from hpc_ncsn.locks import identity
    from hpc_ncsn.sweep.slurm import cancel

    sweep = plan(spec(), tmp_path)
    bystander = subprocess.Popen(["sleep", "60"])
    record = {**identity(bystander.pid), "cluster": "local", "folder": str(tmp_path.resolve()),
              "what": "launch/sweep.py --cluster local", "time": time.time()}
    if mismatch == "no start time":
        del record["start"]
    elif mismatch == "another start time":
        record["start"] += 1
    elif mismatch == "another folder":
        record["folder"] = str(tmp_path.resolve() / "elsewhere")
    else:
        del record["cluster"]
    (tmp_path / ".lock-sweep").write_text(json.dumps(record))
    try:
        assert cancel(tmp_path, sweep) == "no job of this sweep is queued or running"
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()

def test_the_first_studys_snr_setting_is_refused_before_anything_is_written_and_an_override_is_recorded(tmp_path):
    fashion = ("--config", str(ROOT / "configs" / "fashion.yaml"), "--arms", "geometric,linear,snr",
               "sampler.snr=0.24", "sampler.steps_per_level=2")
    refused = launcher(tmp_path, *fashion)
    assert refused.returncode == 2 and refused.stdout == "" and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("error: arm snr: ") and "r_min = 0.266" in refused.stderr
    assert "or pass --allow-unstable-sampler snr to run it anyway" in refused.stderr
    assert not (tmp_path / "sweep").exists()
    planned = launcher(tmp_path, *fashion, "--allow-unstable-sampler", "snr", "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert "snr: 226 σ_L, unsettled, run anyway: --allow-unstable-sampler given" in planned.stdout
    assert "linear: 50.6 σ_L, unsettled, run anyway: the linear ladder is what this arm tests" in planned.stdout
    recorded = SweepSpec.from_config(DEBUG, {"arm": ["snr"], "seed": [0]}, allow_unstable=("snr",))
    assert SweepSpec.from_json(recorded.to_json()).allow_unstable == ("snr",)
    assert recorded.differences(SweepSpec.from_config(DEBUG, {"arm": ["snr"], "seed": [0]}))


def test_sampler_presets_share_the_geometric_network_so_six_arms_train_two_networks_per_seed(tmp_path):
    arms = ["geometric", "linear", "snr", "linear-sampled", "edm", "ancestral"]
    sweep = plan(SweepSpec.from_config(DEBUG, {"arm": arms, "seed": [0, 1, 2]}), tmp_path)
    assert len(sweep.sample) == 18 and len(sweep.train) == 6  # geometric and linear networks, 3 seeds each
    for task in sweep.sample:
        ladder = "linear" if dict(task.group)["arm"] == "linear" else "geometric"
        assert task.train.name == f"arm-{ladder}_seed-{task.seed}"


def test_cells_whose_sampler_ignores_the_keys_they_differ_in_draw_their_samples_once(tmp_path):
    arms, steps = ["geometric", "edm", "ancestral"], "sampler.steps_per_level"
    sweep = plan(SweepSpec.from_config(DEBUG, {"arm": arms, "seed": [0, 1], steps: [2, 5]}), tmp_path)
    shared = {task.name: task for task in sweep.sample if task.same_as}
    assert sorted(shared) == sorted(f"arm-{arm}_seed-{seed}_{steps}-5" for arm in arms[1:] for seed in (0, 1))
    for name, task in shared.items():
        source, arm = name.replace("-5", "-2"), dict(task.group)["arm"]
        assert task.same_as == task.samples == tmp_path / "cells" / source / "samples"
        assert task.over_training == tmp_path / "cells" / source / "over_training"
        assert task.shares() == f"shares the samples of cell {source} ({arm}'s sampler ignores {steps})"
        assert task.train.name == f"arm-geometric_seed-{task.seed}_{steps}-2"
    assert all(task.samples == task.folder and not task.shares() for task in sweep.sample if not task.same_as)
    # A cell that holds its own scores (sampled by itself before cells shared) reads its own folder.
    old = shared[f"arm-edm_seed-0_{steps}-5"]
    old.folder.mkdir(parents=True)
    (old.folder / "metrics.json").write_text("{}")
    assert old.samples == old.folder and old.shares() == ""
    # The ncsn rule ignores sampler.snr, the snr rule reads it.
    sweep = plan(SweepSpec.from_config(DEBUG, {"arm": ["geometric", "snr"], "seed": [0], "sampler.snr": [0.1, 0.2]}),
                 tmp_path)
    assert {task.name: task.same_as and task.same_as.parent.name for task in sweep.sample} == {
        "arm-geometric_seed-0_sampler.snr-0.1": None, "arm-geometric_seed-0_sampler.snr-0.2":
        "arm-geometric_seed-0_sampler.snr-0.1", "arm-snr_seed-0_sampler.snr-0.1": None,
        "arm-snr_seed-0_sampler.snr-0.2": None}


def test_networks_trained_on_different_sigma_ranges_get_one_held_out_grid(tmp_path):
    narrow = plan(SweepSpec.from_config(DEBUG, {"arm": ["geometric"], "seed": [0], "noise.sigma_max": [4.0, 8.5]}),
                  tmp_path)
    assert {(t.config["train"]["heldout_sigma_max"], t.config["train"]["heldout_sigma_min"]) for t in narrow.train} \
        == {(8.5, 0.01)}
    same = plan(spec(), tmp_path)  # geometric and linear share σ_1 and σ_L: each network's own range is common
    assert {t.config["train"]["heldout_sigma_max"] for t in same.train} == {0}


def test_a_local_task_is_ready_once_the_tasks_it_depends_on_have_ended(tmp_path):
    """hpc_ncsn.sweep.local.ready: a cell waits for its own training only, an anchor for nothing, the table for
    every other task; trainings start first, the rest in the plan's order."""
    from hpc_ncsn.sweep.local import ready

    axes = {"arm": ["geometric", "linear", "snr"], "seed": [0, 1]}
    sweep = plan(SweepSpec.from_config(DEBUG, axes, (), ("untrained",)), tmp_path)
    train = {task.name: task for task in sweep.train}
    cells = {task.name: task for task in sweep.sample}
    everything = [*sweep.train, *sweep.sample, sweep.aggregate]

    def names(tasks):
        return [task.name for task in tasks]

    anchors = ["anchor-untrained_seed-0", "anchor-untrained_seed-1"]
    assert names(ready(everything, [])) == [*train, *anchors]  # trainings first, then what needs no training
    # geometric seed 0 trained: its cell and the snr cell that samples its network, in the plan's order
    running = [train["arm-linear_seed-0"]]
    queued = [task for task in everything if task is not train["arm-geometric_seed-0"] and task is not running[0]]
    assert names(ready(queued, running)) == [
        "arm-geometric_seed-1", "arm-linear_seed-1", "arm-geometric_seed-0", "arm-snr_seed-0", *anchors]
    # every training and all cells but one ended: that cell still holds the table back, then lets it go
    last = [cells["arm-snr_seed-1"]]
    assert names(ready([sweep.aggregate], last)) == [] and names(ready([*last, sweep.aggregate], [])) == names(last)
    assert ready([sweep.aggregate], []) == [sweep.aggregate]
    # a training done before this run (not queued): its cells are ready at once, the table waits for them
    assert names(ready([*sweep.sample, sweep.aggregate], [])) == names(sweep.sample)
