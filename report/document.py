"""The report as data: sections of figures, tables and notes, rendered alike to HTML and PDF.

A Report is a list of Sections; a Section holds figures (drawn by ``figures``/``cost_figures``), tables
(strings, already formatted) and notes saying what is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Table:
    id: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    marked: list[bool] = field(default_factory=list)  # rows to highlight (a flagged sanity check)


@dataclass
class Figure:
    name: str  # file stem under figures/, and the HTML id (fig-<name>)
    title: str
    caption: str
    draw: Callable  # draw(fig): draws into a matplotlib Figure or SubFigure
    size: tuple[float, float]
    warnings: list[str] = field(default_factory=list)  # flagged sanity checks concerning this figure
    files: dict[str, Path] = field(default_factory=dict)  # "png"/"pdf" -> path, once saved
    #: the same drawing sized for a paper (8 pt text, one 3.4 in column or a 7 in page; a two-panel figure
    #: as one file per panel), saved under figures/paper/ and linked, not shown
    paper: list["Figure"] = field(default_factory=list)


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Report:
    title: str
    facts: list[tuple[str, str]]
    sections: list[Section]

    @property
    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures]

    @property
    def notes(self) -> list[str]:
        return [n for s in self.sections for n in s.notes]
