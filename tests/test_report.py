"""report.html as a real browser (Debian's chromium-headless-shell) reads and draws it: the table's numbers are
table.json's, every image is an embedded PNG that is drawn, names from the sweep stay text, nothing is fetched."""

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpc_ncsn.sweep.aggregate import aggregate
from hpc_ncsn.sweep.plan import REPORT_FILE, row_label
from hpc_ncsn.sweep.report import GRID_PIXELS
from test_aggregate import make_sweep
from helpers import HANG_GUARD_S

# A value from a user's config that a page which forgot to escape would run (and fetch x from the network).
HOSTILE = '<script>document.title="owned"</script><img src=x onerror=alert(1)>&amp;'
WINDOW = (1600, 4800)  # tall enough for the whole page: the screenshot holds every image
PNG = "data:image/png;base64,"
ARTIFACTS = Path(__file__).parent / "artifacts"  # the browser's screenshot of the page, kept after the run


class Page(HTMLParser):
    """What a dumped DOM holds: every element's tag and attributes, each table's rows of cell texts (by id), the
    paragraphs' texts, and all text."""

    def __init__(self, dom: str):
        super().__init__(convert_charrefs=True)
        self.elements, self.tables, self.paragraphs, self.text = [], {}, [], []
        self._table, self._cell, self._paragraph = None, None, None
        self.feed(dom)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag == "table":
            self._table = self.tables.setdefault(dict(attrs).get("id", ""), [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "p":
            self._paragraph = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "p" and self._paragraph is not None:
            self.paragraphs.append("".join(self._paragraph))
            self._paragraph = None

    def handle_data(self, data):
        self.text.append(data)
        for sink in (self._cell, self._paragraph):
            if sink is not None:
                sink.append(data)

    def body_rows(self, name: str) -> list[list[str]]:
        return self.tables[name][1:]  # below the header


def run_browser(browser: list[str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """The browser on its own profile in tmp_path (dbus and GPU warnings on stderr are expected: only the exit
    code and the output count); a generous hang guard, never a timing."""
    profile = tmp_path / f"browser-profile-{len(list(tmp_path.glob('browser-profile-*')))}"
    result = subprocess.run([*browser, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                            timeout=HANG_GUARD_S, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def dump_dom(browser: list[str], tmp_path: Path, page: Path) -> Page:
    return Page(run_browser(browser, tmp_path, "--dump-dom", page.as_uri()).stdout)


def colours(path: Path) -> dict[tuple[int, int, int], int]:
    """How many pixels of each colour an image has."""
    return {colour: count for count, colour in Image.open(path).convert("RGB").getcolors(1 << 24)}


def screenshot(browser: list[str], tmp_path: Path, page: Path, name: str) -> Path:
    path = tmp_path / name  # kept with the test's tmp_path (pytest keeps the last runs' folders)
    run_browser(browser, tmp_path, f"--screenshot={path}", f"--window-size={WINDOW[0]},{WINDOW[1]}", page.as_uri())
    return path


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """test_aggregate's 2-arm × 3-seed folder (five cells scored, one not), its one further axis value a hostile
    string, aggregated with its plots."""
    folder = make_sweep(tmp_path_factory.mktemp("report") / "sweep", [0, 1, 2], axes={"train.log_group": [HOSTILE]})
    aggregate(folder)
    return folder


@pytest.fixture(scope="module")
def page(sweep, browser, tmp_path_factory) -> Page:
    return dump_dom(browser, tmp_path_factory.mktemp("dom"), sweep / REPORT_FILE)


def number(text: str) -> float:
    return float(text.removeprefix("± "))


def test_the_page_holds_table_json_rows_and_cells(sweep, page):
    table = json.loads((sweep / "table.json").read_text())
    rows = page.body_rows("rows")
    assert len(rows) == len(table["rows"]) == 2
    for shown, row in zip(rows, table["rows"]):
        assert shown[0] == row_label(tuple(row["group"].items()))
        assert shown[1] == f"{row['seeds_done']}/{row['seeds_total']}" and int(shown[2]) == row["n_per_cell"]
        for text, value in zip(shown[3:8], (row["fid"]["mean"], row["fid"]["std"], row["fid"]["ci95"],
                                            row["kid_mean"]["mean"], row["is_mean"]["mean"])):
            assert number(text) == pytest.approx(value, rel=5e-4)
    cells = page.body_rows("cells")
    assert [(c[0], c[1]) for c in cells] == [(c["name"], c["state"]) for c in table["cells"]]
    for shown, cell in zip(cells, table["cells"]):
        if cell["state"] == "done":
            assert number(shown[2]) == pytest.approx(cell["metrics"]["fid"], rel=5e-4)
    [comparison] = table["comparisons"]
    [shown] = page.body_rows("comparisons")
    assert shown[0] == comparison["arm"] and shown[-1] == comparison["verdict"]
    assert [float(x) for x in re.findall(r"[-\d.e+]+", shown[6])] == pytest.approx(comparison["interval"], rel=5e-4)
    missing = [c["name"] for c in table["cells"] if c["state"] != "done"]
    assert not table["complete"] and len(missing) == 1
    [warning] = [text for text in page.paragraphs if text.startswith("Incomplete:")]
    assert f"1 of {len(table['cells'])} cells not done ({missing[0]}: pending)" in warning


def test_every_image_is_an_embedded_png_of_the_sweep(sweep, page):
    """The plots the aggregation wrote, byte for byte, and a grid of each done cell's samples; nothing else."""
    images = [attrs for tag, attrs in page.elements if tag == "img"]
    assert images and all(image["src"].startswith(PNG) for image in images)
    decoded = {image["alt"]: base64.b64decode(image["src"][len(PNG):]) for image in images}
    plots = {path.stem: path.read_bytes() for path in sweep.glob("*.png")}
    assert {"fid", "loss_per_level", "samples", "paired", "fid_vs_nfe"} <= set(plots)
    assert {alt: data for alt, data in decoded.items() if alt in plots} == plots
    done = [c["name"] for c in json.loads((sweep / "table.json").read_text())["cells"] if c["state"] == "done"]
    grids = {alt.removeprefix("samples of "): data for alt, data in decoded.items() if alt not in plots}
    assert sorted(grids) == sorted(done)
    for data in grids.values():  # the fixture's shards: 4 images of 8×8 pixels, all 9, in a 2×2 grid
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.full((16, 16), 9, np.uint8))


def test_names_from_the_sweep_stay_text_and_nothing_is_fetched(page):
    assert not [tag for tag, _ in page.elements if tag == "script"]
    assert HOSTILE in "".join(page.text)  # shown as it was written, in the axes list and the rows
    assert page.body_rows("rows")[0][0] == f"geometric, train.log_group={HOSTILE}"
    sources = [value for _, attrs in page.elements for key, value in attrs.items() if key in ("src", "href")]
    assert all(value.startswith(PNG) for value in sources)
    [policy] = [attrs["content"] for _, attrs in page.elements if attrs.get("http-equiv") == "Content-Security-Policy"]
    assert "default-src 'none'" in policy


def test_the_browser_draws_every_plot_and_sample_grid(sweep, browser, tmp_path):
    """The screenshot holds the plots' own blue (matplotlib's C0) as often as their PNGs do, and the grids' gray 9
    (the fixture's samples) over each done cell's drawn area; the page without its images holds neither."""
    report = sweep / REPORT_FILE
    bare = tmp_path / "no-images.html"
    bare.write_text(re.sub(r"<img [^>]*>", "", report.read_text()))
    drawn, blank = screenshot(browser, tmp_path, report, "report.png"), screenshot(browser, tmp_path, bare, "bare.png")
    ARTIFACTS.mkdir(exist_ok=True)  # kept for a person (or a CI's artifact upload) to look at
    shutil.copyfile(drawn, ARTIFACTS / "report-screenshot.png")
    last_row = Image.open(drawn).convert("RGB").crop((0, WINDOW[1] - 1, WINDOW[0], WINDOW[1]))
    assert last_row.getcolors() == [(WINDOW[0], (255, 255, 255))], "the window is shorter than the page"
    shown, without = colours(drawn), colours(blank)
    blue, gray = (31, 119, 180), (9, 9, 9)
    in_plots = sum(colours(path).get(blue, 0) for path in sweep.glob("*.png"))
    assert in_plots > 0 and without.get(blue, 0) == 0 and shown.get(blue, 0) >= 0.95 * in_plots
    done = sum(c["state"] == "done" for c in json.loads((sweep / "table.json").read_text())["cells"])
    assert without.get(gray, 0) == 0 and shown.get(gray, 0) >= done * GRID_PIXELS ** 2


def test_the_report_command_writes_the_page_again_and_ends_with_its_path(tmp_path, capsys):
    from hpc_ncsn.cli import main

    folder = make_sweep(tmp_path / "sweep", [0, 1])
    assert not (folder / REPORT_FILE).exists()
    assert main(["report", "--sweep", str(folder), "--no-plots"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"report: {folder / REPORT_FILE}"
    assert "<table" in (folder / REPORT_FILE).read_text()
