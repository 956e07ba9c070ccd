"""``reports/index.html``: every report table and figure on one self-contained page, grouped by task.

The page references nothing outside itself (inline CSS and script, figures embedded as ``data:image/png``
URIs, a Content-Security-Policy that forbids any other source), so it opens offline, as a CI artifact or as
an MLflow artifact alike.  Tables are converted from the Markdown files ``write_tables`` writes (a caption
paragraph, a blank line, a GitHub pipe table with the best cells in ``**...**``); the page is built only from
files under ``reports/``, never from the runs directly, so it shows exactly what the report wrote.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

from flexheads.config import Params
from flexheads.io import write_text
from flexheads.tasks import get_task
from flexheads.tracking import git_commit

CROSS_TASK_ID = "across-tasks"
CROSS_TASK_TITLE = "Across tasks and thesis figures"

_BOLD = re.compile(r"\*\*(.+?)\*\*")
_RULE_CELL = re.compile(r":?-{3,}:?")
_VALUE = r"[-+−]?\d[\d,]*(\.\d+)?([eE][-+]?\d+)?%?"
_NUMBER = re.compile(rf"{_VALUE}( ± {_VALUE})?|—")  # a value, mean ± std, or — (undefined)
_PIPE = re.compile(r"(?<!\\)\|")

# After load, record each image's decoded size: a headless browser's dumped DOM then shows every figure decoded.
_LOADED_SCRIPT = """window.addEventListener("load", function () {
  for (const img of document.images) img.dataset.loaded = img.naturalWidth + "x" + img.naturalHeight;
});"""

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d2329;
       background: #fff; max-width: 1200px; margin: 0 auto; padding: 1.5rem 2rem 4rem; }
h1 { font-size: 1.7rem; margin-bottom: 0.3rem; }
h2 { font-size: 1.35rem; border-bottom: 2px solid #d7dde3; padding-bottom: 0.2rem; margin-top: 2.5rem; }
h2 small { font-weight: normal; color: #5b6773; font-size: 0.8em; }
h3 { font-size: 1.05rem; color: #38424c; margin-top: 1.6rem; }
code, .file { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.88em; }
.file { color: #5b6773; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 0.15rem 1rem; margin: 0.6rem 0 1rem; }
dl.meta dt { font-weight: 600; color: #38424c; }
dl.meta dd { margin: 0; }
nav { background: #f4f6f8; border: 1px solid #d7dde3; border-radius: 6px; padding: 0.6rem 1.2rem; }
nav h2 { font-size: 1rem; border: 0; margin: 0.2rem 0; }
nav ol { margin: 0.2rem 0; }
a { color: #0b5cad; }
.table-wrap { overflow-x: auto; margin: 1rem 0 1.5rem; }
table { border-collapse: collapse; font-size: 0.86rem; }
caption { caption-side: top; text-align: left; color: #38424c; padding-bottom: 0.4rem; max-width: 80ch; }
th, td { border-bottom: 1px solid #e1e6ea; padding: 0.25rem 0.6rem; text-align: left; white-space: nowrap; }
th { background: #f4f6f8; border-bottom: 2px solid #c5ced6; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.center, th.center { text-align: center; }
td.left, th.left { text-align: left; }
td strong { color: #0a6b2f; }
figure { margin: 1.2rem 0 2rem; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid #e1e6ea; }
figcaption { color: #38424c; margin-top: 0.4rem; }
.empty { color: #5b6773; font-style: italic; }
"""


@dataclass
class Section:
    """One part of the page: its anchor, title, and the table and figure files it shows."""

    anchor: str
    title: str
    task: str | None = None
    tables: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


def write_index(params: Params, params_path: Path, out_dir: Path) -> Path:
    """Write ``<out_dir>/index.html`` (atomically) from ``<out_dir>/tables/*.md`` and ``<out_dir>/figures/*.png``.

    Args:
        params: the validated params; its task order orders the sections and its hash goes in the header.
        params_path: the params file, named in the header.
        out_dir: the report folder (``reports``).

    Returns:
        The path of the written page.
    """
    sections = group_files(params.experiment.tasks, out_dir / "tables", out_dir / "figures")
    meta = [
        ("params", (f"<code>{_esc(str(params_path))}</code>, hash <code>"
                    f"{_esc(params.hash())}</code>")),
        ("git commit", f"<code>{_esc(git_commit())}</code>"),
    ]  # no clock time: the same inputs give the same page, byte for byte
    page = "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        # The page may load nothing from elsewhere: only its own inline style and script and data: images.
        ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
         "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"),
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>flexheads report</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<header>",
        "<h1>flexheads report: attention head configurations × training regimes</h1>",
        '<dl class="meta">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta) + "</dl>",
        _contents(sections),
        "</header>",
        "<main>",
        *(_section_html(s) for s in sections),
        "</main>",
        f"<script>{_LOADED_SCRIPT}</script>",
        "</body>",
        "</html>",
        "",
    ])
    path = out_dir / "index.html"
    # Non-ASCII as character references: the file's bytes then do not depend on the locale's encoding.
    write_text(path, page.encode("ascii", "xmlcharrefreplace").decode("ascii"))
    return path


def group_files(tasks: tuple[str, ...] | list[str], tables_dir: Path, figures_dir: Path) -> list[Section]:
    """One section per task in ``tasks`` order (``<task>.md``, ``<task>_*.md``, ``<task>_*.png``; titled with the
    task module's ``TITLE``), then one for every other table and figure (cross-task tables, task-independent thesis
    figures); no file is left out."""
    tables = report_files(tables_dir, "*.md")
    figures = report_files(figures_dir, "*.png")
    sections = []
    for task in tasks:
        mine_t = [t for t in tables if t.stem == task or t.stem.startswith(f"{task}_")]
        mine_f = [f for f in figures if f.stem.startswith(f"{task}_")]
        mine_t.sort(key=lambda t: (t.stem != task, t.name))  # the main comparison table first
        sections.append(Section(task, get_task(task).TITLE, task, mine_t, mine_f))
        tables = [t for t in tables if t not in mine_t]
        figures = [f for f in figures if f not in mine_f]
    sections.append(Section(CROSS_TASK_ID, CROSS_TASK_TITLE, None, tables, figures))
    return sections


def markdown_table_to_html(markdown: str) -> str:
    """Convert the report's Markdown table shape to an HTML ``<table>``.

    The shape: an optional caption paragraph, a blank line, then a GitHub pipe table (header row, a ``---`` rule
    row, body rows).  The caption becomes ``<caption>``, ``**...**`` becomes ``<strong>``, text is HTML-escaped,
    numeric columns are right-aligned unless the rule row (``:---``, ``---:``, ``:---:``) says otherwise.

    Raises:
        ValueError: the text is not of that shape (no table, a bad rule row, a row with the wrong cell count).
    """
    lines = markdown.strip("\n").splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("|")), None)
    if start is None or len(lines) < start + 2:
        raise ValueError("expected a pipe table (a header row and a --- row), found none")
    caption = " ".join(line.strip() for line in lines[:start] if line.strip())
    rows = []
    for number, line in enumerate(lines[start:], start=start + 1):
        if not (line.strip().startswith("|") and line.strip().endswith("|")):
            raise ValueError(f"line {number}: expected a table row '| ... |', got {line!r}")
        rows.append(_cells(line))
    header, rule, body = rows[0], rows[1], rows[2:]
    if len(rule) != len(header) or not all(_RULE_CELL.fullmatch(c) for c in rule):
        raise ValueError(f"line {start + 2}: expected the rule row '|---|---|' under the header, "
                         f"got {lines[start + 1]!r}")
    for number, row in enumerate(body, start=start + 3):
        if len(row) != len(header):
            raise ValueError(f"line {number}: {len(row)} cells, the header has {len(header)}")
    aligns = [_alignment(c) or ("num" if body and all(_NUMBER.fullmatch(_BOLD.sub(r"\1", r[j])) for r in body)
                                else None) for j, c in enumerate(rule)]

    def cell(tag: str, text: str, j: int) -> str:
        opening = f'<{tag} class="{aligns[j]}">' if aligns[j] else f"<{tag}>"
        return f"{opening}{_inline(text)}</{tag}>"

    out = ["<table>"]
    if caption:
        out.append(f"<caption>{_inline(caption)}</caption>")
    out.append("<thead><tr>" + "".join(cell("th", c, j) for j, c in enumerate(header)) + "</tr></thead>")
    out.append("<tbody>")
    out += ["<tr>" + "".join(cell("td", c, j) for j, c in enumerate(row)) + "</tr>" for row in body]
    out.append("</tbody>")
    out.append("</table>")
    return "\n".join(out)


def report_files(folder: Path, pattern: str = "*") -> list[Path]:
    """Sorted files matching ``pattern``, without hidden ones (an interrupted atomic write's temporary file)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(pattern) if p.is_file() and not p.name.startswith("."))


def _contents(sections: list[Section]) -> str:
    items = [f'<li><a href="#{s.anchor}">{_esc(s.title)}</a> '
             f'<span class="file">({_count(len(s.tables), "table")}, {_count(len(s.figures), "figure")})</span></li>'
             for s in sections]
    return "<nav><h2>Contents</h2><ol>" + "".join(items) + "</ol></nav>"


def _section_html(section: Section) -> str:
    subtitle = f" <small>{_esc(section.task)}</small>" if section.task else ""
    parts = [f'<section id="{section.anchor}">', f"<h2>{_esc(section.title)}{subtitle}</h2>"]
    if not section.tables and not section.figures:
        parts.append('<p class="empty">No tables or figures for this section.</p>')
    if section.tables:
        parts.append("<h3>Tables</h3>")
        for path in section.tables:
            table = markdown_table_to_html(path.read_text())
            parts.append(f'<div class="table-wrap">{table}\n<div class="file">tables/{_esc(path.name)}</div></div>')
    if section.figures:
        parts.append("<h3>Figures</h3>")
        parts += [_figure_html(path, section.task) for path in section.figures]
    parts.append("</section>")
    return "\n".join(parts)


def _figure_html(path: Path, task: str | None) -> str:
    """The PNG embedded as a data URI, captioned with a title made from its file name."""
    name = path.stem.removeprefix(f"{task}_") if task else path.stem
    title = name.replace("_", " ").strip().capitalize() or path.stem
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = f"{task + ': ' if task else ''}{title} (figure {path.name})"
    return (f'<figure id="figure-{_esc(path.stem)}"><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">'
            f'<figcaption>{_esc(title)} <span class="file">figures/{_esc(path.name)}</span></figcaption></figure>')


def _cells(line: str) -> list[str]:
    inner = line.strip()[1:-1]
    return [c.strip().replace("\\|", "|") for c in _PIPE.split(inner)]


def _alignment(rule_cell: str) -> str | None:
    left, right = rule_cell.startswith(":"), rule_cell.endswith(":")
    return "center" if left and right else "num" if right else "left" if left else None


def _inline(text: str) -> str:
    return _BOLD.sub(r"<strong>\1</strong>", _esc(text))


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
