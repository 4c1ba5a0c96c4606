"""The report's tables as files for a paper: ``<run>/tables/<id>.csv`` (the cells as the report shows them)
and ``<id>.tex`` (a booktabs ``table``, or ``longtable`` past ``LONG`` rows, with the report's title as
caption, written by pandas; its first line names the packages). The symbols the report uses become LaTeX
math, so the file compiles with pdfLaTeX; past ``WIDE`` columns a table is scaled to the text width."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from harness.atomic import write_atomic

from .document import Report, Table

#: LaTeX's special characters, escaped first
SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
#: the report's symbols, then
SYMBOLS = {"±": r"$\pm$", "λ": r"$\lambda$", "ε": r"$\epsilon$", "σ": r"$\sigma$", "≥": r"$\geq$",
           "≤": r"$\leq$", "×": r"$\times$", "÷": r"$\div$", "★": r"$\star$", "⚠": r"\textbf{!}",
           "—": r"\textemdash{}", "–": r"\textendash{}", "…": r"\dots{}", "→": r"$\to$", "·": r"$\cdot$", "−": "-"}
_SPECIAL = re.compile("|".join(map(re.escape, SPECIAL)))


def tex(text: str) -> str:
    """``text`` as LaTeX: specials escaped, the report's symbols as math; any other non-ASCII character left
    as it is (pdfLaTeX with ``\\usepackage[utf8]{inputenc}`` takes Latin letters)."""
    out = _SPECIAL.sub(lambda m: SPECIAL[m.group()], str(text))
    for symbol, latex in SYMBOLS.items():
        out = out.replace(symbol, latex)
    return re.sub(r"-(?=-)", "-{}", out)  # hyphens stay hyphens (LaTeX would set --methods with an en dash)


#: the first line of every .tex written here (what a later render may remove; a file of the user's stays)
MARK = "% lambench table"
#: a table of more columns than this is scaled to the text width (``\\resizebox``; needs graphicx)
WIDE = 8
#: a table longer than this is a ``longtable`` (one float would not fit a page; needs ``\usepackage{longtable}``)
LONG = 30


def write_tables(report: Report, folder: Path) -> dict[str, Path]:
    """Write every table of ``report`` as ``folder/<id>.csv`` and ``.tex`` (and remove the files of tables an
    earlier render wrote that this one has not, and no other file); returns "table:<id>.<ext>" -> path."""
    out = {}
    for section in report.sections:
        for table in section.tables:
            frame = pd.DataFrame(table.rows, columns=table.columns)
            out[f"table:{table.id}.csv"] = write_atomic(folder / f"{table.id}.csv",
                                                       lambda f, d=frame: f.write(d.to_csv(index=False).encode()))
            out[f"table:{table.id}.tex"] = write_atomic(folder / f"{table.id}.tex",
                                                       lambda f, t=table: f.write(_latex(t).encode()))
    for old in folder.glob("*.tex"):  # an earlier render's table (its first line says so), and its CSV
        if f"table:{old.name}" not in out and old.read_text(errors="replace").startswith(MARK):
            old.unlink()
            old.with_suffix(".csv").unlink(missing_ok=True)
    return out


def _latex(table: Table) -> str:
    frame = pd.DataFrame([[tex(c) for c in row] for row in table.rows], columns=[tex(c) for c in table.columns])
    caption = tex(table.title + (f". {table.caption}" if table.caption else ""))
    long = len(table.rows) > LONG
    wide = not long and len(table.columns) > WIDE
    body = frame.to_latex(index=False, escape=False, caption=caption, label=f"tab:lambench-{table.id}",
                          column_format="l" * len(table.columns), longtable=long)
    if wide:  # scaled to the text width (a longtable cannot be: it breaks across pages instead)
        body = body.replace("\\begin{tabular}", "\\resizebox{\\linewidth}{!}{%\n\\begin{tabular}")
        body = body.replace("\\end{tabular}", "\\end{tabular}}")
    return (f"{MARK} {table.id}; needs \\usepackage{{booktabs}}" + (" and \\usepackage{longtable}" if long else "")
            + (" and \\usepackage{graphicx}" if wide else "") + "\n" + body)
