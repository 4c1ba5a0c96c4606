"""The report's tables as files for a paper: ``<run>/tables/<id>.csv`` (the cells as the report shows them)
and ``<id>.tex`` (booktabs, written by pandas, in a ``table`` float with the report's title as caption;
its first line names the packages). The symbols the report uses become LaTeX math, so the file compiles
with pdfLaTeX; a table wider than the line is scaled down to it, long text wraps, numbers are
right-aligned, and a long table is split into floats of at most ``LONG`` lines."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from harness.atomic import write_atomic

from .document import Report, Table

#: LaTeX's special characters, escaped first
SPECIAL = {"\\": r"\textbackslash{}", "<": r"\textless{}", ">": r"\textgreater{}", "&": r"\&", "%": r"\%",
           "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
           "^": r"\textasciicircum{}"}
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
#: a table of more columns than this is a ``table*`` (both columns of a two-column paper), set closer
WIDE = 8
#: a table of more lines than this is split into floats of at most this many (one float would not fit a
#: page; a ``longtable`` could not be scaled to the text width); a wrapping cell counts a line per ``LINE``
#: characters of a column taking 0.6 of the line (a two-column paper's: about 30)
LONG = 30
LINE = 30
#: a column whose longest cell has more characters than this wraps (a ``p`` column)
TEXT = 40
#: natural width, or the text width where wider: a table is scaled down to fit, never up
FIT = r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%"
#: a cell that is a number (right-aligned): digits first, or a placeholder dash
_NUMBER = re.compile(r"[-+−×]?\.?\d")
_PLACEHOLDER = {"", "—", "–", "-"}


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


def _align(column: list[str]) -> str:
    """A short column's format: ``r`` when every cell is a number (or a dash), else ``l``."""
    numbers = [c for c in column if c.strip() not in _PLACEHOLDER]
    return "r" if numbers and all(_NUMBER.match(c.strip()) for c in numbers) else "l"


def _rows(lo: int, hi: int) -> str:
    return f"rows {lo + 1}--{hi}" if hi > lo + 1 else f"row {hi}"


def _breakable(text: str) -> str:
    """A wrapping cell's LaTeX, a line break allowed after each comma, slash and underscore (a command line's
    lists, a path: LaTeX breaks only at spaces and hyphens, and a long word would run out of its column)."""
    return re.sub(r"(,|/|\\_)(?=\S)", lambda m: m.group(1) + "\\allowbreak{}", text)


def _latex(table: Table) -> str:
    cells = [[str(c) for c in row] for row in table.rows]
    by_column = [[row[i] for row in cells] for i in range(len(table.columns))]
    wrap = [max(map(len, column), default=0) > TEXT for column in by_column]  # a p column, ragged right
    share = 0.6 / max(1, sum(wrap))  # the wrapping columns' share of the line
    column_format = "".join(f">{{\\raggedright\\arraybackslash}}p{{{share:.2f}\\linewidth}}" if w else _align(column)
                            for w, column in zip(wrap, by_column))
    columns = [tex(c) for c in table.columns]
    caption = tex(table.title + (f". {table.caption}" if table.caption else ""))
    label = f"tab:lambench-{table.id}"
    wide = len(table.columns) > WIDE
    env = "table*" if wide else "table"
    per_line = LINE * share / 0.6  # characters a line of a wrapping column holds, about
    bounds, used = [0], 0
    for k, row in enumerate(cells):  # a new float where this row would take the lines past LONG
        lines = max([1] + [math.ceil(len(c) / per_line) for c, w in zip(row, wrap) if w])
        if used + lines > LONG and k > bounds[-1]:
            bounds.append(k)
            used = 0
        used += lines
    bounds.append(len(cells))
    floats = []
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        frame = pd.DataFrame([[_breakable(tex(c)) if w else tex(c) for c, w in zip(row, wrap)]
                              for row in cells[lo:hi]], columns=columns)
        body = frame.to_latex(index=False, escape=False, column_format=column_format).rstrip("\n")
        head = (f"\\caption{{{caption}}}\\label{{{label}}}" if i == 0 else
                f"\\textit{{Table~\\ref{{{label}}}, continued: {_rows(lo, hi)} of {len(cells)}.}}\\par\\smallskip")
        floats.append(f"\\begin{{{env}}}[tbp]\n\\centering\n" + ("\\setlength{\\tabcolsep}{4pt}\n" if wide else "")
                      + f"{head}\n{FIT}\n{body}}}\n\\end{{{env}}}\n")
    packages = "booktabs, graphicx" + (", array" if any(wrap) else "")
    return f"{MARK} {table.id}; needs \\usepackage{{{packages}}}\n" + "\n".join(floats)
