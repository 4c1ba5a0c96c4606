"""Cost figures: robust accuracy against model and training cost, and the cost of the dial.

As in ``figures``, each ``draw_*`` draws into a Figure or SubFigure it is given; missing measurements leave
a panel that says which rows are missing.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter

from . import fmt, style
from .figures import ROBUST_NAMES, finish, legend, legend_handles, panels
from .marks import flagged_handle, ring_flagged
from .tables import has

#: the complexity panels: column, axis label, what produces the column when it is missing
COST_AXES = [
    ("nonzero_params", "non-zero parameters at that λ", "non-zero parameters (nonzero_params rows come from "
                                                        "the complexity measurement)"),
    ("macs", "MACs per image at that λ", "MACs (macs rows come from the complexity measurement)"),
    ("train_time_s", "training wall-clock (s)", "training time (no train_time_s rows)"),
    ("train_peak_mem_mb", "training peak memory (MB)",
     "training peak memory (CUDA peak memory: measured on GPU runs only)"),
]


def cost_axes(ops: pd.DataFrame) -> tuple[list[tuple[str, str]], list[str]]:
    """The complexity panels that have data in ``ops`` (column, axis label), and what the others lack.
    Total parameters stand in when non-zero counts are missing."""
    axes = list(COST_AXES)
    if not has(ops, "nonzero_params") and has(ops, "params"):
        axes[0] = ("params", "parameters (total; non-zero counts not measured)", "")
    shown = [(col, label) for col, label, _ in axes if has(ops, col)]
    return shown, [hint for col, _, hint in axes if not has(ops, col)]


def complexity_size(ops: pd.DataFrame) -> tuple[float, float]:
    shown, missing = cost_axes(ops)
    return (11, 4.8) if len(shown) + bool(missing) <= 3 else (11, 8.0)


def draw_complexity(fig, ops: pd.DataFrame, robust: str, methods: list[str], floor: float | None,
                    notes: bool = True) -> None:
    """Robust accuracy at each method's best lambda (filled) and at the clean-accuracy floor (hollow) against
    parameters, MACs, training time and training memory (one panel each; unmeasured ones listed instead, in a
    panel of their own unless ``notes`` is False)."""
    shown, missing = cost_axes(ops)
    axes, _ = panels(fig, len(shown), missing if notes else [])
    name = ROBUST_NAMES[robust]
    labels = []
    for ax, (col, label) in zip(axes, shown):
        items = []
        for m in methods:
            look = style.look(m, methods)
            rows = ops[ops["method"] == m].dropna(subset=[col, robust])
            best = rows[rows["pick"].isin(["best", "both"])]
            flo = rows[rows["pick"] == "floor"]
            if len(best) and len(flo):
                ax.plot([best[col].iloc[0], flo[col].iloc[0]], [best[robust].iloc[0] * 100, flo[robust].iloc[0] * 100],
                        color=look["color"], linewidth=style.size(0.8), linestyle=":", zorder=2)
            ax.scatter(best[col], best[robust] * 100, marker=look["marker"], s=style.size(8.4) ** 2,
                       color=look["color"], edgecolors="black", linewidths=0.6, zorder=3)
            ax.scatter(flo[col], flo[robust] * 100, marker=look["marker"], s=style.size(8.4) ** 2, facecolors="white",
                       edgecolors=look["color"], linewidths=style.size(1.6), zorder=4)
            ring_flagged(ax, rows[col].to_numpy(float), rows[robust].to_numpy(float) * 100, rows)
            items += [(x, y * 100, f"λ={lam:g}", look["color"], m) for x, y, lam in
                      zip(rows[col], rows[robust], rows["lambda"])]  # one row per distinct point
        _cost_scale(ax, ops[col].dropna(), TICKS.get(col, fmt.number))
        ax.set_ylim(*_padded([i[1] for i in items], 0.15))
        ax.set_title(label.split(" at that")[0].split(" (")[0])
        ax.set_xlabel(label)
        ax.set_ylabel(f"{name} accuracy (%)")
        labels.append((ax, items))
    handles = legend_handles(ops, methods, lines=False)
    handles.append(Line2D([], [], marker="o", linestyle="none", color="0.3", markeredgecolor="black",
                          label="highest robust accuracy (best λ)"))
    if floor is not None and (ops["pick"] == "floor").any():
        handles.append(Line2D([], [], marker="o", linestyle="none", markerfacecolor="white",
                              markeredgecolor="0.3", markeredgewidth=1.6,
                              label=f"best robust with clean ≥ {floor * 100:.1f}%"))
    handles += flagged_handle(ops)
    legend(fig, handles)
    finish(fig, labels)


#: how each cost axis writes its ticks (as the tables do: 1.4 M, 300 MB; seconds as plain numbers)
TICKS = {"nonzero_params": fmt.count, "params": fmt.count, "macs": fmt.count, "train_time_s": lambda v: f"{v:g}",
         "train_peak_mem_mb": fmt.megabytes}


def _cost_scale(ax, spread: pd.Series, ticks) -> None:
    """Log scale when the values span more than 20x; ticks written as in the tables."""
    if len(spread) and spread.min() > 0 and spread.max() / spread.min() > 20:
        ax.set_xscale("log")
        ax.set_xlim(spread.min() / 1.6, spread.max() * 1.6)
        ax.xaxis.set_minor_formatter(NullFormatter())
    elif len(spread):  # at least 10% of the values' size wide: near-equal costs read as near-equal
        lo, hi = _padded(spread, 0.2)
        mid, half = (lo + hi) / 2, max(hi - lo, 0.1 * abs(spread).max()) / 2
        ax.set_xlim(mid - half, mid + half)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: ticks(v)))


def _padded(values, pad: float) -> tuple[float, float]:
    lo, hi = float(min(values)), float(max(values))
    span = (hi - lo) or abs(hi) * 0.2 or 1.0
    return lo - pad * span, hi + pad * span


def dial_panels(dial: pd.DataFrame) -> int:
    return int(has(dial, "ofa_params")) + int(has(dial, "ofa_time"))


def _dial_tick(row, one: str) -> str:
    """A once-for-all method's tick: its name and grid size; under training time also how many of the grid's
    dedicated models were timed (the rest of the hatched bar is the timed adversarial ones' mean)."""
    n, timed = int(row["lambdas"]), int(row["ded_measured"])
    estimated = one == "ofa_time" and row["ded_models"] and pd.notna(row["ded_time"]) and timed < n
    note = f", {timed} timed" if estimated else ""
    return f"{style.mpl_text(style.display(row['method']))}\n({n} grid λ{note})"


def draw_dial_cost(fig, dial: pd.DataFrame, methods: list[str], notes: bool = True) -> None:
    """Per once-for-all method: one model's stored parameters and training time versus one dedicated model per
    lambda of its grid (hatched), with the ratio written over the pair (what was not measured: in a panel of
    its own unless ``notes`` is False)."""
    specs = [("ofa_params", "ded_params", "parameters stored", 1e6, "million parameters",
              "parameters stored (params, stored_params rows: parameter counts not in this run)"),
             ("ofa_time", "ded_time", "training wall-clock", 1.0, "seconds", "training time (no train_time_s rows)")]
    shown = [p for p in specs if has(dial, p[0])]
    axes, _ = panels(fig, len(shown), [p[5] for p in specs if p not in shown] if notes else [])
    order = [m for m in methods if m in set(dial["method"])]
    for ax, (one, many, title, unit, ylabel, _) in zip(axes, shown):
        bars = pd.concat([dial[one], dial[many]]).dropna() / unit
        spread = len(bars) and bars.min() > 0 and bars.max() / bars.min() > 30
        if spread:  # a ratio over 30x: a linear axis would flatten the smaller bars to nothing
            ax.set_yscale("log")
        for i, m in enumerate(order):
            look = style.look(m, methods)
            row = dial[dial["method"] == m].iloc[0]
            a, b = row[one] / unit, row[many] / unit
            ax.bar(i - 0.2, a, width=0.38, color=look["color"], edgecolor="black", linewidth=0.6)
            if pd.notna(b):
                ax.bar(i + 0.2, b, width=0.38, facecolor="white", edgecolor=look["color"], hatch="///",
                       linewidth=1.2)
                ax.text(i, max(a, b) * 1.03, fmt.ratio(a, b) if a else "", ha="center", va="bottom",
                        fontsize=style.size(9.5))
            else:
                why = ("no dedicated\nmodels to\ncompare" if not row["ded_models"] else
                       "no adversarially\ntrained dedicated\nmodel timed")
                ax.text(i + 0.2, a * (1.03 if spread else 0.05), why, ha="center", va="bottom", fontsize=style.size(8),
                        color="0.3")
        ax.set_xticks(np.arange(len(order)), [_dial_tick(dial[dial["method"] == m].iloc[0], one) for m in order])
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.margins(y=0.15)
        if spread:
            ax.set_ylabel(f"{ylabel} (log scale)")
        ax.set_xlim(-0.6, len(order) - 0.4)
    handles = [Patch(facecolor="0.5", edgecolor="black", label="one once-for-all model (all its λ)"),
               Patch(facecolor="white", edgecolor="0.3", hatch="///", label="one dedicated model per λ")]
    legend(fig, handles)
    finish(fig)
