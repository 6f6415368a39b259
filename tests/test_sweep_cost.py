"""The cost a sweep's dry run prints: its counts against direct simulation (network calls of the real samplers, the
training loop's own rule for grids and snapshots), not against the formulas the module uses."""

from hpc_ncsn.config import config_from_dict
from hpc_ncsn.sweep.cost import StageWork, describe_cost, occasions, sweep_cost
from hpc_ncsn.sweep.plan import SweepSpec, plan
from hpc_ncsn.sweep.tasks import AnchorTask
from helpers import network_calls
from test_sweep_plan import ROOT

FASHION28 = ROOT / "configs" / "fashion28.yaml"  # the paired study's config (the real anchor needs a test split)


def test_occasions_are_the_steps_the_training_loop_acts_on():
    """A multiple of `every` or the last step, counted from a resume point: the loop's rule, step by step."""
    for steps in range(0, 30):
        for every in (1, 2, 3, 7, 10, 1000):
            for start in range(0, steps + 1):
                direct = sum(1 for step in range(start + 1, steps + 1) if step % every == 0 or step == steps)
                assert occasions(steps, every, start) == direct, (steps, every, start)


def test_a_plans_cost_counts_every_network_call_it_will_make(tmp_path):
    """Trainings: steps × batch, plus their grids; cells: N × the calls their sampler makes, none for a cell that
    shares another's samples or for the real anchor; scored: N per cell that scores, the real anchor's too."""
    spec = SweepSpec.from_config(FASHION28, {"arm": ["geometric", "linear", "snr", "edm"], "seed": [0, 1],
                                         "sampler.steps_per_level": [2, 5]}, anchors=("real", "untrained"))
    sweep = plan(spec, tmp_path)
    work = sweep_cost(tmp_path, sweep.train, sweep.sample)
    base = spec.base
    steps, batch, n = base["train"]["steps"], base["train"]["batch_size"], base["generate"]["num_samples"]
    assert len(sweep.train) == 4 and work["train"].units == (steps * batch,) * 4  # geometric, linear × 2 seeds
    grid_calls = sum(network_calls(config_from_dict(task.config)) * base["train"]["sample_images"]
                     for task in sweep.train)
    grids = sum(1 for step in range(1, steps + 1) if step % base["train"]["sample_every"] == 0 or step == steps)
    assert work["train"].evaluations == grid_calls * grids
    drawing = [task for task in sweep.sample if not (isinstance(task, AnchorTask) and task.kind == "real")
               and not getattr(task, "same_as", None)]
    assert len(drawing) == 4 * 2 * 2 - 2 + 2  # edm ignores T: its T = 5 cells share; + the untrained anchors
    assert work["sample"].total == sum(n * network_calls(config_from_dict(task.config)) for task in drawing)
    assert work["sample"].samples == n * len(drawing) and work["sample"].shared == 2
    assert work["sample"].scored == n * (len(drawing) + 2)  # the real anchors are scored, never drawn
    lines = describe_cost(work, "configs/debug.yaml")
    assert f"{work['sample'].total:,} network evaluations" in lines[2] and "2 cell(s) share" in lines[2]


def test_a_sweep_with_every_task_done_costs_nothing():
    nothing = {"train": StageWork(()), "sample": StageWork(())}
    assert describe_cost(nothing, "c.yaml", rate=100.0)[1:] == ["  nothing: every task is done"]
