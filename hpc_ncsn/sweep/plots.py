"""The sweep table's plots: FID per row, FID over training, loss per σ level, sample grids, the paired
differences against the baseline arm, FID against network evaluations, and the held-out DSM loss against σ.
Every figure is written atomically; matplotlib is imported here only (Agg backend)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..files import atomic_path, read_jsonl
from .plan import ARM_AXIS, REPORT_FILE, Plan, row_label

__all__ = ["PLOT_ROWS", "mean_over_seeds", "plot_all", "planned_files", "plotted", "sample_grid_png"]


def _figure(columns: int, width: float = 3.2, height: float = 3.0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, plt.subplots(1, max(columns, 1), figsize=(width * max(columns, 1), height), squeeze=False)


def _save(plt, figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=path.suffix[1:], dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)


def _plot_fid(rows: list[dict], cells: list, path: Path) -> None:
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
    ax.set_xticks(range(len(rows)), [row_label(tuple(row["group"].items())) for row in rows], rotation=20)
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
        label = f"{row_label(tuple(row['group'].items()))} ({row['over_training'][0]['seeds']} seeds)"
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


def _plot_losses(sweep: Plan, cells: list, path: Path) -> None:
    groups: dict[tuple, set[str]] = {}
    for cell in cells:
        groups.setdefault(cell.group, set()).add(cell.train)
    plt, (figure, axes) = _figure(len(groups))
    folders = {task.name: task.folder for task in sweep.train}
    for ax, (group, trains) in zip(axes[0], groups.items()):
        curves = [c for c in (_read_losses(folders[name]) for name in sorted(trains) if name in folders)
                  if c is not None]
        ax.set_title(row_label(group), fontsize=9)
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


def _first_samples(folder: Path, count: int) -> np.ndarray:
    """The first `count` images of a cell's first shard, tiled in a square grid (uint8, height × width × channels)."""
    from ..samples.shards import read_shard

    images, _, _ = read_shard(sorted(Path(folder).glob("shard-*.h5"))[0])
    images = images[:count]
    side = math.ceil(math.sqrt(len(images)))
    h, w, c = images.shape[1:]
    grid = np.zeros((side * h, side * w, c), np.uint8)
    for k, image in enumerate(images):
        grid[(k // side) * h:(k // side + 1) * h, (k % side) * w:(k % side + 1) * w] = image
    return grid


def sample_grid_png(folder: Path, count: int = 36) -> bytes | None:
    """The PNG bytes of a cell's first `count` samples in a grid (its samples folder's first shard), pixel for pixel;
    None where the folder holds no shard (removed since)."""
    import io

    from PIL import Image

    if not any(Path(folder).glob("shard-*.h5")):
        return None
    grid = _first_samples(folder, count)
    buffer = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid).save(buffer, format="png")
    return buffer.getvalue()


def _plot_samples(cells: list, path: Path, count: int = 36) -> None:
    firsts: dict[tuple, object] = {}
    for cell in cells:
        if firsts.get(cell.group) is None:
            firsts[cell.group] = cell if cell.state == "done" else None
    plt, (figure, axes) = _figure(len(firsts))
    for ax, (group, cell) in zip(axes[0], firsts.items()):
        ax.set_title(row_label(group) + (f", seed {cell.seed}" if cell else ""), fontsize=9)
        ax.axis("off")
        if cell is None:
            ax.text(0.5, 0.5, "no finished cell", ha="center", transform=ax.transAxes)
            continue
        grid = _first_samples(cell.samples, count)
        gray = grid.shape[2] == 1
        ax.imshow(grid[..., 0] if gray else grid, cmap="gray" if gray else None, interpolation="nearest")
    _save(plt, figure, path)


def _plot_paired(comparisons: list[dict], path: Path) -> None:
    """Each arm's FID difference from the baseline: the seeds' differences (dots), the mean and its 95% CI."""
    plt, (figure, axes) = _figure(1, width=1.6 * max(len(comparisons), 2))
    ax = axes[0, 0]
    for x, comparison in enumerate(comparisons):
        ax.scatter([x] * len(comparison["differences"]), comparison["differences"], color="0.6", s=12, zorder=2)
        if comparison["interval"] is not None:
            low, high = comparison["interval"]
            ax.errorbar([x], [comparison["mean"]], yerr=[[comparison["mean"] - low], [high - comparison["mean"]]],
                        fmt="o", capsize=6, color="C0" if comparison["paired"] else "C1", zorder=3)
    ax.axhline(0.0, color="0.3", linewidth=0.8)
    labels = [comparison["arm"] + ("" if comparison["paired"] else " (unpaired)") +
              "".join(f"\n{k}={v}" for k, v in comparison["setting"].items()) for comparison in comparisons]
    ax.set_xticks(range(len(comparisons)), labels, rotation=20)
    ax.set_xlim(-0.5, len(comparisons) - 0.5)
    ax.set_ylabel(f"FID − FID of {comparisons[0]['baseline']} (95% CI; dots: seeds)")
    _save(plt, figure, path)


def _plot_nfe(rows: list[dict], comparisons: list[dict], path: Path) -> None:
    """The quality/compute frontier: FID (and the paired difference) against network evaluations per sample."""
    plt, (figure, axes) = _figure(2 if comparisons else 1, width=4.0, height=3.2)
    ax = axes[0, 0]
    for k, row in enumerate(row for row in rows if "nfe" in row and row["fid"]["mean"] is not None):
        ax.errorbar([row["nfe"]["mean"]], [row["fid"]["mean"]], yerr=[[row["fid"]["ci95"] or 0.0]], fmt="o",
                    capsize=4, color=f"C{k % 10}", label=row_label(tuple(row["group"].items())))
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per sample")
    ax.set_ylabel("FID (mean, 95% CI over seeds)")
    ax.legend(fontsize=7)
    if comparisons:
        nfe = {row_label(tuple(row["group"].items())): row["nfe"]["mean"] for row in rows if "nfe" in row}
        ax = axes[0, 1]
        for k, comparison in enumerate(comparisons):
            label = row_label((("arm", comparison["arm"]), *comparison["setting"].items()))
            if comparison["interval"] is None or label not in nfe:
                continue
            low, high = comparison["interval"]
            ax.errorbar([nfe[label]], [comparison["mean"]], yerr=[[comparison["mean"] - low], [high - comparison["mean"]]],
                        fmt="o", capsize=4, color=f"C{k % 10}", label=label)
        ax.axhline(0.0, color="0.3", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample")
        ax.set_ylabel(f"FID − FID of {comparisons[0]['baseline']} (95% CI)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _save(plt, figure, path)


def _plot_heldout(sweep: Plan, cells: list, path: Path) -> bool:
    """Held-out DSM loss against σ per row (mean ± std over its networks); False where no network has one."""
    from ..heldout import HELDOUT_FILE  # torch: only when a table is plotted

    folders = {task.name: task.folder for task in sweep.train}
    groups: dict[tuple, set[str]] = {}
    for cell in cells:
        if cell.train in folders and (folders[cell.train] / HELDOUT_FILE).is_file():
            groups.setdefault(cell.group, set()).add(cell.train)
    if not groups:
        return False
    plt, (figure, axes) = _figure(1, width=5.0, height=3.4)
    ax = axes[0, 0]
    for k, (group, trains) in enumerate(groups.items()):
        records = [json.loads((folders[name] / HELDOUT_FILE).read_text()) for name in sorted(trains)]
        if len({tuple(record["sigmas"]) for record in records}) != 1:
            continue  # networks scored on different grids cannot be averaged point by point
        losses = np.array([record["per_sigma"] for record in records])
        sigmas = np.array(records[0]["sigmas"])
        mean, std = losses.mean(axis=0), losses.std(axis=0)
        ax.plot(sigmas, mean, marker="o", markersize=3, color=f"C{k % 10}",
                label=f"{row_label(group)} ({len(records)} networks)")
        ax.fill_between(sigmas, mean - std, mean + std, color=f"C{k % 10}", alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("σ")
    ax.set_ylabel("held-out DSM loss, σ²-weighted (mean ± std)")
    ax.legend(fontsize=7)
    _save(plt, figure, path)
    return True


PLOT_ROWS = 24  # rows a plot shows at most (a figure of every row of a 1,000-row sweep is unreadable)


def plotted(rows: list[dict], cells: list, comparisons: list[dict]) -> tuple[list[dict], list, list[dict]]:
    """The first PLOT_ROWS rows of the table, their cells and the comparisons within them: what the plots show
    (the table itself keeps every row). The figures' cost then stays bounded whatever the sweep's size."""
    if len(rows) <= PLOT_ROWS:
        return rows, cells, comparisons
    shown = rows[:PLOT_ROWS]
    groups = {tuple(row["group"].items()) for row in shown}
    labels = {row_label(group) for group in groups}
    return (shown, [cell for cell in cells if cell.group in groups],
            [c for c in comparisons if row_label((("arm", c["arm"]), *c["setting"].items())) in labels])


def plot_all(sweep: Plan, rows: list[dict], cells: list, comparisons: list[dict], root: Path) -> list[Path]:
    """Every plot of the table into the sweep folder (of its first PLOT_ROWS rows: `plotted`); returns their paths."""
    rows, cells, comparisons = plotted(rows, cells, comparisons)
    written = [root / "fid.png", root / "loss_per_level.png", root / "samples.png"]
    _plot_fid(rows, cells, written[0])
    _plot_losses(sweep, cells, written[1])
    _plot_samples(cells, written[2])
    if any("over_training" in row for row in rows):
        _plot_over_training(rows, root / "fid_vs_step.png")
        written.append(root / "fid_vs_step.png")
    if comparisons:
        _plot_paired(comparisons, root / "paired.png")
        written.append(root / "paired.png")
    if any("nfe" in row for row in rows):
        _plot_nfe(rows, comparisons, root / "fid_vs_nfe.png")
        written.append(root / "fid_vs_nfe.png")
    if _plot_heldout(sweep, cells, root / "heldout_dsm.png"):
        written.append(root / "heldout_dsm.png")
    return written


def planned_files(sweep: Plan) -> list[str]:
    """What the aggregate task writes once every cell of `sweep` is done: the tables, plot_all's figures, the page."""
    base = sweep.spec.base["train"]
    files = ["table.md", "table.csv", "table.json", "fid.png", "loss_per_level.png", "samples.png"]
    files += ["fid_vs_step.png"] if base["eval_every"] else []
    files += ["paired.png"] if len(sweep.spec.axes.get(ARM_AXIS, [])) > 1 else []
    files += ["fid_vs_nfe.png"] if any(task.train is not None for task in sweep.sample) else []
    heldout = any(task.config["train"]["heldout_examples"] for task in sweep.train)
    return files + (["heldout_dsm.png"] if heldout else []) + [REPORT_FILE]
