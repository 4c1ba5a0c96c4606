"""Reports: ``results/<run>/report.html`` and ``report.pdf`` rendered from the results store alone.

    from report import render
    render("results/smoke")                       # {"html": .../report.html, "pdf": .../report.pdf, ...}
    python -m report results/smoke --clean-floor 0.8

Figures are also saved, as PNG and PDF, under ``results/<run>/figures/`` (and sized for a paper under
``figures/paper/``), and the tables as CSV and LaTeX under ``results/<run>/tables/``. Nothing is retrained: everything
comes from ``results.csv`` and ``run.json``. Whatever a run lacks (AutoAttack, complexity, a second method or
λ) is rendered anyway and named in the report.
"""
from __future__ import annotations

from pathlib import Path

from harness.errors import LambenchError

FORMATS = ("html", "pdf")


class Rendered(dict):
    """The paths ``render`` wrote (a dict), plus what it made: ``figures`` (names, in report order),
    ``pdf_pages`` (pages written to report.pdf, None without PDF) and ``notes`` (what the run lacks)."""
    figures: list[str]
    pdf_pages: int | None
    notes: list[str]


def render(run_dir, clean_floor: float | None = None, formats=FORMATS) -> dict[str, Path]:
    """Render the report of the run in ``run_dir``; return the paths written: "html", "pdf", and each
    figure's files as "figure:<name>.png" / "figure:<name>.pdf" ("figure:paper/<name>.png": its paper-sized
    version) and each table's as "table:<id>.csv" / "table:<id>.tex" (a ``Rendered`` dict). ``clean_floor`` (a
    fraction in [0, 1]) picks the second operating point of the complexity figure; None: each setting's best
    clean accuracy minus 5 points. ``formats`` picks the outputs: "html" writes report.html and the figures as PNG,
    "pdf" writes report.pdf and the figures as PDF (vector, for papers)."""
    from .load import load_run

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise LambenchError(f"unknown report format {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    if clean_floor is not None and not 0 <= clean_floor <= 1:
        raise LambenchError(f"--clean-floor {clean_floor} is outside [0, 1]; give a fraction, e.g. 0.8")
    run = load_run(run_dir)  # before the plotting imports: a missing run fails fast
    from . import style
    from .content import build
    from .figures import save

    style.setup()
    report = build(run, clean_floor)
    out = Rendered()
    out.figures, out.pdf_pages, out.notes = [f.name for f in report.figures], None, report.notes
    exts = ("png",) * ("html" in formats) + ("pdf",) * ("pdf" in formats)
    for fig in report.figures:
        fig.files = save(fig.draw, fig.size, run.dir / "figures" / fig.name, exts)
        out |= {f"figure:{fig.name}.{ext}": p for ext, p in fig.files.items()}
        for small in fig.paper:
            with style.paper():
                small.files = save(small.draw, small.size, run.dir / "figures" / "paper" / small.name, exts, dpi=300)
            out |= {f"figure:paper/{small.name}.{ext}": p for ext, p in small.files.items()}
    from .latex import write_tables
    out |= write_tables(report, run.dir / "tables")
    if "html" in formats:
        from .html import render_html
        out["html"] = render_html(report, run.dir, run.dir / "report.html")
    if "pdf" in formats:
        from .pdf import render_pdf
        out.pdf_pages = render_pdf(report, run.dir / "report.pdf")
        out["pdf"] = run.dir / "report.pdf"
    return out
