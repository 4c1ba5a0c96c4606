"""The report's tables as rows of formatted strings (the HTML template and the PDF pages print them as is).

Columns whose metric is absent from the whole run are left out; the section notes say which are missing.
"""
from __future__ import annotations

import json

import pandas as pd

from . import fmt, style, tables as T
from .document import Table
from .notes import describe


def _sorted(frame: pd.DataFrame, methods: list[str], extra=("train_lambda", "lambda")) -> pd.DataFrame:
    rank = {m: i for i, m in enumerate(methods)}
    cols = [c for c in T.SETTING if c in frame] + ["_rank"] + [c for c in extra if c in frame]
    return frame.assign(_rank=frame["method"].map(rank)).sort_values(cols)


def _setting_cells(r, multi: bool) -> list[str]:
    return [r["dataset"], r["arch"], fmt.eps(r["job_eps"])] if multi else []


SETTING_COLS = ["dataset", "arch", "ε"]


def _true(v) -> bool:
    return v is not None and pd.notna(v) and bool(v)


def _model(r) -> str:
    return style.display(r["method"]) + ("" if r["train_lambda"] < 0 else f" (trained at λ={r['train_lambda']:g})")


def point_table(pts: pd.DataFrame, flags: pd.DataFrame, methods: list[str], multi: bool):
    """Per method x λ: clean, PGD, AA, complexity, Pareto membership and flagged checks (``pts["flags"]``, from
    ``tables.mark_flags``; ``flags``: every check's row from ``tables.flags``: without any, the flags column is
    left out)."""
    cols = [("clean", lambda r: fmt.acc(r["clean_acc"], r.get("clean_acc_sd")), "clean_acc")]
    short_aa, common = T.short_aa(pts), T.common_short_aa(pts)  # AutoAttack on fewer images (--aa-n): say so
    for short, name in (("pgd", "PGD"), ("aa", "AA")):
        label = f"AA (first {common:,})" if short == "aa" and common is not None else name
        cols.append((label, lambda r, s=short: fmt.acc(r.get(s), r.get(f"{s}_sd")), short))
        if T.has(pts, short) and pts[f"{short}_attack"].nunique() > 1:
            cols.append((f"{name} attack", lambda r, s=short: r.get(f"{s}_attack") or fmt.DASH, short))
    cols.append(("noise σ", lambda r: fmt.acc(r.get("clean_acc_std")), "clean_acc_std"))
    cols += [("non-zero params", lambda r: fmt.count(r.get("nonzero_params")), "nonzero_params"),
             ("MACs", lambda r: fmt.count(r.get("macs")), "macs"),
             ("latency (ms)", lambda r: fmt.number(r.get("infer_latency_ms")), "infer_latency_ms")]
    cols = [c for c in cols if T.has(pts, c[2])]
    fronts = [s for s in ("pgd", "aa") if f"{s}_front" in pts]
    rows, marked = [], []
    for _, r in _sorted(pts, methods).iterrows():
        front = ", ".join(n.upper() for n in fronts if _true(r.get(f"{n}_front")))
        front = front.replace("PGD, AA", "both")
        checks = r.get("flags") or ""
        rows.append(_setting_cells(r, multi) + [_model(r), fmt.lam(r["lambda"]), str(int(r["seeds"]))]
                    + [f(r) for _, f, _ in cols] + [f"★ {front}" if front else ""]
                    + [f"⚠ {checks}" if checks else ""])
        marked.append(bool(checks))
    header = (SETTING_COLS if multi else []) + ["method", "λ", "seeds"] + [c[0] for c in cols] + ["front", "flags"]
    if flags.empty:
        header, rows = header[:-1], [r[:-1] for r in rows]
    explain = {"noise σ": "noise σ: std of clean accuracy over noise draws (models with a random forward pass).",
               "PGD attack": "PGD attack: the strongest of the PGD attacks run, at that point.",
               "AA attack": "AA attack: the strongest AutoAttack version run, at that point.",
               "flags": "flags: sanity checks flagged at that point (see Sanity checks)."}
    caption = " ".join(["Accuracies in %, mean ± std over seeds.", "front: on the Pareto front under PGD, AA or both."]
                       + [text for col, text in explain.items() if col in header]
                       + ([f"AA on the first {n:,} test images in {d} · {a} · ε = {fmt.eps(e)}." for (d, a, e), n
                           in short_aa.items()] if common is None else []))
    return Table("per-lambda", "Per method and λ", header, rows, caption, marked)


def model_table(pts: pd.DataFrame, methods: list[str], multi: bool):
    """Per model: parameters and training cost (mean over seeds)."""
    m = _sorted(T.models(pts), methods, extra=("train_lambda",))
    cols = [("λ points", lambda r: str(int(r["lambdas"])), "lambdas"), ("seeds", lambda r: str(int(r["seeds"])), "seeds"),
            ("params", lambda r: fmt.count(r.get("params")), "params"),
            ("stored params", lambda r: fmt.count(r.get("stored_params")), "stored_params"),
            ("epochs", lambda r: fmt.number(r.get("epochs_trained")), "epochs_trained"),
            ("train time", lambda r: fmt.seconds(r.get("train_time_s")), "train_time_s"),
            ("images/s", lambda r: fmt.number(r.get("train_images_per_s"), 4), "train_images_per_s"),
            ("peak memory", lambda r: fmt.megabytes(r.get("train_peak_mem_mb")), "train_peak_mem_mb"),
            ("eval time", lambda r: fmt.seconds(r.get("eval_time_s")), "eval_time_s")]
    cols = [c for c in cols if T.has(m, c[2])]
    rows = [_setting_cells(r, multi) + [_model(r)] + [f(r) for _, f, _ in cols] for _, r in m.iterrows()]
    return Table("models", "Training cost per model", (SETTING_COLS if multi else []) + ["model"] + [c[0] for c in cols],
                  rows, "One row per trained model (a once-for-all model covers all its λ); mean over seeds.")


def operating_table(ops: pd.DataFrame, methods: list[str], multi: bool):
    """The complexity figures' points; each setting's ranked by its own robust accuracy (``ranked_by``)."""
    names = {"aa": "AA", "pgd": "PGD"}
    by = set(ops["ranked_by"])
    name = names[next(iter(by))] if len(by) == 1 else "robust"
    size = "nonzero_params" if T.has(ops, "nonzero_params") else "params"

    def robust(r) -> str:
        acc = fmt.acc(r[r["ranked_by"]], r.get(f"{r['ranked_by']}_sd"))
        return acc if len(by) == 1 else f"{acc} ({names[r['ranked_by']]})"
    cols = [("clean", lambda r: fmt.acc(r["clean_acc"], r.get("clean_acc_sd")), "clean_acc"),
            (name, robust, "ranked_by"),
            ("non-zero params" if size == "nonzero_params" else "params", lambda r: fmt.count(r.get(size)), size),
            ("MACs", lambda r: fmt.count(r.get("macs")), "macs"),
            ("train time", lambda r: fmt.seconds(r.get("train_time_s")), "train_time_s"),
            ("peak memory", lambda r: fmt.megabytes(r.get("train_peak_mem_mb")), "train_peak_mem_mb")]
    cols = [c for c in cols if T.has(ops, c[2])]
    any_flag = T.flagged(ops).any()
    if any_flag:
        cols.append(("flags", lambda r: f"⚠ {r['flags']}" if r["flags"] else "", "flags"))

    def pick(r) -> str:
        floor = f"clean ≥ {fmt.acc(r['floor'])}%"
        top = f"highest {names[r['ranked_by']]}"
        return {"best": top, "floor": floor, "both": f"{top}, and {floor}"}[r["pick"]]
    shown = _sorted(ops, methods, extra=("pick",))
    rows = [_setting_cells(r, multi) + [style.display(r["method"]), pick(r), fmt.lam(r["lambda"])]
            + [f(r) for _, f, _ in cols] for _, r in shown.iterrows()]
    return Table("operating", "Operating points", (SETTING_COLS if multi else []) + ["method", "chosen by", "λ"]
                 + [c[0] for c in cols], rows, "The points plotted in the complexity figure."
                 + (" flags: sanity checks flagged at that point; do not trust its robust accuracy." if any_flag
                    else ""), T.flagged(shown).tolist())


def dial_table(dial: pd.DataFrame, methods: list[str], multi: bool):
    rows = []
    for _, r in _sorted(dial, methods, extra=()).iterrows():
        measured = f"{int(r['ded_measured'])} of {int(r['lambdas'])}" if r["ded_models"] else "none"
        if r["ded_models"] and r.get("ded_choices", 1) > 1:  # several to choose from: say whose
            measured += f" ({style.display(r['ded_method'])})"
        rows.append(_setting_cells(r, multi) + [style.display(r["method"]), str(int(r["lambdas"])),
                    fmt.count(r["ofa_params"]), fmt.count(r["ded_params"]), fmt.ratio(r["ofa_params"], r["ded_params"]),
                    fmt.seconds(r["ofa_time"]), fmt.seconds(r["ded_time"]), fmt.ratio(r["ofa_time"], r["ded_time"]),
                    measured])
    header = (SETTING_COLS if multi else []) + ["method", "grid λ", "params stored", "dedicated params",
                                                "params: dedicated ÷ one", "train time", "dedicated time",
                                                "time: dedicated ÷ one",
                                                "dedicated λ measured"]
    if not T.has(dial, "ofa_params"):  # no parameter counts in the run: leave their columns out
        cut = len(header) - 7
        header = header[:cut] + header[cut + 3:]
        rows = [r[:cut] + r[cut + 3:] for r in rows]
    return Table("dial", "Cost of the dial", header, rows,
                 "params stored: stored_params (else params) of the one model; dedicated: one model per λ of "
                 "the method's own grid (grid λ; --lambdas does not change their number); params, time: dedicated ÷ one: how "
                 "many times the one model's cost the dedicated models take; dedicated λ measured: how many of "
                 "the λ this run scored have a dedicated model in it, timed as measured (the rest of the grid "
                 "is costed as the mean adversarially trained one; no time where there is none). Where the run "
                 "has dedicated models of several methods or machines, one method's are used and named: those trained like the "
                 "once-for-all model (device and precision) where there are such, else the method with the most "
                 "models.")


def check_tables(table: pd.DataFrame, methods: list[str], multi: bool = False) -> list:
    out = []
    flags = T.flags(table)
    if len(flags):
        hit = _sorted(flags[flags["flagged"]], methods, extra=("train_lambda", "lambda", "check"))
        rows = [_setting_cells(r, multi) + [_model(r), fmt.lam(r["lambda"]) if r["lambda"] >= 0 else "all",
                                             r["check"], r["attack"] or fmt.DASH, f"⚠ flagged (seed {r['seeds']})",
                                             describe(r["check"])] for _, r in hit.iterrows()]
        for check, g in flags.groupby("check"):  # the checks that passed, one summary row each
            ok = int((~g["flagged"]).sum())
            if ok:
                rows.append([""] * (3 * multi) + ["models checked", fmt.DASH, check,
                            ", ".join(sorted(set(g["attack"]) - {""})) or fmt.DASH,
                            f"passed at {ok} of {len(g)} points", describe(check)])
        out.append(Table("flags", "Sanity-check flags", (SETTING_COLS if multi else [])
                         + ["model", "λ", "check", "attack", "result", "what it checks"],
                         rows, f"{int(flags['flagged'].sum())} of {len(flags)} checks flagged; flagged points one "
                         "per row, passed checks counted.", [True] * len(hit) + [False] * (len(rows) - len(hit))))
    acc = T.checks(table)
    if len(acc):
        rows = [_setting_cells(r, multi) + [_model(r), fmt.lam(r["lambda"]), r["attack"], fmt.eps(r["eps"], r["job_eps"]),
                                             fmt.acc(r["mean"], r["std"])]
                for _, r in _sorted(acc, methods, extra=("train_lambda", "lambda", "attack")).iterrows()]
        out.append(Table("check-acc", "Extra attacks run for the checks", (SETTING_COLS if multi else [])
                         + ["model", "λ", "attack", "ε", "accuracy (%)"],
                          rows, "check_acc rows: attacks run only for the sanity checks, not plotted."))
    return out


def config_table(run) -> Table:
    info = run.info
    rows = [["command", info.get("command") or fmt.DASH], ["device", info.get("device") or fmt.DASH]]
    rows += [[f"version: {k}", str(v) or fmt.DASH] for k, v in sorted((info.get("versions") or {}).items())]
    t = run.table
    for col in ("torch", "precision", "device"):
        values = sorted(set(t[col]) - {""})
        if values:
            rows.append([f"results rows: {col}", ", ".join(values)])
    jobs = run.jobs
    rows += _job_settings(jobs, t)
    # run.json's training and evaluation settings are the last command's before each method's own defaults:
    # where the jobs' own files are there, those stand instead
    own = {"train", "eval"} if jobs else set()
    rows += [[f"config: {k}", v] for k, v in _flatten({k: v for k, v in (info.get("config") or {}).items()
                                                       if k not in own})]
    caption = ("Training and evaluation settings from each job's config.json and eval.json (per method where "
               "methods differ); the rest from run.json (the last invocation).") if jobs else \
        "From run.json (the last invocation)."
    return Table("config", "Configuration", ["setting", "value"], rows, caption)


def _job_settings(jobs: dict, table: pd.DataFrame) -> list:
    """One row per training / evaluation setting: its value where every job agrees, else the value of each
    method (several values within a method: all of them, so a mixed run shows as one)."""
    method_of = table.drop_duplicates("job").set_index("job")["method"].to_dict()
    values: dict[str, dict[str, set]] = {}
    for job, parts in jobs.items():
        for part, settings in parts.items():
            for key, value in _flatten(settings, f"{part}."):
                values.setdefault(key, {}).setdefault(method_of.get(job, job), set()).add(value)
    rows = []
    for key in sorted(values):
        per = values[key]
        every = set().union(*per.values())
        value = next(iter(every)) if len(every) == 1 else "; ".join(
            f"{m}: {' | '.join(sorted(v))}" for m, v in sorted(per.items()))
        rows.append([key, value])
    return rows


def _flatten(obj, prefix=""):
    for k, v in sorted(obj.items()):
        if isinstance(v, dict) and v:
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v if isinstance(v, str) else json.dumps(v)
