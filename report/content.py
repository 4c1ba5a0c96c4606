"""What the report says, built once and rendered twice (HTML and PDF), so both hold the same content.

It decides which figures, tables and notes each section holds (``document`` defines them); nothing here
knows about HTML or PDF.
"""
from __future__ import annotations

import re
from functools import partial

import pandas as pd

from harness.errors import LambenchError

from . import cost_figures, figures, marks, style, tables as T
from .document import Figure, Report, Section
from .fmt import eps as fmt_eps
from .load import Run
from .notes import flag_line, missing, mixed_protocols, point_name, stale_results
from .tabulate import check_tables, config_table, dial_table, model_table, operating_table, point_table


def build(run: Run, clean_floor: float | None = None) -> Report:
    table = run.table
    pts = T.points(table)
    if pts.empty:
        raise LambenchError(f"results.csv in {run.dir} has no per-λ rows (clean_acc, pgd_acc); rerun python "
                            f"run_all.py so the jobs are evaluated")
    methods = style.method_order(table["method"])
    floors = T.floors(pts, clean_floor)
    T.mark_fronts(pts)
    all_flags = T.flags(table)
    T.mark_flags(pts, all_flags)
    flagged = all_flags[all_flags["flagged"]]
    notes = missing(table, pts, run.info)
    notes["tradeoff"][:0] = stale_results(run) + mixed_protocols(table, run.jobs)
    settings = list(pts.groupby(T.SETTING).groups)
    subs = {k: pts[T.in_setting(pts, k)] for k in settings}
    ranks = {k: T.ranking(sub) for k, sub in subs.items()}  # each setting's own (its own AutoAttack sample)
    ops = [T.operating_points(subs[k], r, floors).assign(ranked_by=r) for k, (r, _) in ranks.items()
           if T.has(subs[k], r)]
    ops = pd.concat([o for o in ops if len(o)], ignore_index=True) if any(len(o) for o in ops) else pd.DataFrame()
    by = set(ops["ranked_by"]) if len(ops) else {"pgd"}  # (what the figures and table show)
    robust_name = (f"{figures.ROBUST_NAMES[by.pop()]} accuracy" if len(by) == 1 else
                   "robust accuracy (AutoAttack's, or PGD's where a setting's figure says so)")
    dial = T.dial_cost(pts)
    s_trade = Section("tradeoff", "Trade-off: clean against robust accuracy",
                      "Which method gives the best trade-off: each once-for-all model is one line through the "
                      "λ of its grid; dedicated models (one per λ) and single models are points.",
                      notes=notes["tradeoff"])
    s_lambda = Section("lambda", "Accuracy against λ", "What the dial does: accuracy at each λ.")
    s_cost = Section("complexity", "Complexity: robust accuracy against cost",
                     f"At what cost: {robust_name} of each method at its best λ and at "
                     f"the best λ whose clean accuracy is at least "
                     + (f"{_pct(clean_floor)} (the floor set with --clean-floor)." if clean_floor is not None else
                        (f"{_pct(next(iter(floors.values())))}" if len(floors) == 1 else "the setting's floor")
                        + " (default floor: the best clean accuracy of the setting minus 5 points; set it with "
                        "--clean-floor)."), notes=notes["complexity"])
    s_dial = Section("dial", "Cost of the dial",
                     "What one once-for-all model costs against the dedicated models it replaces (one per λ of "
                     "its grid).", notes=notes["dial"])
    for setting in settings:
        sub = subs[setting]
        robust, why = ranks[setting]
        suffix, label = _setting_names(setting, len(settings))
        floor = floors[setting]
        warn = [flag_line(r) for _, r in flagged.iterrows() if _in(r, setting)]
        entries = sub["method"].nunique() + _flagged(sub)  # legend entries (paper sizes; + the white dot's in AA's)
        s_trade.figures.append(Figure(
            f"tradeoff{suffix}", f"Trade-off{label}",
            "Clean accuracy against robust accuracy; left PGD, right AutoAttack. "
            + _attack_caption(sub) + " Circled points, joined by the grey band, form the Pareto front of all "
            "points (no other point is better on both). Numbers: λ, each nearest its own point, where there is room "
            "for them (the tables hold every point). Error bars: std over seeds where there are several."
            + (marks.FLAGGED_CAPTION if _flagged(sub) else "") + (marks.RAND_CAPTION if _rand(sub) else "")
            + (marks.NESTED_CAPTION if marks.nested(sub, [(r, "clean_acc") for r in ("pgd", "aa")]) else ""),
            partial(figures.draw_tradeoff, pts=sub, methods=methods), (11, 5.4), warnings=warn,
            paper=[_paper(f"tradeoff-{r}{suffix}", partial(figures.draw_tradeoff, pts=sub, methods=methods,
                                                           robusts=(r,)), 1, entries + 2 + (r == "aa" and _rand(sub)))
                   for r in ("pgd", "aa") if T.has(sub, r)]))
        s_lambda.figures.append(Figure(
            f"lambda{suffix}", f"Accuracy against λ{label}",
            "Clean and robust accuracy at each λ: once-for-all models as lines, dedicated models as points at "
            "their training λ. " + _attack_caption(sub) + (marks.FLAGGED_CAPTION if _flagged(sub) else "")
            + (marks.RAND_CAPTION if _rand(sub) else "")
            + (marks.NESTED_CAPTION if marks.nested(sub, [("lambda", c) for c in ("clean_acc", "pgd", "aa")]) else ""),
            partial(figures.draw_lambda, pts=sub, methods=methods), (11, 4.6), warnings=warn,
            paper=[_paper(f"lambda{suffix}", partial(figures.draw_lambda, pts=sub, methods=methods),
                          1 + T.has(sub, "pgd") + T.has(sub, "aa"), entries + _rand(sub))]))
        o = ops[T.in_setting(ops, setting)] if len(ops) else ops
        if len(o) and cost_figures.cost_axes(o)[0]:  # something to plot against
            s_cost.figures.append(Figure(
                f"complexity{suffix}", f"Complexity{label}",
                f"{figures.ROBUST_NAMES[robust]} accuracy at each method's best λ (filled) and at the best λ with "
                f"clean accuracy ≥ {_pct(floor)} (hollow; none when the best λ already reaches that floor, or when "
                "no λ does), against parameters, MACs, training wall-clock and training peak memory. For "
                "dedicated models, the one model at that λ." + (f" {why}" if why else "")
                + (marks.FLAGGED_CAPTION if _flagged(o) else "") + _rand_points(o, robust),
                partial(cost_figures.draw_complexity, ops=o, robust=robust, methods=methods, floor=floor),
                cost_figures.complexity_size(o), warnings=[_flag_point(r) for _, r in o[T.flagged(o)].iterrows()],
                paper=[_paper(f"complexity{suffix}", partial(cost_figures.draw_complexity, ops=o, robust=robust,
                                                             methods=methods, floor=floor, notes=False),
                              len(cost_figures.cost_axes(o)[0]), o["method"].nunique() + 3)]))
        d = dial[T.in_setting(dial, setting)] if len(dial) else dial
        if len(d) and (T.has(d, "ofa_params") or T.has(d, "ofa_time")):
            s_dial.figures.append(Figure(
                f"dial{suffix}", f"Cost of the dial{label}",
                "Solid: one once-for-all model covering its whole λ grid. Hatched: one dedicated model per λ of "
                "that grid, from this run's dedicated models (the model trained at that λ where there is one, "
                "else the mean of the adversarially trained ones: \"k timed\" under a method says at how many λ "
                "of its grid a dedicated model was timed). Over each pair: dedicated ÷ one.",
                partial(cost_figures.draw_dial_cost, dial=d, methods=methods), (11, 4.6),
                paper=[_paper(f"dial{suffix}", partial(cost_figures.draw_dial_cost, dial=d, methods=methods,
                                                       notes=False), cost_figures.dial_panels(d), 2)]))
        if len(o) and floor is not None:
            reached = set(o.loc[o["pick"].isin(["floor", "both"]), "method"])
            short = [style.display(m) for m in methods if m in set(o["method"]) and m not in reached]
            if short:
                s_cost.notes.append(f"No λ of {', '.join(short)} reaches clean accuracy {_pct(floor)}{label}: no "
                                    f"hollow marker for {'it' if len(short) == 1 else 'them'}.")
    multi = len(settings) > 1
    if len(ops):
        s_cost.tables.append(operating_table(ops, methods, multi))
    if len(dial):
        s_dial.tables.append(dial_table(dial, methods, multi))
    s_tables = Section("tables", "Results per method and λ",
                       "Mean ± std over seeds where there are several; ★ marks points on the Pareto front.",
                       tables=[point_table(pts, all_flags, methods, multi), model_table(pts, methods, multi)],
                       notes=notes["tables"])
    s_checks = Section("checks", "Sanity checks", "Checks the evaluation ran on its own attacks; a flag marks a "
                       "result to distrust.", tables=check_tables(table, methods, multi), notes=notes["checks"])
    s_config = Section("config", "Run configuration",
                       "How these results were produced (each job's settings, run.json).",
                       tables=[config_table(run)], notes=notes["config"])
    return Report(f"lambench report: {run.name}", _facts(run, pts, floors),
                  [s_trade, s_lambda, s_cost, s_dial, s_tables, s_checks, s_config])


def _paper(name: str, draw, panels: int, entries: int) -> Figure:
    """A paper-sized version of a figure of ``panels`` panels over a legend of about ``entries`` entries: one
    panel fills a column, two or three a row across the page, four a 2 × 2 grid across it."""
    width = style.COLUMN if panels == 1 else style.PAGE
    rows = -(-entries // (1 if width == style.COLUMN else 4))  # (about: the legend takes the columns that fit)
    return Figure(name, "", "", draw, (width, (2.4 if panels == 1 else 2.1) * (1 + (panels > 3)) + 0.35
                                       + 0.16 * rows))


def _aa_fact(pts: pd.DataFrame) -> str:
    """" (AutoAttack: the first 25)" where AutoAttack ran on fewer test images than the rest; per setting
    where that differs between settings."""
    short, common = T.short_aa(pts), T.common_short_aa(pts)
    if not short:
        return ""
    if common is not None:
        return f" (AutoAttack: the first {common:,})"
    return " (AutoAttack: " + "; ".join(f"the first {n:,} in {d} · {a} · ε = {fmt_eps(e)}"
                                        for (d, a, e), n in short.items()) + ")"


def _pct(v) -> str:
    return "—" if v is None else f"{v * 100:.1f}%"


def _flagged(frame: pd.DataFrame) -> bool:
    return bool(T.flagged(frame).any())


def _rand(frame: pd.DataFrame) -> bool:
    return bool(marks.rand(frame).any())


def _rand_points(ops: pd.DataFrame, robust: str) -> str:
    """The complexity caption's sentence naming the points scored by AutoAttack rand (no white dot there: its
    hollow markers are the clean-floor points)."""
    hit = ops[marks.rand(ops)] if robust == "aa" else ops.iloc[:0]
    names = sorted({point_name(r) for _, r in hit.iterrows()})
    return f" AutoAttack rand (a random forward pass) scored {', '.join(names)}." if names else ""


def _flag_point(r) -> str:
    """A flagged operating point, as a warning line under the complexity figure."""
    return f"{point_name(r)}: {r['flags']} flagged (see Sanity checks)"


def _in(row, setting) -> bool:
    return all(row[k] == v for k, v in zip(T.SETTING, setting))


def _setting_names(setting, n: int) -> tuple[str, str]:
    dataset, arch, eps = setting
    if n == 1:
        return "", ""
    return (re.sub(r"[^A-Za-z0-9._-]", "_", f"-{dataset}-{arch}-eps{eps:g}"),
            f" ({dataset}, {arch}, ε = {fmt_eps(eps)})")


def _attack_caption(pts: pd.DataFrame) -> str:
    parts = []
    for short, name in (("pgd", "PGD"), ("aa", "AutoAttack")):
        if not T.has(pts, short):
            continue
        used = pts[f"{short}_attack"].dropna().value_counts()
        tried = sorted({a for s in pts[f"{short}_attacks"].dropna() for a in s.split(", ")})
        n = T.images(pts, short)
        on = f" on {_images(pts, short)}" if n is not None else ""
        which = ", ".join(f"{a} at {k} point{'s' if k > 1 else ''}" for a, k in used.items())
        if len(tried) == 1:
            parts.append(f"{name}: {tried[0]}{on}.")
        elif pts[f"{short}_attacks"].dropna().str.contains(", ").any():  # several run at some point
            differ = "; a/b: the seeds' strongest differ" if any("/" in a for a in used.index) else ""
            parts.append(f"{name}{on}: the strongest (lowest accuracy) of {', '.join(tried)} for each seed at "
                         f"each point ({which}{differ}).")
        else:  # one at each point, not the same everywhere (AutoAttack's rand version for a random forward)
            parts.append(f"{name}{on}: {which}.")
    return " ".join(parts)


def _images(pts: pd.DataFrame, short: str) -> str:
    """"the first 25 test images" where fewer than another accuracy's (clean, PGD), else "359 test images"."""
    n, most = T.images(pts, short), max(filter(None, (T.images(pts, s) for s in ("clean", "pgd", "aa"))), default=0)
    return f"the first {n:,} test images" if n < most else f"{n:,} test images"


def _facts(run: Run, pts: pd.DataFrame, floors: dict) -> list[tuple[str, str]]:
    t = run.table
    settings = sorted({f"{d} · {a} · ε = {fmt_eps(e)}" for d, a, e in pts[T.SETTING].itertuples(index=False)})
    device = "; ".join(sorted(set(t["device"]) - {""})) or run.info.get("device") or "—"  # the rows' own
    n_eval = sorted({int(n) for n in t.loc[t["metric"] == "clean_acc", "n"].dropna()})
    return [("run", run.name), ("setting", "; ".join(settings)),
            ("methods", ", ".join(style.display(m) for m in style.method_order(t["method"]))),
            ("seeds", ", ".join(map(str, sorted(set(t["seed"]))))), ("device", device),
            ("evaluated on", (", ".join(map(str, n_eval)) or "—") + " test images" + _aa_fact(pts)),
            ("clean-accuracy floor", _pct(next(iter(floors.values()))) if len(set(floors.values())) == 1 else
             "; ".join(f"{_pct(f)} ({d} · {a} · ε = {fmt_eps(e)})" for (d, a, e), f in floors.items()))]
