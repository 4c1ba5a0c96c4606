"""Accuracy figures: the clean/robust trade-off and accuracy against lambda.

Every ``draw_*`` function draws into a matplotlib Figure or SubFigure it is given, so the same drawing makes
the standalone PNG/PDF files (``save``) and the report PDF's pages. Accuracies are plotted in percent.
A panel without data says so, in the panel, instead of staying empty.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib.colors
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from harness.atomic import write_atomic

from . import marks, style
from .tables import has, pareto

ROBUST_NAMES = {"pgd": "PGD", "aa": "AutoAttack"}
#: where each missing robust metric comes from, for the panel that stays empty
MISSING_HINT = {"pgd": "no pgd_acc rows: run python run_all.py --eval pgd20",
                "aa": "no aa_acc rows: run with --aa standard"}
LABEL_OFFSETS = [((5, 4), "left", "bottom"), ((5, -5), "left", "top"), ((-5, 4), "right", "bottom"),
                 ((-5, -5), "right", "top"), ((0, 7), "center", "bottom"), ((0, -8), "center", "top"),
                 ((9, 0), "left", "center"), ((-9, 0), "right", "center")]


def save(draw, size: tuple[float, float], stem: Path, exts=("png", "pdf"), dpi: int = 150) -> dict[str, Path]:
    """Draw into a new figure of ``size`` inches and save it as ``stem``.png (``dpi``) and ``stem``.pdf
    (vector; ``exts``)."""
    fig = new_figure(size, layout="constrained")
    draw(fig)
    out = {}
    for ext in exts:
        path = stem.parent / f"{stem.name}.{ext}"  # not with_suffix: "...-eps0.1" would lose its ".1"
        out[ext] = write_atomic(path, lambda f, ext=ext: fig.savefig(f, format=ext, dpi=dpi))
    return out


def new_figure(size: tuple[float, float], **kwargs) -> Figure:
    """A figure on an Agg canvas (labels are placed by measuring text, which needs a renderer)."""
    fig = Figure(figsize=size, **kwargs)
    FigureCanvasAgg(fig)
    return fig


def panels(fig, measured: int, missing: list[str], cols: int = 2, title: str = "Not measured in this run"):
    """Axes for ``measured`` panels, plus one narrower panel titled ``title`` listing ``missing`` (what was not
    measured, and why) when there is any; returns (axes for the data, the text axes or None)."""
    total = measured + bool(missing)
    if total <= 3:
        ratios = [1.0] * measured + ([0.5 if measured else 1.0] if missing else [])
        axes = list(fig.subplots(1, total, squeeze=False, width_ratios=ratios)[0])
    else:
        axes = list(fig.subplots((total + cols - 1) // cols, cols).ravel())
        for ax in axes[total:]:
            ax.remove()
        axes = axes[:total]
    if not missing:
        return axes, None
    note = axes[measured]
    width_in = note.get_position().width * fig.figure.get_figwidth()
    chars = max(24, int(width_in * 72 / (style.size(9.5) * 0.6)))
    text = "\n\n".join(textwrap.fill(style.mpl_text(m), chars) for m in missing)
    note.text(0.5, 0.5, text, ha="center", va="center", transform=note.transAxes, fontsize=style.size(9.5),
              color="0.25",
              bbox=dict(boxstyle="round,pad=0.7", fc="0.965", ec="0.65"))
    note.set_title(title)
    note.set_xticks([])
    note.set_yticks([])
    note.grid(False)
    for spine in note.spines.values():
        spine.set_visible(False)
    return axes[:measured], note


def _pct(s: pd.Series):
    return s.to_numpy(float) * 100


def plot_method(ax, pts: pd.DataFrame, method: str, methods, x: str, y: str, scale=(100, 100)) -> list:
    """One method's points on ``ax``: a line through a once-for-all model's lambdas (sorted), markers only for
    dedicated or single models; error bars where several seeds give a std. Returns label items."""
    look = style.look(method, methods)
    rows = pts[(pts["method"] == method)].dropna(subset=[x, y]).sort_values("lambda")
    if rows.empty:
        return []
    xs, ys = rows[x].to_numpy(float) * scale[0], rows[y].to_numpy(float) * scale[1]
    line = rows["kind"].iloc[0] == "ofa"
    ax.plot(xs, ys, color=look["color"], marker=look["marker"], linestyle=look["linestyle"] if line else "none",
            markersize=style.size(6), markeredgecolor=_darker(look["color"], 0.45), markeredgewidth=0.7,
            linewidth=style.size(1.6), zorder=3 if line else 3.5)  # (a dedicated point over a line's marker)
    xe = rows[f"{x}_sd"].to_numpy(float) * scale[0] if f"{x}_sd" in rows else None
    ye = rows[f"{y}_sd"].to_numpy(float) * scale[1] if f"{y}_sd" in rows else None
    if (xe is not None and pd.notna(xe).any()) or (ye is not None and pd.notna(ye).any()):
        ax.errorbar(xs, ys, xerr=xe, yerr=ye, fmt="none", ecolor=look["color"], elinewidth=0.7, capsize=1.5,
                    alpha=0.45, zorder=2)
    marks.ring_flagged(ax, xs, ys, rows)
    if "aa" in (x, y):
        marks.dot_rand(ax, xs, ys, rows)
    return [(a, b, f"{lam:g}", look["color"], method) for a, b, lam in zip(xs, ys, rows["lambda"])]


def legend_handles(pts: pd.DataFrame, methods, lines: bool = True) -> list:
    """One legend entry per method of ``methods`` (the run's: they fix each method's look) that ``pts`` holds;
    ``lines``: once-for-all methods are drawn as lines in this figure."""
    handles = []
    for m in methods:
        kind = pts.loc[pts["method"] == m, "kind"]
        if kind.empty:
            continue
        kind = kind.iloc[0]
        kind = kind if lines else "single"
        look = style.look(m, methods)
        label = style.mpl_text(style.display(m)) + (" (dedicated models)" if kind == "dedicated" else "")
        handles.append(Line2D([], [], color=look["color"], marker=look["marker"], markersize=style.size(6),
                              linestyle=look["linestyle"] if kind == "ofa" else "none",
                              markeredgecolor=_darker(look["color"], 0.45), markeredgewidth=0.7,
                              label=label))
    return handles


def legend(fig, handles: list, most: int = 4, **kwargs):
    """The figure legend of ``handles`` below ``fig``'s panels (a Figure, or a SubFigure on a page), in as many
    columns as fit its width, at most ``most`` (measured: fewer are tried until the legend fits)."""
    renderer = fig.figure.canvas.get_renderer()
    labels = [(h[0] if isinstance(h, tuple) else h).get_label() for h in handles]
    for cols in range(min(most, len(handles)), 0, -1):
        leg = fig.legend(handles, labels, loc="outside lower center", ncols=cols, **kwargs)
        if cols == 1 or leg.get_window_extent(renderer).width <= 0.98 * fig.bbox.width:
            return leg
        leg.remove()


def finish(fig, labels: list | None = None) -> int:
    """End a drawing: compute the layout once, place the λ labels of ``labels`` ((axes, items) pairs) and
    freeze the layout, so saving it as PNG and PDF does not lay it out again. Returns labels left out."""
    root = fig.figure
    root.draw_without_rendering()
    skipped = place_labels(labels or [], root.canvas.get_renderer())
    root.set_layout_engine("none")
    return skipped


def place_labels(jobs: list, renderer) -> int:
    """For each (axes, items) in ``jobs``, write each item's text next to its point where it overlaps no other
    label, point or the axes edge and no other point is nearer to it than its own (a label read as another
    point's λ would mislead); returns how many did not fit (left out: the tables hold every value).
    Needs the layout done (``finish`` calls it)."""
    skipped = 0
    for ax, items in jobs:
        items = _stacked(items)
        points = [tuple(ax.transData.transform((x, y))) for x, y, _, _ in items]  # (after _stacked: 4 each)
        taken = [(px - 4, py - 4, px + 4, py + 4) for px, py in points]
        frame = ax.get_window_extent(renderer)
        for i, (x, y, text, color) in enumerate(items):
            others = points[:i] + points[i + 1:]
            for offset, ha, va in LABEL_OFFSETS:
                ann = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", ha=ha, va=va,
                                  fontsize=max(6.0, style.size(7.5)), color=_darker(color),
                                  zorder=4)
                ann.set_in_layout(False)
                bb = ann.get_window_extent(renderer)
                box = (bb.x0 - 1, bb.y0 - 1, bb.x1 + 1, bb.y1 + 1)
                inside = frame.x0 <= box[0] and box[2] <= frame.x1 and frame.y0 <= box[1] and box[3] <= frame.y1
                if inside and not any(_overlap(box, t) for t in taken) \
                        and all(_gap(box, q) >= _gap(box, points[i]) for q in others):
                    taken.append(box)
                    break
                ann.remove()
            else:
                skipped += 1
    return skipped


def _stacked(items: list) -> list:
    """``items`` ((x, y, text, colour, method) each) with one method's points at the same place as one, their
    labels joined ("0.1, 0.2, 0.4"; "λ=0.1, 0.2"): one label would otherwise name one λ for the stack.
    Returns (x, y, text, colour) items."""
    stacks: dict = {}
    for x, y, text, color, method in items:
        stacks.setdefault((x, y, method), (x, y, [], color))[2].append(text)
    out = []
    for x, y, texts, color in stacks.values():
        head, _, _ = texts[0].rpartition("=")
        out.append((x, y, ", ".join([texts[0]] + [t[len(head) + 1:] if head else t for t in texts[1:]]), color))
    return out


def _darker(color, k: float = 0.6):
    """A method's colour darkened for text (still tells methods apart, and reads on white and in grey)."""
    return tuple(c * k for c in matplotlib.colors.to_rgb(color))


def _gap(box, point) -> float:
    """The distance from ``point`` to the nearest edge of ``box`` (0 inside it), in pixels."""
    return math.hypot(max(box[0] - point[0], 0, point[0] - box[2]), max(box[1] - point[1], 0, point[1] - box[3]))


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _pad_limits(ax, pad: float = 0.1, least: float = 4.0, axis: str = "xy") -> None:
    """Widen the autoscaled limits (which hold points and error bars) by ``pad`` of their span, to at least
    ``least`` percentage points, so λ labels fit and close accuracies do not look far apart; never further
    than a marker's room past 0% or 100% (accuracies live there)."""
    for name, get, set_ in (("x", ax.get_xlim, ax.set_xlim), ("y", ax.get_ylim, ax.set_ylim)):
        if name not in axis:
            continue
        lo, hi = get()
        span = max(hi - lo, least)
        mid = (lo + hi) / 2
        lo, hi = mid - span * (0.5 + pad), mid + span * (0.5 + pad)
        room = 0.04 * (hi - lo)
        if hi > 100 + room:  # shifted back inside rather than cut
            lo, hi = lo - (hi - 100 - room), 100 + room
        if lo < -room:
            lo, hi = -room, min(hi + (-room - lo), 100 + room)
        set_(lo, hi)


def draw_tradeoff(fig, pts: pd.DataFrame, methods: list[str], robusts=("pgd", "aa")) -> None:
    """Clean accuracy against PGD and AutoAttack accuracy (``robusts``: one panel each), the Pareto front of all
    points."""
    shown = [r for r in robusts if has(pts, r) and has(pts, "clean_acc")]
    missing = [f"No {ROBUST_NAMES[r]} results ({MISSING_HINT[r]})." for r in robusts if r not in shown]
    axes, _ = panels(fig, len(shown), missing, title=" and ".join(ROBUST_NAMES[r] for r in robusts
                                                                  if r not in shown))
    labels = []
    for ax, robust in zip(axes, shown):
        sub = pts.dropna(subset=[robust, "clean_acc"])
        front = sub[pareto(sub, robust, "clean_acc")].sort_values(robust)
        ax.plot(_pct(front[robust]), _pct(front["clean_acc"]), color=style.FRONT_COLOR, linewidth=style.size(6),
                alpha=0.18, solid_capstyle="round", zorder=1)
        ax.scatter(_pct(front[robust]), _pct(front["clean_acc"]), s=style.size(12.2) ** 2, facecolors="none",
                   edgecolors=style.FRONT_COLOR, linewidths=1.0, zorder=2)
        items = []
        for m in methods:
            items += plot_method(ax, sub, m, methods, robust, "clean_acc")
        marks.nest(ax, items, methods, sub)
        ax.autoscale(tight=True)
        _pad_limits(ax)
        ax.set_title(ROBUST_NAMES[robust])
        ax.set_xlabel(f"robust accuracy under {ROBUST_NAMES[robust]} (%)")
        ax.set_ylabel("clean accuracy (%)")
        labels.append((ax, items))
    handles = legend_handles(pts, methods)
    handles.append(Line2D([], [], color=style.FRONT_COLOR, linewidth=style.size(6), alpha=0.25, marker="o",
                          markersize=style.size(11),
                          markerfacecolor="none", markeredgecolor=style.FRONT_COLOR, label="Pareto front"))
    handles += marks.flagged_handle(pts) + (marks.rand_handle(pts) if "aa" in shown else [])
    legend(fig, handles, title="numbers next to points: λ")
    finish(fig, labels)


def draw_lambda(fig, pts: pd.DataFrame, methods: list[str]) -> None:
    """Clean, PGD and (when present) AutoAttack accuracy against lambda, one panel each."""
    panels = [("clean_acc", "clean")] + [(r, ROBUST_NAMES[r]) for r in ("pgd", "aa") if has(pts, r)]
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax in axes[2:]:  # the robust panels share their scale; clean accuracy has its own (97–99% would be flat
        ax.sharey(axes[1])  # on a 0–100% axis shared with robust accuracy)
    for ax, (col, name) in zip(axes, panels):
        items = [it for m in methods for it in plot_method(ax, pts, m, methods, "lambda", col, scale=(1, 100))]
        marks.nest(ax, items, methods, pts)
        ax.set_title(f"{name} accuracy")
        ax.set_xlabel("λ")
        ax.set_xlim(-0.05, 1.05)
    for ax in axes[:2]:  # (the third shares the second's limits)
        _pad_limits(ax, axis="y")
        ax.set_ylabel("accuracy (%)")
    for ax in axes[2:]:
        ax.tick_params(labelleft=False)
    handles = (legend_handles(pts, methods) + marks.flagged_handle(pts)
               + (marks.rand_handle(pts) if has(pts, "aa") else []))
    legend(fig, handles, 5)
    finish(fig)
