"""How numbers read in the report's tables: accuracies in percent with ± over seeds, counts with k/M/G."""
from __future__ import annotations

import math

DASH = "—"  # a value that is not there


def _missing(v) -> bool:
    try:
        return v is None or math.isnan(float(v))
    except (TypeError, ValueError):
        return True


def acc(mean, sd=None) -> str:
    """An accuracy fraction in percent, with its std over seeds when there is one."""
    if _missing(mean):
        return DASH
    text = f"{float(mean) * 100:.1f}"
    return text if _missing(sd) else f"{text} ± {float(sd) * 100:.1f}"


def count(v) -> str:
    """Parameters, MACs: 1.23 M, 456 k, 2.10 G."""
    if _missing(v):
        return DASH
    v = float(v)
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.3g} {unit}"
    return f"{v:.0f}"


def seconds(v) -> str:
    if _missing(v):
        return DASH
    v = float(v)
    if v < 120:
        return f"{v:.1f} s"
    if v < 7200:
        return f"{v / 60:.1f} min"
    return f"{v / 3600:.2f} h"


def megabytes(v) -> str:
    if _missing(v):
        return DASH
    v = float(v)
    return f"{v / 1024:.2f} GB" if v >= 1024 else f"{v:.0f} MB"


def number(v, digits: int = 3) -> str:
    if _missing(v):
        return DASH
    return f"{float(v):.{digits}g}"


def lam(v) -> str:
    """A lambda (or training lambda); NaN or the NONE key (-1) read as a dash."""
    if _missing(v) or float(v) < 0:
        return DASH
    return f"{float(v):g}"


def ratio(a, b) -> str:
    """b / a as "×3.2"."""
    if _missing(a) or _missing(b) or float(a) == 0:
        return DASH
    r = float(b) / float(a)
    return f"×{r:.1f}" if r < 100 else f"×{r:,.0f}"


def eps(v, like=None) -> str:
    """An L-inf budget, as k/255 when it is one; with ``like`` (the job's own budget), as k/255 only when that
    one is too, so 2ε of ε = 0.1 reads 0.2, not 51/255."""
    if _missing(v) or float(v) < 0:
        return DASH
    k = float(v) * 255
    if like is not None and "/" not in eps(like):
        return f"{float(v):g}"
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-3 and round(k) > 0 else f"{float(v):g}"
