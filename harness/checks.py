"""Sanity checks that flag a robustness figure that cannot be trusted.

Each check is a plain function over one job's rows (dicts with ``lambda, metric, value, attack, n`` and,
for ``check_acc`` rows, ``eps``) that returns flag rows ``metric = "flag:<check>"``, one per lambda it could
judge, ``value`` 1.0 = FLAGGED (suspicious), 0.0 = passed, ``attack`` naming the attack the flag concerns,
and ``detail`` the one-line explanation (the runner prints it for flagged rows and keeps it out of the CSV).

Tolerance. Two accuracies p_a (on n_a examples) and p_b (n_b) are "clearly" ordered when they differ by more
than ``Z`` standard errors of a binomial proportion at the smaller n, plus one example:
``tol = Z * sqrt(p (1 - p) / min(n_a, n_b)) + 1 / min(n_a, n_b)``, p their mean, Z = 2. Every subset lambench
compares is a prefix of the evaluated test split (AutoAttack's first ``aa_n``, the checks' first
``checks_n``), so the difference of the two estimates has a variance at most p (1 - p) / n_small.

Checks (the extra attacks run on the first ``checks_n`` test examples, as ``check_acc`` rows):
- ``flag:pgd_le_clean``: PGD accuracy above clean accuracy (any PGD attack; the highest is named).
- ``flag:aa_le_pgd``: AutoAttack accuracy above the strongest PGD accuracy.
- ``flag:eps2_le_eps``: PGD-20 accuracy at 2 eps above PGD-20 at eps (``pgd20@2eps`` vs ``pgd20``).
- ``flag:unbounded_near_zero``: PGD-20 at eps = 1 (the whole input box) above ``NEAR_ZERO`` + tol; any
  working attack reaches 0 there, so a higher figure means gradients that do not lead anywhere.
- ``flag:pgd100_vs_pgd20``: PGD-100 clearly below PGD-20 (PGD-20 had not converged).
- ``flag:eot_vs_plain``: random models only: PGD-20 with EOT (gradients averaged over several noise draws)
  clearly below plain PGD-20 (the reported PGD figure is inflated by the randomness).
- ``flag:autoattack``: the AutoAttack package warned about its own evaluation (made by ``evaluate``).
"""
from __future__ import annotations

import math
from collections import defaultdict

from .store import result_row

Z = 2.0
NEAR_ZERO = 0.02
BASE = "pgd20"                       # the reference attack of the checks
EPS2, UNBOUNDED, LONG, EOT = f"{BASE}@2eps", f"{BASE}@eps1.0", "pgd100", f"{BASE}-eot"
CHECKS = ("pgd_le_clean", "aa_le_pgd", "eps2_le_eps", "unbounded_near_zero", "pgd100_vs_pgd20",
          "eot_vs_plain", "autoattack")


def tolerance(p_a: float, n_a: int, p_b: float, n_b: int) -> float:
    n = max(1, min(int(n_a), int(n_b)))
    p = min(max((p_a + p_b) / 2, 0.0), 1.0)
    return Z * math.sqrt(p * (1 - p) / n) + 1 / n


def _by_lambda(rows):
    out = defaultdict(dict)
    for r in rows:
        if isinstance(r.get("lambda"), float) and math.isnan(r["lambda"]):
            continue
        out[r["lambda"]][(r["metric"], r.get("attack", ""))] = r
    return out


def _flag(lam, check, attack, bad: bool, detail: str) -> dict:
    return result_row(lam, f"flag:{check}", 1.0 if bad else 0.0, float("nan"), attack, detail=detail if bad else "")


def _above(lam, check, hi, lo, what_hi, what_lo) -> dict:
    """Flag when ``hi`` (should be <= ``lo``) exceeds ``lo`` beyond the tolerance."""
    tol = tolerance(hi["value"], hi["n"], lo["value"], lo["n"])
    bad = hi["value"] > lo["value"] + tol
    return _flag(lam, check, hi["attack"] or lo["attack"], bad,
                 f"{what_hi} {hi['value']:.3f} (n={hi['n']:g}) > {what_lo} {lo['value']:.3f} (n={lo['n']:g}) "
                 f"+ tolerance {tol:.3f}")


def _subset_ref(cells):
    """PGD-20 on the checks subset (``check_acc``/pgd20) if present, else on the whole split."""
    return cells.get(("check_acc", BASE)) or cells.get(("pgd_acc", BASE))


def check_pgd_le_clean(rows):
    out = []
    for lam, cells in _by_lambda(rows).items():
        clean = cells.get(("clean_acc", ""))
        pgds = [r for (m, _), r in cells.items() if m == "pgd_acc"]
        if clean and pgds:
            top = max(pgds, key=lambda r: r["value"])
            out.append(_above(lam, "pgd_le_clean", top, clean, f"PGD accuracy ({top['attack']})", "clean accuracy"))
    return out


def check_aa_le_pgd(rows):
    out = []
    for lam, cells in _by_lambda(rows).items():
        aa = [r for (m, _), r in cells.items() if m == "aa_acc"]
        pgds = [r for (m, _), r in cells.items() if m == "pgd_acc"]
        if aa and pgds:
            low = min(pgds, key=lambda r: r["value"])
            out.append(_above(lam, "aa_le_pgd", aa[0], low, f"AutoAttack accuracy ({aa[0]['attack']})",
                              f"PGD accuracy ({low['attack']})"))
    return out


def check_eps2_le_eps(rows):
    out = []
    for lam, cells in _by_lambda(rows).items():
        at2, ref = cells.get(("check_acc", EPS2)), _subset_ref(cells)
        if at2 and ref:
            out.append(_above(lam, "eps2_le_eps", at2, ref, "PGD-20 accuracy at 2 eps", "at eps"))
    return out


def check_unbounded_near_zero(rows):
    out = []
    for lam, cells in _by_lambda(rows).items():
        r = cells.get(("check_acc", UNBOUNDED))
        if r:
            tol = tolerance(NEAR_ZERO, r["n"], NEAR_ZERO, r["n"])
            bad = r["value"] > NEAR_ZERO + tol
            out.append(_flag(lam, "unbounded_near_zero", UNBOUNDED, bad,
                             f"PGD-20 accuracy at eps = 1.0 (unbounded) is {r['value']:.3f} (n={r['n']:g}), "
                             f"not near 0 (> {NEAR_ZERO + tol:.3f}): gradients do not lead the attack; "
                             f"suspect gradient masking"))
    return out


def _below(lam, check, low, ref, what_low, what_ref) -> dict:
    tol = tolerance(low["value"], low["n"], ref["value"], ref["n"])
    bad = low["value"] < ref["value"] - tol
    return _flag(lam, check, low["attack"], bad,
                 f"{what_low} {low['value']:.3f} (n={low['n']:g}) < {what_ref} {ref['value']:.3f} "
                 f"(n={ref['n']:g}) - tolerance {tol:.3f}")


def check_pgd100_vs_pgd20(rows):
    out = []
    for lam, cells in _by_lambda(rows).items():
        long, ref = cells.get(("check_acc", LONG)), _subset_ref(cells)
        if long and ref:
            out.append(_below(lam, "pgd100_vs_pgd20", long, ref, "PGD-100 accuracy",
                              "PGD-20 (not converged)"))
    return out


def check_eot_vs_plain(rows):
    out = []
    for lam, cells in _by_lambda(rows).items():
        eot, ref = cells.get(("check_acc", EOT)), _subset_ref(cells)
        if eot and ref:
            out.append(_below(lam, "eot_vs_plain", eot, ref, "PGD-20 accuracy with EOT",
                              "without (randomness inflates the PGD figure)"))
    return out


def flag_rows(rows) -> list[dict]:
    """Every check that the rows allow (flag:autoattack comes from evaluation itself)."""
    out = []
    for check in (check_pgd_le_clean, check_aa_le_pgd, check_eps2_le_eps, check_unbounded_near_zero,
                  check_pgd100_vs_pgd20, check_eot_vs_plain):
        out += check(rows)
    return out


def warning_lines(rows) -> list[str]:
    """One console line per flagged row (naming the variant, e.g. ``oats-w0.5``, where there is one)."""
    return [f"WARNING {r['method'] + ' ' if 'method' in r else ''}lambda={r['lambda']:g} {r['metric']} "
            f"({r['attack']}): {r.get('detail', '')}"
            for r in rows if str(r["metric"]).startswith("flag:") and r["value"] == 1.0]
