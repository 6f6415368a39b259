"""The sweep table as blocks, written as Markdown (table.md) and as one self-contained HTML page (report.html).

hpc_ncsn.sweep.aggregate builds table.md's content once, as blocks (`Table`, `Text`,
and lists of bullet lines); `markdown` and `html_blocks` render the same blocks, so
the page's numbers are table.md's. `write_report` puts them in a page with what the
sweep compared, the plots the aggregation drew and a grid of each cell's samples
(both as `data:image/png` URIs), the sampler audit and where the numbers come from
(the hpc_ncsn version, the sweep spec's sha256 and resolved config, the date).

The page is one file that can be mailed: no script, no stylesheet, font or image
from elsewhere, and its Content-Security-Policy lets it load none. Every string from
the sweep (cell and arm names, axis values, errors, config paths) is escaped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import platform
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path

from .. import __version__
from ..files import atomic_write
from .plan import REPORT_FILE, Plan, SweepSpec
from .plots import PLOT_ROWS, sample_grid_png

__all__ = ["GRID_IMAGES", "GRID_PIXELS", "Table", "Text", "html_blocks", "markdown", "write_report"]

GRID_IMAGES = 36  # samples of each cell the page shows (the first shard's first ones, as samples.png)
GRID_PIXELS = 192  # the width a grid is drawn at, its pixels enlarged without blurring


@dataclass(frozen=True)
class Table:
    """A table of text cells; `name` is its id in the page."""

    name: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Text:
    """A paragraph; `strong`: its bold lead-in (a warning's, e.g. 'Incomplete:')."""

    text: str
    strong: str = ""


def _markdown_block(block) -> str:
    if isinstance(block, Table):
        lines = ["| " + " | ".join(block.header) + " |", "|" + "---|" * len(block.header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in block.rows])
    if isinstance(block, Text):
        return f"**{block.strong}** {block.text}" if block.strong else block.text
    return "\n".join(f"- {item}" for item in block)


def markdown(blocks: list) -> str:
    """table.md: the blocks separated by blank lines."""
    return "\n\n".join(_markdown_block(block) for block in blocks) + "\n"


def _html_block(block) -> str:
    if isinstance(block, Table):
        head = "".join(f"<th>{escape(cell)}</th>" for cell in block.header)
        body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>\n"
                       for row in block.rows)
        return f'<table id="{escape(block.name)}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>'
    if isinstance(block, Text):
        if block.strong:
            return f'<p class="warning"><strong>{escape(block.strong)}</strong> {escape(block.text)}</p>'
        return f"<p>{escape(block.text)}</p>"
    return "<ul>\n" + "".join(f"<li>{escape(item)}</li>\n" for item in block) + "</ul>"


def html_blocks(blocks: list) -> str:
    """The blocks as HTML elements, every text escaped."""
    return "\n".join(_html_block(block) for block in blocks)


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(data: bytes, caption: str, alt: str, css: str = "") -> str:
    return (f'<figure{css}><img src="{_png_uri(data)}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _compared(spec: SweepSpec, cells: list[dict]) -> str:
    """What the sweep compared: each axis and its values, the anchors, samples per cell, the data and training."""
    base = spec.base
    axes = "".join(f"<li><b>{escape(key)}</b>: {escape(', '.join(map(str, values)))}</li>\n"
                   for key, values in spec.axes.items())
    anchors = f"<li><b>anchors</b>: {escape(', '.join(spec.anchors))}</li>\n" if spec.anchors else ""
    done = sum(cell["state"] == "done" for cell in cells)
    side = base["data"]["image_size"]
    return (f"<ul>\n{axes}{anchors}"
            f"<li><b>base config</b> (an axis may change it): N = {base['generate']['num_samples']:,} samples per cell "
            f"(generate.num_samples), data {escape(str(base['data']['name']))} {side}×{side}, "
            f"{base['train']['steps']:,} training steps per network</li>\n"
            f"<li><b>cells</b>: {len(cells)}, {done} done</li>\n</ul>")


def _audit(audits: dict | None) -> str:
    """The sampler audit of sweep.json's time (audit.json), one row per arm."""
    if not audits:
        return ""
    header = ("row", "step rule", "T", "ε", "r", "end noise (σ_L)", "limit", "verdict")
    rows = tuple((label, str(a.get("step_rule", "–")), str(a.get("steps_per_level", "–")),
                  f"{a.get('step_lr', 0):g}", f"{a.get('snr', 0):g}",
                  "–" if a.get("end_noise") is None else f"{a['end_noise']:.3g}", f"{a.get('limit', 0):g}",
                  str(a.get("verdict", "–"))) for label, a in audits.items())
    return ("<h2>Sampler audit</h2>\n<p>The chain's noise at its end with the exact score, per arm, before anything "
            "ran (audit.json).</p>\n" + _html_block(Table("audit", header, rows)))


def _provenance(spec: SweepSpec, sweeps: list[Plan]) -> str:
    digest = hashlib.sha256(spec.to_json().encode()).hexdigest()
    facts = [("hpc_ncsn", __version__), ("Python", platform.python_version()),
             ("written", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())),
             ("sweep folders", ", ".join(str(sweep.root) for sweep in sweeps)),
             ("config file", spec.config), ("overrides", " ".join(spec.overrides) or "–"),
             ("sweep spec sha256", digest)]
    items = "".join(f"<li><b>{escape(key)}</b>: {escape(str(value))}</li>\n" for key, value in facts)
    config = escape(json.dumps(spec.base, indent=2, sort_keys=True))
    return (f"<h2>Provenance</h2>\n<ul>\n{items}</ul>\n<details><summary>The resolved base config (every cell's, "
            f"before its axis values)</summary>\n<pre>{config}</pre>\n</details>")


STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:110em;color:#111}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #bbb;padding:.2em .5em;font-size:.9em}
th{background:#eee}td{text-align:right}td:first-child{text-align:left}
.warning{background:#fff3cd;border:1px solid #e0b000;padding:.5em}
figure{display:inline-block;margin:.4em;vertical-align:top}figcaption{font-size:.8em;overflow-wrap:anywhere}
.grid{width:%dpx}.grid img{width:100%%;image-rendering:pixelated}pre{background:#f6f6f6;padding:.5em;font-size:.8em}
""" % GRID_PIXELS


def write_report(out: Path, spec: SweepSpec, sweeps: list[Plan], blocks: list, table: dict,
                 plots: list[Path] | None, shown: list) -> Path:
    """report.html in `out`: `blocks` (table.md's), what `table` (table.json's) compared and its audit, the
    figures `plots` (None: --no-plots, and no sample grids then either) and a grid of each done cell of `shown`
    (aggregate.CellResult: the plotted rows'), as one file; returns its path."""
    title = f"Sweep {Path(out).resolve().name}"
    parts = [f"<h1>{escape(title)}</h1>", _compared(spec, table["cells"]), "<h2>The table</h2>", html_blocks(blocks)]
    if plots is None:
        parts.append("<p>Plots and sample grids were not made (aggregated with --no-plots).</p>")
    else:
        parts.append("<h2>Plots</h2>")
        parts += [_figure(path.read_bytes(), path.name, path.stem) for path in plots]
        parts.append(f"<h2>Samples</h2>\n<p>The first {GRID_IMAGES} samples of each done cell, as scored (the cells of "
                     f"the rows the plots show: the first {PLOT_ROWS}).</p>\n<div>")
        for cell in (cell for cell in shown if cell.state == "done"):
            grid = sample_grid_png(cell.samples, GRID_IMAGES)
            gone = f'<figure class="grid"><figcaption>{escape(cell.name)}: its shards are gone</figcaption></figure>'
            caption = cell.name + (f" (same samples as {cell.same_as})" if cell.same_as else "")
            parts.append(gone if grid is None else _figure(grid, caption, f"samples of {cell.name}", ' class="grid"'))
        parts.append("</div>")
    parts += [_audit(table["audit"]), _provenance(spec, sweeps)]
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    page = ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
            f"<title>{escape(title)}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n"
            + "\n".join(part for part in parts if part) + "\n</body>\n</html>\n")
    return atomic_write(Path(out) / REPORT_FILE, page)
