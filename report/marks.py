"""Marks drawn over a figure's points, each with its legend entry and caption sentence: a red ring round
a point a sanity check flagged, a white dot in a point whose AutoAttack accuracy is AutoAttack rand's."""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from . import style
from .tables import flagged

#: the flagged points' ring, and what the captions say of it
FLAG_COLOR = "#c0392b"
FLAGGED_CAPTION = (" Red rings: points a sanity check flagged (see Sanity checks); do not trust their robust "
                   "accuracy.")
RAND_CAPTION = (" White dots: AutoAttack accuracy from its rand version (APGD-CE and APGD-DLR with EOT, for a random "
                "forward pass), not the standard one.")


def rand(rows: pd.DataFrame) -> np.ndarray:
    """Which points' AutoAttack accuracy comes from its rand version (EOT; a model with a random forward), every
    seed's ("aa-rand/aa-standard": the seeds' strongest differ, no dot)."""
    if "aa_attack" not in rows:
        return np.zeros(len(rows), bool)
    return rows["aa_attack"].fillna("").map(lambda a: bool(a) and all("rand" in s for s in a.split("/"))).to_numpy(bool)


def dot_rand(ax, xs, ys, rows: pd.DataFrame) -> None:
    """A white dot in each point of ``rows`` whose AutoAttack accuracy is AutoAttack rand's (``rand_handle``)."""
    hit = rand(rows)
    if hit.any():
        ax.scatter(xs[hit], ys[hit], s=style.size(2.6) ** 2, color="white", edgecolors="none", zorder=4)


def ring_flagged(ax, xs, ys, rows: pd.DataFrame) -> None:
    """A red ring round each point of ``rows`` that a sanity check flagged (``flags``, from tables.mark_flags)."""
    hit = flagged(rows).to_numpy()
    if hit.any():
        ax.scatter(xs[hit], ys[hit], s=style.size(15.5) ** 2, facecolors="none", edgecolors=FLAG_COLOR,
                   linewidths=style.size(1.6), zorder=5)


def flagged_handle(pts: pd.DataFrame) -> list:
    """The legend entry for the red rings, where ``pts`` has a flagged point."""
    if not flagged(pts).any():
        return []
    return [Line2D([], [], marker="o", markersize=style.size(13), linestyle="none", markerfacecolor="none",
                   markeredgecolor=FLAG_COLOR, markeredgewidth=style.size(1.6), label="flagged by a sanity check")]


def rand_handle(pts: pd.DataFrame) -> list:
    """The legend entry for ``dot_rand``'s dots, where ``pts`` has such a point."""
    if not rand(pts).any():
        return []
    return [(Line2D([], [], marker="o", markersize=style.size(6), linestyle="none", markerfacecolor="0.45",
                    markeredgecolor="0.2", markeredgewidth=0.7, label="white dot: AutoAttack rand (EOT)"),
             Line2D([], [], marker="o", markersize=style.size(2.6), linestyle="none", color="white",
                    markeredgecolor="none"))]  # (a tuple: the dot drawn over the marker)


NESTED_CAPTION = (" Where points of several methods coincide, the covered ones are drawn smaller inside the top one.")


def coincident(items: list) -> list[list]:
    """Groups of ``items`` ((x, y, text, colour, method) each, in drawing order) at one place from more than one
    method: each group's items, one per method (its last)."""
    places: dict = {}
    for item in items:
        places.setdefault((round(item[0], 9), round(item[1], 9)), {})[item[4]] = item
    return [list(by.values()) for by in places.values() if len(by) > 1]


def nest(ax, items: list, methods, pts: pd.DataFrame) -> None:
    """Draw each covered marker of ``coincident(items)`` again, smaller, over the one on top (a point drawn
    without a line, a dedicated or single model's, else the last drawn), so no method's point is hidden under
    another's."""
    kinds = pts.drop_duplicates("method").set_index("method")["kind"]
    for group in coincident(items):
        group.sort(key=lambda it: kinds.get(it[4]) != "ofa")  # (plot_method's zorder; stable: drawing order)
        for k, (x, y, _, _, method) in enumerate(reversed(group[:-1]), start=1):
            look = style.look(method, methods)
            ax.plot([x], [y], marker=look["marker"], color=look["color"], linestyle="none",
                    markersize=style.size(6) * 0.55 ** k, markeredgecolor="white", markeredgewidth=0.5,
                    zorder=4 + 0.01 * k)


def nested(pts: pd.DataFrame, pairs) -> bool:
    """Whether ``pts`` has points of several methods at one place on any (x, y) of ``pairs``."""
    for x, y in pairs:
        if not {x, y} <= set(pts.columns):
            continue
        rows = pts.dropna(subset=[x, y])
        if coincident([(a, b, "", None, m) for a, b, m in zip(rows[x], rows[y], rows["method"])]):
            return True
    return False
