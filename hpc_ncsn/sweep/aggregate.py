"""Sweep results → the ablation table (Markdown, CSV, JSON), its plots (hpc_ncsn.sweep.plots) and the page of both
(report.html, hpc_ncsn.sweep.report).

One row per group of cells that differ only in the seed (one arm, for the
noise-schedule ablation): mean, sample standard deviation and 95% confidence
interval over seeds (Student t, n−1 degrees of freedom) of FID, KID and IS, with
the number of samples per cell. A cell that failed, is still running or was never
run stays in the table as such, and the table says it is incomplete (table.json's
"complete", a line under table.md's rows). The same inputs give byte-identical tables.

Each row also carries what it cost and what the samples' features say beyond FID:
network evaluations per sample (NFE), training images, wall seconds, the held-out
DSM loss of its networks (hpc_ncsn.heldout, where the training wrote one), precision,
recall, density, coverage and FID∞ (where the evaluator reported them), and the
sampler audit of sweep.json's time (audit.json). Every arm is compared with the
baseline arm (the first of --arms) seed by seed (hpc_ncsn.stats.compare_to_baseline:
paired where the arms share networks, Welch otherwise), with a verdict and a power line.

With FID over training (train.eval_every), a row also gets its curve (mean and std
over seeds at each snapshot step all its scored seeds share) and its best step: the
step of the lowest mean; the table gains that column and fid_vs_step.png.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import config_from_dict
from ..files import atomic_write
from ..stats import compare_to_baseline, t_quantile
from .plan import ARM_AXIS, AUDIT_FILE, Plan, SweepSpec, plan, row_label
from .plots import mean_over_seeds, plot_all, plotted
from .report import Table, Text, markdown, write_report
from .scheduler import Unanswered
from .scheduler import queue as scheduler_queue
from .status import NOT_DONE, observe, read_status
from .tasks import CURVE, METRICS_FILE, SampleTask

__all__ = ["CellResult", "aggregate", "collect", "compare", "mean_over_seeds", "summarize", "table_blocks",
           "write_table"]

METRICS = ("fid", "kid_mean", "is_mean")
# Further per-cell figures, averaged per row like METRICS where present (None where a cell has none).
EXTRA = ("fid_infinity", "precision", "recall", "density", "coverage", "heldout_dsm", "nfe", "training_images")
# Wall seconds of each stage: per cell in table.json and averaged in table.md, but not in the rows, which the
# same results must reproduce exactly whichever run (a resumed one, a slower machine) computed them.
SECONDS = ("train_seconds", "sample_seconds")
SHARED_MARK = "†"  # a row whose cells share other cells' samples (their footnote under the rows)


@dataclass(frozen=True)
class CellResult:
    name: str
    group: tuple[tuple[str, object], ...]
    seed: int
    state: str  # done, or why not: failed | lost | cancelled | running | preempted | pending
    detail: str  # the error of a failed cell, else ''
    metrics: dict  # fid, kid_mean, is_mean, n (done cells only)
    train: str
    samples: Path
    over_training: tuple = field(default=())  # ({step, fid, kid_mean, n}, ...) of a done cell's snapshots
    extra: dict = field(default_factory=dict)  # EXTRA's figures this cell has
    same_as: str = ""  # the cell whose samples (`samples`) this one shares, where it draws none of its own
    because: str = ""  # why (SampleTask.because): the keys they differ in, which its sampler ignores


def _cell_state(statuses: dict, queue: dict | None) -> tuple[str, str]:
    """(state, detail) of a cell without a result, from its {stage: TaskStatus or None}: the worst state wins."""
    observed = {stage: (observe(status, queue), status) for stage, status in statuses.items()}
    for worst in ("failed", "lost", "cancelled", "running", "preempted"):
        for stage, ((state, detail), status) in observed.items():
            if state == worst:
                log = f" (log: {status.log})" if status and status.log and worst in NOT_DONE else ""
                attempt = f" (attempt {status.attempts})" if status and worst in ("running", "preempted") else ""
                return worst, f"{stage}: {detail or worst}{attempt}{log}"
    return "pending", ""


def collect(sweep: Plan, queue: dict | None = None) -> list[CellResult]:
    """Every cell of the sweep with its state and metrics, in grid order (`queue`: Slurm's, if any)."""
    results = []
    drawers = {task.folder: task for task in sweep.sample}
    for task in sweep.sample:
        samples = task.samples
        source = drawers[samples] if samples != task.folder else None  # the cell that drew this one's samples
        report_path = samples / METRICS_FILE
        statuses = {task.stage: read_status(sweep.root, task)}
        if task.train is not None:  # an anchor has no training task
            statuses[task.train.stage] = read_status(sweep.root, task.train)
        # The samples' own record: the drawing cell's (its time is the samples' cost), with its name where it fails.
        drawn = {} if source is None else {f"{task.stage} of {source.name}": read_status(sweep.root, source)}
        curve: tuple = ()
        extra = _compute(task, statuses | {task.stage: next(iter(drawn.values()), statuses[task.stage])})
        if report_path.is_file() and all(status is not None and status.state == "done"
                                         for status in [statuses[task.stage], *drawn.values()]):
            report = json.loads(report_path.read_text())
            metrics = {key: report[key] for key in METRICS} | {"n": report["n"]}
            extra |= _beyond_fid(report)
            state, detail = "done", ""
            if isinstance(task, SampleTask) and (task.over_training / CURVE).is_file():
                curve = tuple(json.loads((task.over_training / CURVE).read_text()))
            stale = _shorter(task, samples)
            if stale:  # a row never mixes cells of different training lengths
                metrics, extra, curve, state, detail = {}, _compute(task, {}), (), "stale", stale
        else:
            metrics = {}
            state, detail = _cell_state(statuses | drawn, queue)
        results.append(CellResult(task.name, task.group, task.seed, state, detail, metrics,
                                  task.train.name if task.train is not None else "", samples, curve, extra,
                                  source.name if source else "", task.because if source else ""))
    return results


def _shorter(task, samples: Path) -> str:
    """Why a done cell's samples (in `samples`) are not of its network at the sweep's train.steps (its shards
    record the step they were drawn at), else ''."""
    from ..samples.shards import MANIFEST  # h5py's module: only when a table is made

    manifest = samples / MANIFEST
    if not isinstance(task, SampleTask) or not manifest.is_file():
        return ""
    step = json.loads(manifest.read_text()).get("meta", {}).get("checkpoint_step")
    steps = task.config["train"]["steps"]
    return "" if step in (None, steps) else (f"sampled at step {step} of a network the sweep trains to {steps} "
                                             "steps: left out of its row")


def _compute(task, statuses: dict) -> dict:
    """What a cell cost: NFE per sample, training images, wall seconds of each stage's last attempt, and the
    held-out DSM loss of its network (heldout_dsm.json's mean, where training wrote one)."""
    from ..heldout import HELDOUT_FILE  # torch: only when a table is made (commands' --help stays light)
    from ..sampling import SamplerPlan

    figures = {}
    if isinstance(task, SampleTask):
        config = config_from_dict(task.config)
        figures["nfe"] = SamplerPlan.from_config(config.noise, config.sampler).network_evaluations
        figures["training_images"] = config.train.steps * config.train.batch_size
        heldout = task.train.folder / HELDOUT_FILE
        if heldout.is_file():
            figures["heldout_dsm"] = json.loads(heldout.read_text())["mean"]
    for stage, status in statuses.items():
        if status is not None and status.state == "done" and status.finished:
            figures[f"{stage}_seconds"] = status.finished - status.started
    return figures


def _beyond_fid(report: dict) -> dict:
    """Precision, recall, density, coverage and FID∞ of an evaluator report, where it has them."""
    figures = {key: report[key] for key in ("precision", "recall", "density", "coverage")
               if isinstance(report.get(key), (int, float))}
    infinity = report.get("fid_infinity")
    value = infinity.get("value") if isinstance(infinity, dict) else infinity
    return figures | ({"fid_infinity": value} if isinstance(value, (int, float)) else {})


def _spread(values: list[float | None]) -> dict:
    """Mean, std and 95% CI over seeds; None values (a metric a cell could not compute, e.g. IS without a
    classifier) are left out."""
    values = [value for value in values if value is not None]
    n = len(values)
    if n == 0:
        return {"mean": None, "std": None, "ci95": None}
    mean = math.fsum(values) / n
    if n == 1:
        return {"mean": mean, "std": None, "ci95": None}
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    return {"mean": mean, "std": std, "ci95": t_quantile(0.975, n - 1) * std / math.sqrt(n)}


def summarize(cells: list[CellResult]) -> tuple[list[dict], list[dict]]:
    """One row per group: seeds done/total, N per cell, mean/std/ci95 of each metric, problems; and beside the
    rows, each row's spread of wall seconds per stage (SECONDS: reported, never part of a row)."""
    groups: dict[tuple, list[CellResult]] = {}
    for cell in cells:
        groups.setdefault(cell.group, []).append(cell)
    rows, seconds = [], []
    for group, members in groups.items():
        done = [cell for cell in members if cell.state == "done"]
        counts = sorted({cell.metrics["n"] for cell in done})
        row = {"group": dict(group), "seeds_done": len(done), "seeds_total": len(members),
               "n_per_cell": counts[0] if len(counts) == 1 else counts,
               "seeds": [cell.seed for cell in done],
               "problems": [f"seed {cell.seed}: {cell.state}" + (f" ({cell.detail})" if cell.detail else "")
                            for cell in members if cell.state != "done"]}
        for metric in METRICS:
            row[metric] = _spread([cell.metrics[metric] for cell in done])
        for key in EXTRA:
            values = [cell.extra.get(key) for cell in done]
            if any(value is not None for value in values):
                row[key] = _spread(values)
        shared = _shared(members, cells)
        row |= {"shares": shared} if shared else {}  # a table of cells that share nothing: as before
        curve = _over_training([cell for cell in done if cell.over_training])
        if curve:
            best = min(curve, key=lambda point: (point["fid"]["mean"], point["step"]))
            row["over_training"], row["best_step"] = curve, {"step": best["step"], "fid": best["fid"], "n": best["n"]}
        rows.append(row)
        seconds.append({key: _spread([cell.extra.get(key) for cell in done]) for key in SECONDS})
    return rows, seconds


def _shared(members: list[CellResult], cells: list[CellResult]) -> list[str]:
    """What a row's cells that share the samples of other cells say: 'same samples as the row … (why)', with the
    seeds where not all of the row's cells do."""
    groups = {cell.name: cell.group for cell in cells}
    found: dict[str, list[int]] = {}
    for cell in members:
        if cell.same_as:
            found.setdefault(f"same samples as the row {row_label(groups[cell.same_as])} ({cell.because})",
                             []).append(cell.seed)
    return [line if len(seeds) == len(members) else f"{line}, seed {', '.join(map(str, seeds))}"
            for line, seeds in found.items()]


def _over_training(cells: list[CellResult]) -> list[dict]:
    """FID over training of a row: mean/std/ci95 over its seeds at every step all of them scored."""
    if not cells:
        return []
    by_seed = [{point["step"]: point for point in cell.over_training if point.get("fid") is not None}
               for cell in cells]
    steps = sorted(set.intersection(*(set(points) for points in by_seed)))
    return [{"step": step, "fid": _spread([points[step]["fid"] for points in by_seed]),
             "n": by_seed[0][step]["n"], "seeds": len(by_seed)} for step in steps]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _best_step(row: dict) -> str:
    best = row.get("best_step")
    return "–" if best is None else f"{best['step']} ({_fmt(best['fid']['mean'])} at N={best['n']})"


def _mean(row: dict, key: str, digits: int = 4) -> str:
    return _fmt(row[key]["mean"], digits) if key in row else "–"


def compare(rows: list[dict], cells: list[CellResult], spec: SweepSpec) -> list[dict]:
    """FID of every arm against the baseline arm (the first of the arm axis), within each setting of the other
    axes: paired by seed where the arm's cells sample the baseline's networks, Welch's interval otherwise."""
    arms = spec.axes.get(ARM_AXIS, [])
    if len(arms) < 2:
        return []
    baseline = arms[0]
    settings: dict[tuple, dict[str, list[CellResult]]] = {}
    for cell in cells:
        group = dict(cell.group)
        if ARM_AXIS in group:
            context = tuple((key, value) for key, value in cell.group if key != ARM_AXIS)
            settings.setdefault(context, {}).setdefault(group[ARM_AXIS], []).append(cell)
    found = []
    for context, by_arm in settings.items():
        if baseline not in by_arm:
            continue
        values = {arm: {c.seed: c.metrics["fid"] for c in by_arm[arm] if c.state == "done"}
                  for arm in arms if arm in by_arm}
        networks = {c.seed: c.train for c in by_arm[baseline]}

        def shares(arm: str) -> bool:
            return all(networks.get(c.seed) == c.train for c in by_arm[arm])

        for comparison in compare_to_baseline(values, baseline, shares_networks=shares):
            found.append({"setting": dict(context), **comparison.to_dict()})
    return found


def _incomplete(cells: list[CellResult]) -> str:
    """What marks a table of an unfinished sweep ('' when every cell is done), after its 'Incomplete:'."""
    missing = [cell for cell in cells if cell.state != "done"]
    if not missing:
        return ""
    return (f"{len(missing)} of {len(cells)} cells not done ("
            + ", ".join(f"{cell.name}: {cell.state}" for cell in missing)
            + "); rerun the sweep to finish them, which rewrites this table.")


def _interval(pair: list | None) -> str:
    return "–" if pair is None else f"[{_fmt(pair[0])}, {_fmt(pair[1])}]"


def table_blocks(rows: list[dict], cells: list[CellResult], comparisons: list[dict] = (), audits: dict | None = None,
                 seconds: list[dict] | None = None) -> list:
    """table.md's content as blocks (hpc_ncsn.sweep.report: the same blocks make table.md and report.html);
    `seconds`: summarize's wall seconds beside each row (– where not given)."""
    over_training = any("best_step" in row for row in rows)  # the column only where snapshots were scored
    header = ("arm", "seeds", "N per cell", "FID mean", "FID std", "FID 95% CI", "KID mean", "IS mean",
              *(("best step (FID)",) if over_training else ()), "problems")
    lines = []
    for row in rows:
        fid = row["fid"]
        label = row_label(tuple(row["group"].items())) + (f" {SHARED_MARK}" if row.get("shares") else "")
        lines.append((label, f"{row['seeds_done']}/{row['seeds_total']}",
                      f"{row['n_per_cell'] if row['n_per_cell'] != [] else '–'}", _fmt(fid["mean"]), _fmt(fid["std"]),
                      "–" if fid["ci95"] is None else f"± {_fmt(fid['ci95'])}", _fmt(row["kid_mean"]["mean"]),
                      _fmt(row["is_mean"]["mean"]), *((_best_step(row),) if over_training else ()),
                      "; ".join(row["problems"])))
    blocks = [Table("rows", header, tuple(lines))]
    shared = [f"{row_label(tuple(row['group'].items()))}: {line}" for row in rows for line in row.get("shares", ())]
    if shared:
        blocks += [Text(f"{SHARED_MARK} Rows that draw no samples of their own: their sampler ignores the keys "
                        "in which they differ from the row they share them with, so both rows show the same samples "
                        "and numbers:"), shared]
    if _incomplete(cells):
        blocks.append(Text(_incomplete(cells), strong="Incomplete:"))
    if comparisons:
        blocks.append(Text(f"Against {comparisons[0]['baseline']}, FID difference (arm − baseline; lower is better), "
                           "paired by seed where the arms share networks:"))
        header = ("arm", "setting", "paired", "seeds", "differences", "mean", "95% CI (t)", "bootstrap CI", "verdict")
        blocks.append(Table("comparisons", header, tuple(
            (c["arm"], ", ".join(f"{k}={v}" for k, v in c["setting"].items()) or "–", "yes" if c["paired"] else "no",
             str(c["n"]), ", ".join(_fmt(d) for d in c["differences"]) or "–", _fmt(c["mean"]),
             _interval(c["interval"]), _interval(c["bootstrap"]), c["verdict"]) for c in comparisons)))
        blocks.append([c["power_line"] for c in comparisons])
    blocks.append(Text("Beyond FID, and what it cost (means over seeds; – where not measured):"))
    lines = []
    for row, spent in zip(rows, seconds or [{}] * len(rows)):
        label = row_label(tuple(row["group"].items()))
        row = row | spent
        audit = (audits or {}).get(label, {})
        noise = "" if audit.get("end_noise") is None else f"{audit['end_noise']:.3g} σ_L, "
        lines.append((label, _mean(row, "fid_infinity"),
                      *(_mean(row, key, 3) for key in ("precision", "recall", "density", "coverage")),
                      _mean(row, "heldout_dsm"), _mean(row, "nfe"), _mean(row, "training_images"),
                      _mean(row, "train_seconds", 3), _mean(row, "sample_seconds", 3),
                      f"{noise}{audit.get('verdict', '–')}"))
    blocks.append(Table("beyond", ("arm", "FID∞", "precision", "recall", "density", "coverage", "held-out DSM", "NFE",
                                   "training images", "train s", "sample s", "sampler audit"), tuple(lines)))
    blocks.append(Text("Per cell:"))
    blocks.append(Table("cells", ("cell", "state", "FID", "KID", "IS", "N", "detail"), tuple(
        (cell.name, cell.state, _fmt(cell.metrics.get("fid")), _fmt(cell.metrics.get("kid_mean")),
         _fmt(cell.metrics.get("is_mean")), f"{cell.metrics.get('n', '–')}",
         cell.detail or (f"same samples as {cell.same_as} ({cell.because})" if cell.same_as else ""))
        for cell in cells)))
    return blocks


def csv_text(rows: list[dict]) -> str:
    keys = sorted({key for row in rows for key in row["group"]})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    over_training = any("best_step" in row for row in rows)
    header = [*keys, "seeds_done", "seeds_total", "n_per_cell"]
    for metric in METRICS:
        header += [f"{metric}_mean", f"{metric}_std", f"{metric}_ci95"]
    header += ["best_step", "best_step_fid_mean", "best_step_n"] if over_training else []
    writer.writerow([*header, "problems"])
    for row in rows:
        line = [row["group"].get(key, "") for key in keys]
        line += [row["seeds_done"], row["seeds_total"], json.dumps(row["n_per_cell"])]
        for metric in METRICS:
            line += ["" if row[metric][k] is None else repr(row[metric][k]) for k in ("mean", "std", "ci95")]
        if over_training:
            best = row.get("best_step")
            line += [best["step"], repr(best["fid"]["mean"]), best["n"]] if best else ["", "", ""]
        writer.writerow([*line, "; ".join(row["problems"])])
    return out.getvalue()


def aggregate(root: Path, plots: bool = True) -> dict:
    """Write table.md/.csv/.json (and the plots of hpc_ncsn.sweep.plots) in the sweep folder."""
    root = Path(root)
    spec = SweepSpec.load(root)
    return write_table(root, spec, [plan(spec, root)], plots)


def write_table(out: Path, spec: SweepSpec, sweeps: list[Plan], plots: bool = True) -> dict:
    """The table of the cells of `sweeps` (one sweep folder, or several that hpc_ncsn.sweep.combine joined
    under `spec`, the union of their grids) into `out`; table.json names the folders where there are several."""
    try:
        queue = scheduler_queue()
    except Unanswered:  # the status files alone then say what each cell is
        queue = None
    cells = [cell for sweep in sweeps for cell in collect(sweep, queue)]
    rows, seconds = summarize(cells)
    comparisons = compare(rows, cells, spec)
    audits = None
    for sweep in sweeps:  # each row's audit as its folder recorded it
        if (sweep.root / AUDIT_FILE).is_file():
            audits = json.loads((sweep.root / AUDIT_FILE).read_text()) | (audits or {})
    table = {"rows": rows, "cells": [{"name": c.name, "group": dict(c.group), "seed": c.seed, "state": c.state,
                                      "detail": c.detail, "metrics": c.metrics, "train": c.train, "extra": c.extra}
                                     | ({"over_training": list(c.over_training)} if c.over_training else {})
                                     | ({"same_as": c.same_as, "because": c.because} if c.same_as else {})
                                     for c in cells],
             "comparisons": comparisons, "audit": audits,
             "complete": all(c.state == "done" for c in cells)}
    table |= {"sweeps": [str(sweep.root) for sweep in sweeps]} if len(sweeps) > 1 else {}
    atomic_write(out / "table.json", json.dumps(table, indent=2, sort_keys=True) + "\n")
    atomic_write(out / "table.csv", csv_text(rows))
    blocks = table_blocks(rows, cells, comparisons, audits, seconds)
    atomic_write(out / "table.md", markdown(blocks))
    figures = plot_all(Plan.joined(out, spec, sweeps), rows, cells, comparisons, out) if plots else None
    write_report(out, spec, sweeps, blocks, table, figures, plotted(rows, cells, comparisons)[1])
    return table
