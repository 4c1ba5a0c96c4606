"""python -m report results/<run> [--clean-floor 0.8] [--format html,pdf]: re-render a run's report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.errors import LambenchError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # usage errors are one line, like run_all.py's
        raise LambenchError(f"{message} (see python -m report --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m report",
                description="Render results/<run>/report.html and report.pdf (and figures/*.png, *.pdf) from the "
                            "results store alone, without retraining.")
    p.add_argument("run_dir", help="the run's folder, holding results.csv (e.g. results/smoke)")
    p.add_argument("--clean-floor", type=float, metavar="FRACTION",
                   help="clean-accuracy floor for the complexity figure's second operating point, e.g. 0.8 "
                        "(default: each setting's best clean accuracy minus 0.05)")
    p.add_argument("--format", default="html,pdf", help="comma list: html, pdf (default: both)")
    return p


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
        from . import render
        formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
        out = render(args.run_dir, clean_floor=args.clean_floor, formats=formats)
    except LambenchError as exc:
        print(f"lambench: error: {exc}", file=sys.stderr)
        return 2
    for key in ("html", "pdf"):
        if key in out:
            extra = f" ({out.pdf_pages} pages)" if key == "pdf" else ""
            print(f"{key}: {out[key]}{extra}")
    print(f"figures: {len(out.figures)} in {Path(args.run_dir) / 'figures'} (PNG and PDF), sized for a paper "
          f"in {Path(args.run_dir) / 'figures' / 'paper'}")
    tables = sum(k.startswith("table:") and k.endswith(".csv") for k in out)
    print(f"tables: {tables} in {Path(args.run_dir) / 'tables'} (CSV and LaTeX)")
    for note in out.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
