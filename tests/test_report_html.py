"""reports/index.html: the Markdown-table converter, grouping by task, and the page rendered in a real headless
Chromium (every figure decoded, a non-blank screenshot, nothing loaded from elsewhere)."""

from __future__ import annotations

import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml

from flexheads.config import Params, params_hash
from flexheads.report.html import markdown_table_to_html, write_index
from flexheads.report.tables import to_markdown

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = [  # headless, no network: no background services, and every host name unresolvable
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND", "--hide-scrollbars",
]
TABLE_MD = """pose3d: errors in mm <over> the 15 actions & frames.

| model | attention | MPJPE (mm) | P-MPJPE (mm) | MLflow run |
|---|---|---|---|---|
| transformer | standard | **41.2** | 33.0 | id-1 |
| transformer | <flexible> | 45.0 | **30.5** | a & b |
"""


def params_with(tasks: list[str]) -> Params:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["experiment"]["tasks"] = tasks
    return Params.model_validate(raw)


def save_png(path: Path, kind: str) -> None:
    """A small real matplotlib figure: a line plot or an image."""
    figure, ax = plt.subplots(figsize=(3, 2))
    if kind == "image":
        ax.imshow(np.random.default_rng(0).random((16, 16)), cmap="viridis")
    else:
        x = np.linspace(0, 4, 50)
        ax.plot(x, np.sin(x), label="standard")
        ax.plot(x, np.cos(x), label="flexible")
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=72)
    plt.close(figure)


def make_report(root: Path) -> list[str]:
    """Tables and figures as the report writes them; returns the figure file names."""
    tables = root / "tables"
    tables.mkdir(parents=True)
    (tables / "pose3d.md").write_text(TABLE_MD)
    (tables / "pose3d_per_action.md").write_text("per action\n\n| action | MPJPE |\n|---|---|\n| Walk | **40.0** |\n")
    (tables / "cxr.md").write_text("cxr: AUROC\n\n| model | mean AUROC |\n|---|---|\n| vit | **0.8300** |\n")
    (tables / "summary.md").write_text("all tasks\n\n| task | best |\n|---|---|\n| pose3d | flexible |\n")
    (tables / "pose3d.tex").write_text("not shown")  # only Markdown tables are rendered
    figures = {"pose3d_error_by_action.png": "plot", "cxr_gradcam.png": "image", "noam_schedule.png": "plot",
               "positional_encoding.png": "image"}
    for name, kind in figures.items():
        save_png(root / "figures" / name, kind)
    return sorted(figures)


class Tags(HTMLParser):
    """Every start tag with its attributes, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def parse(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = Tags()
    parser.feed(page)
    return parser.tags


def test_markdown_table_to_html_marks_best_cells_and_escapes():
    table = markdown_table_to_html(TABLE_MD)
    assert "<caption>pose3d: errors in mm &lt;over&gt; the 15 actions &amp; frames.</caption>" in table
    assert '<th class="num">MPJPE (mm)</th>' in table  # numeric columns are right-aligned
    assert '<td class="num"><strong>41.2</strong></td>' in table
    assert '<td class="num"><strong>30.5</strong></td>' in table
    assert "<td>&lt;flexible&gt;</td>" in table and "<td>a &amp; b</td>" in table
    assert "<flexible>" not in table and "**" not in table
    assert table.count("<tr>") == 3 and table.count("<strong>") == 2


def test_markdown_table_to_html_reads_what_write_tables_writes():
    frame = pd.DataFrame({"model": ["transformer", "mlp"], "MPJPE (mm)": [(41.25, 1.5), (52.0, 2.0)],
                          "AUROC": [None, 0.8]})
    table = markdown_table_to_html(to_markdown(frame, {(0, 1), (1, 2)}, "caption_with <b> ±"))
    assert "<caption>caption_with &lt;b&gt; ±</caption>" in table
    assert '<td class="num"><strong>41.2 ± 1.5</strong></td>' in table  # mean ± std over seeds
    assert '<td class="num">—</td>' in table and '<td class="num"><strong>0.8000</strong></td>' in table


def test_markdown_table_to_html_alignment_escaped_pipes_and_no_caption():
    table = markdown_table_to_html("| a | b | c |\n|:---|:---:|---:|\n| x \\| y | **z** | 1 |\n")
    assert "<caption>" not in table
    assert '<td class="left">x | y</td><td class="center"><strong>z</strong></td><td class="num">1</td>' in table


@pytest.mark.parametrize("text, message", [
    ("just a caption\n", "found none"),
    ("caption\n\n| a | b |\n| x | y |\n", "rule row"),
    ("caption\n\n| a | b |\n|---|---|\n| x |\n", "1 cells, the header has 2"),
    ("caption\n\n| a | b |\n|---|---|\n| x | y |\ntrailing text\n", "expected a table row"),
])
def test_markdown_table_to_html_rejects_other_shapes(text, message):
    with pytest.raises(ValueError, match=message):
        markdown_table_to_html(text)


def test_index_groups_by_task_in_params_order(tmp_path, monkeypatch):
    figures = make_report(tmp_path / "reports")
    params = params_with(["pose3d", "pose2d", "cxr"])
    monkeypatch.chdir(tmp_path)  # not a git checkout
    page = write_index(params, Path("params.yaml"), tmp_path / "reports").read_text()

    order = [page.index(f'<section id="{anchor}">') for anchor in ("pose3d", "pose2d", "cxr", "across-tasks")]
    assert order == sorted(order)
    pose3d, pose2d, cxr, across = (page[a:b] for a, b in zip(order, [*order[1:], len(page)]))
    assert "3D human pose lifting" in pose3d and "2D human pose estimation" in pose2d
    assert "Chest X-ray classification" in cxr
    assert pose3d.index("tables/pose3d.md") < pose3d.index("tables/pose3d_per_action.md")  # main table first
    assert "figures/pose3d_error_by_action.png" in pose3d
    assert "No tables or figures" in pose2d
    assert "tables/cxr.md" in cxr and "figures/cxr_gradcam.png" in cxr
    assert "tables/summary.md" in across and "figures/noam_schedule.png" in across
    assert "figures/positional_encoding.png" in across and "pose3d.tex" not in page

    images = [attrs for tag, attrs in parse(page) if tag == "img"]
    assert len(images) == len(figures)
    assert all(a["src"].startswith("data:image/png;base64,") and a.get("alt") for a in images)
    assert params_hash(params.model_dump(mode="json")) in page
    assert "<code>unknown</code>" in page  # the git commit outside a checkout
    assert page.isascii()


def run_chromium(chromium: str, args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_index_renders_in_headless_chromium(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium): the page is not rendered in a browser")
    figures = make_report(tmp_path / "reports")
    index = write_index(params_with(["pose3d", "pose2d", "cxr"]), Path("params.yaml"), tmp_path / "reports")
    url = index.resolve().as_uri()

    start = time.monotonic()
    dom = run_chromium(chromium, ["--virtual-time-budget=5000", "--dump-dom", url], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    tags = parse(dom.stdout)
    assert any(tag == "section" and attrs.get("id") == "across-tasks" for tag, attrs in tags), dom.stdout[:500]
    images = [attrs for tag, attrs in tags if tag == "img"]
    assert len(images) == len(figures)
    for attrs in images:  # decoded by the browser: the inline script recorded a natural size
        width, height = (int(v) for v in (attrs.get("data-loaded") or "0x0").split("x"))
        assert width > 0 and height > 0, f"image not decoded: {attrs.get('alt')}"
    for tag, attrs in tags:  # nothing fetched from elsewhere: data: images and in-page anchors only
        for name in ("src", "href"):
            value = (attrs.get(name) or "").strip()
            assert not value or value.startswith(("data:", "#")), f"<{tag} {name}={value[:80]}>"
    assert "http://" not in index.read_text() and "https://" not in index.read_text()

    shot = tmp_path / "page.png"
    result = run_chromium(chromium, [f"--screenshot={shot}", "--window-size=1280,2000", url], tmp_path / "profile-shot")
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 0
    pixels = plt.imread(shot)
    assert pixels.shape[:2] == (2000, 1280)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 16, "the screenshot is blank"
    print(f"chromium dump-dom + screenshot: {time.monotonic() - start:.1f} s; screenshot {shot}")
