"""Sweep results → the ablation table (Markdown, CSV, JSON) and its plots.

One row per group of cells that differ only in the seed (one arm, for the
noise-schedule ablation): mean, sample standard deviation and 95% confidence
interval over seeds (Student t, n−1 degrees of freedom) of FID, KID and IS, with
the number of samples per cell. A cell that failed, is still running or was never
run stays in the table as such. The same inputs give byte-identical tables.

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

import numpy as np

from ..files import atomic_path, atomic_write, read_jsonl
from .plan import ARM_AXIS, Plan, SweepSpec, plan
from .scheduler import queue as scheduler_queue
from .status import NOT_DONE, observe, read_status
from .tasks import CURVE, SampleTask

__all__ = ["CellResult", "aggregate", "collect", "summarize"]

METRICS = ("fid", "kid_mean", "is_mean")


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
    for task in sweep.sample:
        report_path = task.folder / "metrics.json"
        statuses = {task.stage: read_status(sweep.root, task)}
        if task.train is not None:  # an anchor has no training task
            statuses[task.train.stage] = read_status(sweep.root, task.train)
        curve: tuple = ()
        if report_path.is_file() and statuses[task.stage] is not None and statuses[task.stage].state == "done":
            report = json.loads(report_path.read_text())
            metrics = {key: report[key] for key in METRICS} | {"n": report["n"]}
            state, detail = "done", ""
            if isinstance(task, SampleTask) and (task.over_training / CURVE).is_file():
                curve = tuple(json.loads((task.over_training / CURVE).read_text()))
        else:
            metrics = {}
            state, detail = _cell_state(statuses, queue)
        results.append(CellResult(task.name, task.group, task.seed, state, detail, metrics,
                                  task.train.name if task.train is not None else "", task.folder, curve))
    return results


def _t_quantile_975(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


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
    return {"mean": mean, "std": std, "ci95": _t_quantile_975(n - 1) * std / math.sqrt(n)}


def summarize(cells: list[CellResult]) -> list[dict]:
    """One row per group: seeds done/total, N per cell, mean/std/ci95 of each metric, problems."""
    groups: dict[tuple, list[CellResult]] = {}
    for cell in cells:
        groups.setdefault(cell.group, []).append(cell)
    rows = []
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
        curve = _over_training([cell for cell in done if cell.over_training])
        if curve:
            best = min(curve, key=lambda point: (point["fid"]["mean"], point["step"]))
            row["over_training"], row["best_step"] = curve, {"step": best["step"], "fid": best["fid"], "n": best["n"]}
        rows.append(row)
    return rows


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


def _group_label(group: dict) -> str:
    """A row's name: the arm by itself (`geometric`), an anchor as `anchor: real`, other axes as key=value."""
    parts = [str(value) if key == ARM_AXIS else f"{key}: {value}" if key == "anchor" else f"{key}={value}"
             for key, value in group.items()]
    return ", ".join(parts) or "(all)"


def _best_step(row: dict) -> str:
    best = row.get("best_step")
    return "–" if best is None else f"{best['step']} ({_fmt(best['fid']['mean'])} at N={best['n']})"


def markdown(rows: list[dict], cells: list[CellResult]) -> str:
    over_training = any("best_step" in row for row in rows)  # the column only where snapshots were scored
    extra = (" best step (FID) |", "---|") if over_training else ("", "")
    lines = [f"| arm | seeds | N per cell | FID mean | FID std | FID 95% CI | KID mean | IS mean |{extra[0]} problems |",
             f"|---|---|---|---|---|---|---|---|{extra[1]}---|"]
    for row in rows:
        fid = row["fid"]
        ci = "–" if fid["ci95"] is None else f"± {_fmt(fid['ci95'])}"
        best = f" {_best_step(row)} |" if over_training else ""
        lines.append(f"| {_group_label(row['group'])} | {row['seeds_done']}/{row['seeds_total']} | "
                     f"{row['n_per_cell'] if row['n_per_cell'] != [] else '–'} | {_fmt(fid['mean'])} | "
                     f"{_fmt(fid['std'])} | {ci} | {_fmt(row['kid_mean']['mean'])} | {_fmt(row['is_mean']['mean'])} |"
                     f"{best} {'; '.join(row['problems']) or ''} |")
    lines += ["", "Per cell:", "", "| cell | state | FID | KID | IS | N | detail |", "|---|---|---|---|---|---|---|"]
    for cell in cells:
        m = cell.metrics
        lines.append(f"| {cell.name} | {cell.state} | {_fmt(m.get('fid'))} | {_fmt(m.get('kid_mean'))} | "
                     f"{_fmt(m.get('is_mean'))} | {m.get('n', '–')} | {cell.detail} |")
    return "\n".join(lines) + "\n"


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
    """Write table.md/.csv/.json (and fid.png, loss_per_level.png, samples.png) in the sweep folder."""
    root = Path(root)
    sweep = plan(SweepSpec.load(root), root)
    cells = collect(sweep, scheduler_queue())
    rows = summarize(cells)
    table = {"rows": rows, "cells": [{"name": c.name, "group": dict(c.group), "seed": c.seed, "state": c.state,
                                      "detail": c.detail, "metrics": c.metrics, "train": c.train}
                                     | ({"over_training": list(c.over_training)} if c.over_training else {})
                                     for c in cells]}
    atomic_write(root / "table.json", json.dumps(table, indent=2, sort_keys=True) + "\n")
    atomic_write(root / "table.csv", csv_text(rows))
    atomic_write(root / "table.md", markdown(rows, cells))
    if plots:
        _plot_fid(rows, cells, root / "fid.png")
        _plot_losses(sweep, cells, root / "loss_per_level.png")
        _plot_samples(cells, root / "samples.png")
        if any("over_training" in row for row in rows):
            _plot_over_training(rows, root / "fid_vs_step.png")
    return table


# Plots ------------------------------------------------------------------------------------

def _figure(columns: int, width: float = 3.2, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(1, max(columns, 1), figsize=(width * max(columns, 1), height), squeeze=False)


def _save(plt, figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix[1:], dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)


def _plot_fid(rows: list[dict], cells: list[CellResult], path: Path) -> None:
    plt, (figure, axes) = _figure(1, width=1.6 * max(len(rows), 2))
    ax = axes[0, 0]
    for x, row in enumerate(rows):
        values = [c.metrics["fid"] for c in cells if c.group == tuple(row["group"].items()) and c.state == "done"]
        ax.scatter([x] * len(values), values, color="0.6", s=12, zorder=2)
        if row["fid"]["mean"] is not None:
            ax.errorbar([x], [row["fid"]["mean"]], yerr=[[row["fid"]["ci95"] or 0.0]], fmt="o", capsize=6,
                        color="C0", zorder=3)
        ax.annotate(f"{row['seeds_done']}/{row['seeds_total']}", (x, 0), xycoords=("data", "axes fraction"),
                    xytext=(0, 3), textcoords="offset points", ha="center", fontsize=8)
    ax.set_xticks(range(len(rows)), [_group_label(row["group"]) for row in rows], rotation=20)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_ylabel("FID (mean, 95% CI over seeds; dots: seeds)")
    _save(plt, figure, path)


def _plot_over_training(rows: list[dict], path: Path) -> None:
    plt, (figure, axes) = _figure(1, width=5.0, height=3.4)
    ax = axes[0, 0]
    for k, row in enumerate(row for row in rows if row.get("over_training")):
        steps = [point["step"] for point in row["over_training"]]
        mean = np.array([point["fid"]["mean"] for point in row["over_training"]])
        std = np.array([point["fid"]["std"] or 0.0 for point in row["over_training"]])
        label = f"{_group_label(row['group'])} ({row['over_training'][0]['seeds']} seeds)"
        ax.plot(steps, mean, marker="o", markersize=3, color=f"C{k}", label=label)
        ax.fill_between(steps, mean - std, mean + std, color=f"C{k}", alpha=0.2, linewidth=0)
        ax.scatter([row["best_step"]["step"]], [row["best_step"]["fid"]["mean"]], marker="*", s=90, color=f"C{k}",
                   zorder=3)
    ax.set_xlabel("training step")
    n = next(row["best_step"]["n"] for row in rows if row.get("best_step"))
    ax.set_ylabel(f"FID at N={n} (mean ± std over seeds)")
    ax.set_title("FID over training (★ best step)", fontsize=9)
    ax.legend(fontsize=7)
    _save(plt, figure, path)


def _read_losses(run: Path) -> tuple[np.ndarray, np.ndarray] | None:
    records = [r for r in read_jsonl(run / "metrics.jsonl") if "loss_per_level" in r]
    if not records:
        return None
    return np.array([r["step"] for r in records]), np.array([r["loss_per_level"] for r in records], dtype=float)


def mean_over_seeds(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(every logged step, the per-level loss averaged over the seeds that logged that step): a seed still
    training does not cut the others' curves short."""
    steps = np.array(sorted({int(step) for run_steps, _ in curves for step in run_steps}))
    padded = np.full((len(curves), len(steps), curves[0][1].shape[1]), np.nan)
    for k, (run_steps, losses) in enumerate(curves):
        padded[k, np.searchsorted(steps, run_steps)] = losses
    return steps, np.nanmean(padded, axis=0)


def _plot_losses(sweep: Plan, cells: list[CellResult], path: Path) -> None:
    groups: dict[tuple, set[str]] = {}
    for cell in cells:
        groups.setdefault(cell.group, set()).add(cell.train)
    plt, (figure, axes) = _figure(len(groups))
    folders = {task.name: task.folder for task in sweep.train}
    for ax, (group, trains) in zip(axes[0], groups.items()):
        curves = [c for c in (_read_losses(folders[name]) for name in sorted(trains) if name in folders)
                  if c is not None]
        ax.set_title(_group_label(dict(group)), fontsize=9)
        if not curves:
            ax.text(0.5, 0.5, "no training log", ha="center", transform=ax.transAxes)
            continue
        steps, mean = mean_over_seeds(curves)
        levels = sorted({round(i) for i in np.linspace(0, mean.shape[1] - 1, 5)})
        for level in levels:
            ax.plot(steps, mean[:, level], label=f"level {level + 1}")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("DSM loss per σ level (mean over seeds)")
    _save(plt, figure, path)


def _plot_samples(cells: list[CellResult], path: Path, count: int = 36) -> None:
    from ..samples.shards import read_shard

    firsts: dict[tuple, CellResult | None] = {}
    for cell in cells:
        if firsts.get(cell.group) is None:
            firsts[cell.group] = cell if cell.state == "done" else None
    plt, (figure, axes) = _figure(len(firsts))
    for ax, (group, cell) in zip(axes[0], firsts.items()):
        ax.set_title(_group_label(dict(group)) + (f", seed {cell.seed}" if cell else ""), fontsize=9)
        ax.axis("off")
        if cell is None:
            ax.text(0.5, 0.5, "no finished cell", ha="center", transform=ax.transAxes)
            continue
        images, _, _ = read_shard(sorted(cell.samples.glob("shard-*.h5"))[0])
        images = images[:count]
        side = math.ceil(math.sqrt(len(images)))
        h, w, c = images.shape[1:]
        grid = np.zeros((side * h, side * w, c), np.uint8)
        for k, image in enumerate(images):
            grid[(k // side) * h:(k // side + 1) * h, (k % side) * w:(k % side + 1) * w] = image
        ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, interpolation="nearest")
    _save(plt, figure, path)
