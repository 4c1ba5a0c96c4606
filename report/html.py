"""The HTML report: one self-contained file (figures embedded as base64 PNG) from a Jinja2 template.

Autoescape is on for every template, so method names, commands and other user strings are escaped.
"""
from __future__ import annotations

import base64
import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from harness.atomic import write_text

from .document import Report


def environment() -> Environment:
    return Environment(loader=PackageLoader("report", "templates"), autoescape=True, undefined=StrictUndefined,
                       keep_trailing_newline=True)


def render_html(report: Report, run_dir: Path, path: Path) -> Path:
    """Write ``report`` to ``path`` (atomically); its figures must have been saved (``Figure.files``)."""
    images = {f.name: base64.b64encode(Path(f.files["png"]).read_bytes()).decode("ascii") for f in report.figures}
    text = environment().get_template("report.html.j2").render(
        report=report, images=images, version=_version(), source=str(Path(run_dir) / "results.csv"),
        run_path=str(run_dir), generated=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))
    write_text(path, text)
    return path


def _version() -> str:
    try:
        return version("lambench")
    except PackageNotFoundError:
        return ""
