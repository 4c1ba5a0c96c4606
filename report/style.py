"""One look for every figure: a fixed colour, marker and line style per method, readable in grey print.

Colours come from seaborn's colour-blind-safe "colorblind" palette, indexed by a stable method order (the
methods lambench knows first, in a fixed order, then any others alphabetically), so a method lambench knows
keeps its colour across figures and across runs; a method of the user's takes first the colours no known
method of the run has. Markers and line styles differ per method too, so lines stay apart in grey.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display: reports render on headless machines

import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

#: methods lambench ships, in the order they get colours (new methods go at the end, never in between)
KNOWN_ORDER = ("pgd_at", "fast_at", "oat", "float", "floats", "smart", "oats")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<")
LINESTYLES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 1)),
              (0, (6, 2)), (0, (2, 2, 6, 2)))
#: seaborn's "colorblind" palette without its grey (grey is the Pareto front's colour), its pale yellow last
PALETTE = [sns.color_palette("colorblind", 10)[i] for i in (0, 1, 2, 3, 4, 5, 6, 9, 8)]
FRONT_COLOR = "0.25"  # the Pareto front: dark grey, distinct from every method colour

#: display names for the methods lambench knows (others are shown as they are spelled)
DISPLAY = {"pgd_at": "PGD-AT", "fast_at": "Fast-AT", "oat": "OAT", "float": "FLOAT", "floats": "FLOATS",
           "smart": "SMART", "oats": "OATS"}


def method_order(methods) -> list[str]:
    """The stable order of ``methods``: known ones in KNOWN_ORDER, then the rest alphabetically."""
    methods = set(methods)
    return [m for m in KNOWN_ORDER if m in methods] + sorted(methods - set(KNOWN_ORDER))


def _index(method: str, methods) -> int:
    """Known methods keep their slot in KNOWN_ORDER; others follow them, in alphabetical order."""
    if method in KNOWN_ORDER:
        return KNOWN_ORDER.index(method)
    others = sorted(set(methods) - set(KNOWN_ORDER))
    return len(KNOWN_ORDER) + others.index(method)


def look(method: str, methods) -> dict:
    """Colour, marker and line style of ``method`` among ``methods`` (the run's methods). The variants of
    a known method (OATS's widths: ``oats-w0.5``, ...; its seeds on one machine: ``pgd_at @ cpu``) share its
    hue, darker to lighter, each with its own marker and line style."""
    base = _family(method)
    if base:
        siblings = sorted(m for m in set(methods) if _family(m) == base)
        i, r, n = KNOWN_ORDER.index(base), siblings.index(method), len(siblings)
        t = 0.0 if n == 1 else -0.55 + 0.75 * r / (n - 1)  # < 0: towards black, > 0: towards white (a little:
        # a pale hue, OATS's pink, lightened further would fade into the page)
        rgb = tuple(c * (1 + t) if t < 0 else c + (1 - c) * t for c in PALETTE[i % len(PALETTE)])
        return {"color": rgb, "marker": MARKERS[(i + r) % len(MARKERS)],
                "linestyle": LINESTYLES[(i + r) % len(LINESTYLES)]}
    i = _index(method, methods)
    turn = i // len(PALETTE)  # past the palette's end, colours repeat: shift markers and lines so no look does
    color = PALETTE[i % len(PALETTE)]
    if method not in KNOWN_ORDER:  # a method of the user's: a colour no known method of this run has, first
        taken = {KNOWN_ORDER.index(f) for f in map(lambda m: _family(m) or m, methods) if f in KNOWN_ORDER}
        free = [c for c in (7, *range(7), 8) if c not in taken]  # cyan, known methods' colours, yellow last
        k = i - len(KNOWN_ORDER)
        color = PALETTE[free[k]] if k < len(free) else color
    return {"color": color, "marker": MARKERS[(i + turn) % len(MARKERS)],
            "linestyle": LINESTYLES[(i + 2 * turn) % len(LINESTYLES)]}


def _family(method: str) -> str | None:
    """The known method that ``method`` is a variant of (``oats-w0.5``: one width of OATS; ``pgd_at @ cpu``:
    the seeds of PGD-AT that ran on the CPU, where its seeds ran on several machines), else None."""
    head, at, _ = method.partition(" @ ")
    base, _, variant = head.rpartition("-")
    if base in KNOWN_ORDER and variant:
        return base
    return head if at and head in KNOWN_ORDER else None


def display(method: str) -> str:
    """The display name; a variant's (``oats-w0.5``, one width of OATS) is its method's with the variant:
    "OATS w0.5"; a machine's (``pgd_at @ cpu``) keeps it: "PGD-AT @ cpu"."""
    head, at, machine = method.partition(" @ ")
    base, _, variant = head.rpartition("-")
    name = f"{DISPLAY[base]} {variant}" if base in DISPLAY and variant else DISPLAY.get(head, head)
    return f"{name} @ {machine}" if at else name


def mpl_text(text: str) -> str:
    """A user string made safe for matplotlib (a ``$`` would otherwise start mathtext)."""
    return str(text).replace("$", r"\$")


#: the report's figures' base font size (seaborn's "paper" context at font_scale 1.15); hand-set sizes
#: (``size``) are written for it
REPORT_FONT = 11.04
#: the paper-sized figures (``paper``), at 100% in a 3.4 in column or a 7 in page: 8 pt labels and titles,
#: 7 pt ticks and legends, 6 pt λ numbers (journals ask for 6–8 pt)
PAPER_RC = {"font.size": 8, "axes.labelsize": 8, "axes.titlesize": 8.5, "xtick.labelsize": 7,
            "ytick.labelsize": 7, "legend.fontsize": 7, "legend.title_fontsize": 7, "lines.linewidth": 1.0,
            "axes.linewidth": 0.6, "grid.linewidth": 0.5, "xtick.major.width": 0.6, "ytick.major.width": 0.6,
            "xtick.major.size": 2.5, "ytick.major.size": 2.5, "hatch.linewidth": 0.6}
#: paper figure widths, inches
COLUMN, PAGE = 3.4, 7.0


def setup() -> None:
    """Fonts and sizes for every figure (called once per render)."""
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.15,
                  rc={"pdf.fonttype": 42, "ps.fonttype": 42, "savefig.dpi": 150, "figure.dpi": 100,
                      "axes.titlesize": 12.5, "legend.frameon": True, "legend.framealpha": 0.9,
                      "legend.fontsize": 9, "legend.title_fontsize": 8.5,
                      "grid.linestyle": ":", "grid.color": "0.8"})


def paper():
    """Within it, figures are drawn for a paper (``PAPER_RC``): use with the paper sizes COLUMN and PAGE."""
    return plt.rc_context(PAPER_RC)


def size(points: float) -> float:
    """A hand-set size (text or marker, in points) as written for the report's figures, scaled to the
    figures being drawn: the same in the report, about 0.72 of it in the paper-sized ones."""
    return points * plt.rcParams["font.size"] / REPORT_FONT


def close(fig) -> None:
    plt.close(fig)
