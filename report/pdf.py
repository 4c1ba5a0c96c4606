"""The PDF report: the HTML report's content on A4 landscape pages, made with matplotlib's PdfPages.

A title page (facts, what is missing, contents), then per section one page per figure (drawn afresh, as
vectors, with caption, flagged checks and notes beneath) and its tables, split over as many pages as they need.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure as MplFigure

from harness.atomic import write_atomic

from . import style
from .document import Report, Section, Table
from .figures import new_figure

PAGE = (11.69, 8.27)  # A4 landscape, inches
MARGIN = 0.45         # inches
WRAP = 150            # characters per line of body text at BODY points
BODY = 8.5
TABLE_FONT = 7.5
CELL_CAP = 70         # characters a table cell may take before it wraps
CHAR_W = 0.62         # average character width of the table font, in ems (bold headers included)


def render_pdf(report: Report, path: Path) -> int:
    """Write ``report`` to ``path`` atomically; return the number of pages written."""
    pages = []

    def write(f):
        with PdfPages(f, metadata={"Title": report.title, "Creator": "lambench report"}) as pdf:
            _save(pdf, _title_page(report))
            for section in report.sections:
                for page in _section_pages(section):
                    _save(pdf, page)
            pages.append(pdf.get_pagecount())
    write_atomic(Path(path), write)
    return pages[0]


def _save(pdf: PdfPages, page: MplFigure) -> None:
    pdf.savefig(page)
    style.close(page)


def _lines(text: str, width: int = WRAP) -> list[str]:
    return textwrap.wrap(style.mpl_text(text), width) or [""]


class _Writer:
    """Writes lines of text down a page from the top, keeping track of the height used."""

    def __init__(self, page: MplFigure, top: float = MARGIN):
        self.page, self.y = page, top

    def write(self, text: str, size: float = BODY, weight="normal", color="0.1", indent=0.0, gap=0.0,
              width: int = WRAP) -> None:
        for line in _lines(text, width):
            self.page.text((MARGIN + indent) / PAGE[0], 1 - self.y / PAGE[1], line, fontsize=size,
                           fontweight=weight, color=color, va="top", ha="left")
            self.y += size * 1.45 / 72
        self.y += gap


def _new_page() -> MplFigure:
    return new_figure(PAGE)


def _title_page(report: Report) -> MplFigure:
    page = _new_page()
    w = _Writer(page, MARGIN + 0.1)
    w.write(report.title, 20, "bold", gap=0.05)
    w.write("Once-for-all adversarial training: which method gives the best clean/robust trade-off, "
            "and at what cost.", 11, color="0.35", gap=0.2)
    for key, value in report.facts:
        w.write(f"{key}: {value}", 10, gap=0.02)
    if report.notes:
        w.y += 0.15
        w.write("Missing from this run", 12, "bold", gap=0.05)
        for note in report.notes:
            w.write(f"• {note}", 9.5, width=130, gap=0.03)
    w.y += 0.15
    w.write("Contents", 12, "bold", gap=0.05)
    for i, s in enumerate(report.sections, 1):
        parts = [f.title for f in s.figures] + [t.title for t in s.tables]
        w.write(f"{i}. {s.title}" + (f"  ({'; '.join(parts)})" if parts else ""), 9.5, width=130)
    return page


def _section_pages(section: Section) -> list[MplFigure]:
    pages = []
    for i, fig in enumerate(section.figures):
        foot = [fig.caption] + [f"⚠ {w}" for w in fig.warnings] + ([f"Note: {n}" for n in section.notes] if i == 0 else [])
        pages.append(_figure_page(section, fig, foot, intro=i == 0))
    cursor = None  # the last table page and its writer, while there is room left on it
    for table in section.tables:
        more, cursor = _table_pages(section, table, [] if pages else section.notes, cursor, intro=not pages)
        pages += more
    if not pages:  # a section with neither figures nor tables still says what it lacks
        page = _new_page()
        w = _header(page, section, True)
        for n in section.notes:
            w.write(f"Note: {n}", 9.5, gap=0.05)
        pages.append(page)
    return pages


def _header(page: MplFigure, section: Section, intro: bool, subtitle: str = "") -> _Writer:
    w = _Writer(page)
    w.write(section.title + ("" if intro else " (continued)"), 14, "bold", gap=0.03)
    if intro and section.intro:
        w.write(section.intro, 9.5, color="0.3", gap=0.03)
    if subtitle:
        w.write(subtitle, 11, "bold", gap=0.02)
    return w


def _figure_page(section: Section, fig, foot: list[str], intro: bool) -> MplFigure:
    page = _new_page()
    w = _header(page, section, intro, fig.title)
    foot_h = sum(len(_lines(t)) for t in foot) * BODY * 1.45 / 72 + 0.1 * len(foot) + MARGIN
    top = w.y + 0.05
    room = PAGE[1] - top - foot_h
    # the figure keeps its aspect ratio inside the space left between header and footer
    width = min(PAGE[0] - 2 * MARGIN, room * fig.size[0] / fig.size[1])
    height = width * fig.size[1] / fig.size[0]
    side = (PAGE[0] - width) / 2
    page.set_layout_engine("constrained")
    row = page.subfigures(3, 1, height_ratios=[top, height, PAGE[1] - top - height])[1]
    fig.draw(row.subfigures(1, 3, width_ratios=[side, width, side])[1])
    w.y = top + height + 0.12
    for text in foot:
        w.write(text, BODY, color="#7a4d00" if text.startswith("⚠") else "0.2", gap=0.1)
    return page


def _table_pages(section: Section, table: Table, notes: list[str], cursor, intro: bool):
    """Lay ``table`` out below the last table (``cursor``: (page, writer) or None) if it fits there, else on
    new pages, split by rows; the caption and ``notes`` follow its last row. Returns (new pages, cursor)."""
    widths = [max([len(c) for c in _wrap_cell(h, 18)] + [min(len(r[i]), CELL_CAP) for r in table.rows] + [3])
              for i, h in enumerate(table.columns)]
    font = TABLE_FONT
    while _chars_fit(font) < sum(widths) + 2 * len(widths) and font > 6:
        font -= 0.5
    while _chars_fit(font) < sum(widths) + 2 * len(widths) and max(widths) > 8:
        widest = widths.index(max(widths))  # still too wide at the smallest font: wrap the widest column
        widths[widest] = max(8, int(widths[widest] * 0.85))
    line_h = font * 1.4 / 72
    cells = [[_wrap_cell(c, w) for c, w in zip(row, widths)] for row in table.rows]
    header = [_wrap_cell(h, max(w, 6)) for h, w in zip(table.columns, widths)]
    heights = [(max(map(len, row)) + 0.5) * line_h for row in [header] + cells]
    foot = ([table.caption] if table.caption else []) + [f"Note: {n}" for n in notes]
    foot_h = sum(len(_lines(t)) for t in foot) * BODY * 1.45 / 72 + 0.06 * len(foot)
    title_h = 11 * 1.45 / 72 + 0.2
    pages, start = [], 0
    while True:
        if cursor is not None and start == 0:  # below the previous table, if the whole table fits there
            page, w = cursor
            if w.y + title_h + sum(heights) + 0.2 + foot_h > PAGE[1] - MARGIN:
                cursor = None
                continue
            w.y += 0.2
            w.write(table.title, 11, "bold", gap=0.02)
        else:
            page = _new_page()
            pages.append(page)
            w = _header(page, section, intro and len(pages) == 1, table.title + (" (continued)" if start else ""))
        room = PAGE[1] - MARGIN - w.y - 0.05 - heights[0]
        end, used = start, 0.0
        while end < len(cells) and used + heights[end + 1] <= room - (foot_h if end + 1 == len(cells) else 0):
            used += heights[end + 1]
            end += 1
        if end == start and end < len(cells):  # a row taller than a page: it goes on its own
            used, end = heights[end + 1], end + 1
        _draw_table(page, w.y + 0.05, header, cells[start:end], widths, font, line_h,
                    table.marked[start:end] if table.marked else [])
        w.y += 0.05 + heights[0] + used + 0.12
        start = end
        if start >= len(cells):
            for text in foot:
                w.write(text, BODY, color="0.25", gap=0.06)
            return pages, (page, w)


def _chars_fit(font: float) -> float:
    """How many characters of table text at ``font`` points fit across the page."""
    return (PAGE[0] - 2 * MARGIN) / (font * CHAR_W / 72)


def _wrap_cell(text: str, width: int) -> list[str]:
    return textwrap.wrap(str(text), max(width, 3), break_long_words=True) or [""]


def _draw_table(page, top, header, rows, widths, font, line_h, marked) -> None:
    scale = font * CHAR_W / 72  # inches per character
    xs = [MARGIN]
    for wd in widths:
        xs.append(xs[-1] + (wd + 2) * scale)
    y = top
    for i, row in enumerate([header] + rows):
        h = (max(map(len, row)) + 0.5) * line_h
        shade = "#e8ebf0" if i == 0 else ("#fff0c2" if marked and marked[i - 1] else ("#f7f8fa" if i % 2 == 0 else None))
        if shade:
            page.add_artist(_rect(page, xs[0], y, xs[-1] - xs[0], h, shade))
        for x, lines in zip(xs, row):
            for k, line in enumerate(lines):
                page.text((x + scale) / PAGE[0], 1 - (y + (k + 0.25) * line_h) / PAGE[1], style.mpl_text(line),
                          fontsize=font, va="top", ha="left", fontweight="bold" if i == 0 else "normal")
        y += h
        if i == 0:
            page.add_artist(_hline(page, xs[0], xs[-1], y))
    page.add_artist(_hline(page, xs[0], xs[-1], y))


def _rect(page, x, y, w, h, color):
    from matplotlib.patches import Rectangle
    return Rectangle((x / PAGE[0], 1 - (y + h) / PAGE[1]), w / PAGE[0], h / PAGE[1], transform=page.transFigure,
                     facecolor=color, edgecolor="none", zorder=0)


def _hline(page, x0, x1, y):
    from matplotlib.lines import Line2D
    return Line2D([x0 / PAGE[0], x1 / PAGE[0]], [1 - y / PAGE[1]] * 2, transform=page.transFigure, color="0.45",
                  linewidth=0.7)
