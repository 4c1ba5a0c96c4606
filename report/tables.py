"""The numbers behind the report, computed with pandas from the tidy results table.

A *point* is one (setting, method, training lambda, lambda): mean and std over seeds of every metric at that
lambda, joined with its model's per-job metrics (training time, parameters). A *setting* is one dataset x
architecture x eps; figures and comparisons never mix settings. Dedicated models (``train_lambda`` set,
PGD-AT's one model per lambda) are separate models; a once-for-all model covers its whole lambda grid.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

NONE = -1.0  # stands for "no value" in key columns (pandas drops NaN keys in group-bys and pivots)
SETTING = ["dataset", "arch", "job_eps"]
MODEL = SETTING + ["method", "train_lambda"]
POINT = MODEL + ["lambda"]
#: robust accuracies: short name -> metric; several attacks per point -> the strongest (lowest) is reported
ROBUST = {"pgd": "pgd_acc", "aa": "aa_acc"}
POINT_METRICS = ("clean_acc", "clean_acc_std", "nonzero_params", "macs", "infer_latency_ms", "infer_throughput",
                 "infer_peak_mem_mb")
JOB_METRICS = ("params", "stored_params", "grid_lambdas", "train_time_s", "train_epoch_time_s", "train_images_per_s",
               "train_peak_mem_mb", "epochs_trained", "eval_time_s")


def keyed(table: pd.DataFrame) -> pd.DataFrame:
    """The table with NaN key columns replaced by NONE, so group-bys keep them."""
    table = table.copy()
    table["train_lambda"] = table["train_lambda"].fillna(NONE)
    return table


def kinds(table: pd.DataFrame) -> dict[str, str]:
    """Per method: "dedicated" (one model per lambda), "ofa" (one model, several lambdas) or "single"."""
    out = {}
    for method, rows in table.groupby("method"):
        lam = rows[rows["lambda"].notna()]
        if rows["train_lambda"].notna().any():
            out[method] = "dedicated"
        elif not lam.empty and lam.groupby("job")["lambda"].nunique().max() > 1:
            out[method] = "ofa"
        else:
            out[method] = "single"
    return out


def _agg(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean and std over seeds of ``value``, per metric: columns ``<metric>`` and ``<metric>_sd``."""
    if rows.empty:
        return pd.DataFrame(columns=keys)
    g = rows.groupby(keys + ["metric"])["value"].agg(["mean", "std"]).reset_index()
    wide = g.pivot(index=keys, columns="metric", values=["mean", "std"])
    wide.columns = [m if stat == "mean" else f"{m}_sd" for stat, m in wide.columns]
    return wide.reset_index()


def points(table: pd.DataFrame) -> pd.DataFrame:
    """One row per point: clean, pgd, aa (each seed's strongest attack, averaged over seeds; which attacks
    those were in ``<short>_attack``, every attack run in ``<short>_attacks``), complexity, the model's per-job
    metrics, ``seeds`` (how many seeds the point averages) and ``kind``. NaN values are left out."""
    t = keyed(table)
    per = t[t["lambda"].notna() & t["value"].notna()]  # NaN: nothing evaluated (notes.missing says where)
    if per.empty:
        return pd.DataFrame(columns=POINT + ["seeds", "kind"])
    pts = per.groupby(POINT)["seed"].nunique().rename("seeds").reset_index()
    pts = pts.merge(_agg(per[per["metric"].isin(POINT_METRICS)], POINT), on=POINT, how="left")
    for short, metric in ROBUST.items():
        acc = per[per["metric"] == metric]
        if acc.empty:
            continue
        # each model's (seed's) strongest attack, then mean and std over seeds: the worst case per model,
        # never a seed's weaker attack standing in for it
        worst = acc.loc[acc.groupby(POINT + ["seed"])["value"].idxmin()]
        g = worst.groupby(POINT).agg(**{short: ("value", "mean"), f"{short}_sd": ("value", "std"),
                                        f"{short}_attack": ("attack", _by_count),
                                        f"{short}_n": ("n", "min")}).reset_index()
        tried = acc.groupby(POINT)["attack"].agg(lambda a: ", ".join(sorted(set(a)))).rename(f"{short}_attacks")
        pts = pts.merge(g, on=POINT, how="left").merge(tried.reset_index(), on=POINT, how="left")
    if "clean_acc" not in pts:  # every clean value NaN: the point stays, without one
        pts["clean_acc"] = np.nan
    clean_n = per[per["metric"] == "clean_acc"].groupby(POINT)["n"].min().rename("clean_n")
    pts = pts.merge(clean_n.reset_index(), on=POINT, how="left")
    jobs = _agg(t[t["lambda"].isna() & t["metric"].isin(JOB_METRICS)], MODEL)
    if not jobs.empty:
        pts = pts.merge(jobs, on=MODEL, how="left")
    kind = kinds(table)
    pts["kind"] = pts["method"].map(kind)
    if "trained_on" in t.columns:  # where each model was trained (report.load); its seeds alike
        pts = pts.merge(t.groupby(MODEL)["trained_on"].agg(lambda s: s.mode().iloc[0]).reset_index(), on=MODEL,
                        how="left")
    return pts


def _by_count(names: pd.Series) -> str:
    """The attacks that were strongest, most often first ("pgd20/pgd50x10" when seeds differ)."""
    counts = names.value_counts()
    return "/".join(sorted(counts.index, key=lambda a: (-counts[a], a)))


def has(frame: pd.DataFrame, column: str) -> bool:
    """Whether ``column`` exists and holds at least one number."""
    return column in frame.columns and frame[column].notna().any()


def pareto(frame: pd.DataFrame, x: str, y: str) -> pd.Series:
    """True for points no other point beats on both ``x`` and ``y`` (higher is better on both)."""
    xs, ys = frame[x].to_numpy(float), frame[y].to_numpy(float)
    front = []
    for i in range(len(frame)):
        if np.isnan(xs[i]) or np.isnan(ys[i]):
            front.append(False)
            continue
        dominated = (xs >= xs[i]) & (ys >= ys[i]) & ((xs > xs[i]) | (ys > ys[i]))
        front.append(not dominated.any())
    return pd.Series(front, index=frame.index)


def mark_fronts(pts: pd.DataFrame) -> None:
    """Add ``<robust>_front`` columns: whether a point is on its setting's Pareto front (clean vs robust)."""
    for short in ROBUST:
        if has(pts, short):
            pts[f"{short}_front"] = False
            for _, g in pts.groupby(SETTING):
                ok = g.dropna(subset=[short, "clean_acc"])
                pts.loc[ok.index, f"{short}_front"] = pareto(ok, short, "clean_acc")


#: AutoAttack on fewer test images than this (and than PGD) is too coarse to rank the operating points by
#: (25 images: 4-point steps, ±15 points at 95%); RobustBench scores on 1,000
RANK_AA_N = 1000


def images(pts: pd.DataFrame, short: str) -> int | None:
    """The fewest test images ``short``'s accuracies (``clean``, ``pgd``, ``aa``) were measured on in ``pts``
    (one setting's points, where it matters); None: not measured."""
    col = f"{short}_n"
    return int(pts[col].min()) if col in pts and pts[col].notna().any() else None


def in_setting(frame: pd.DataFrame, key) -> pd.Series:
    """Which rows of ``frame`` belong to the setting ``key`` (a ``SETTING`` tuple: dataset, arch, eps)."""
    return (frame[SETTING] == pd.Series(dict(zip(SETTING, key)))).all(axis=1)


def short_aa(pts: pd.DataFrame) -> dict[tuple, int]:
    """Per setting where AutoAttack ran on fewer test images than the clean accuracy (``--aa-n``): how many."""
    out = {}
    for key, g in pts.groupby(SETTING):
        aa, most = images(g, "aa"), max(filter(None, (images(g, s) for s in ("clean", "pgd"))), default=0)
        if aa is not None and aa < most:
            out[tuple(key)] = aa
    return out


def common_short_aa(pts: pd.DataFrame) -> int | None:
    """The one number of test images AutoAttack ran on in every setting, where it is fewer than the rest's
    everywhere (``short_aa``); None where no setting's is, or the settings differ."""
    short = short_aa(pts)
    same = len(set(short.values())) == 1 and len(short) == pts.groupby(SETTING).ngroups
    return next(iter(short.values())) if same else None


def ranking(pts: pd.DataFrame) -> tuple[str, str]:
    """The robust accuracy one setting's operating points (``pts``) are ranked by: AutoAttack's where it ran on
    enough test images (``RANK_AA_N``, or as many as PGD's), else PGD's; and a sentence saying why, when PGD's
    stands in."""
    if not has(pts, "aa"):
        return "pgd", ""
    aa, pgd = images(pts, "aa"), images(pts, "pgd")
    if has(pts, "pgd") and aa is not None and pgd is not None and aa < min(pgd, RANK_AA_N):
        return "pgd", (f"Ranked by PGD accuracy: AutoAttack ran on only {aa} test images (PGD on {pgd}), too few "
                       f"to rank by (raise --aa-n, e.g. to {RANK_AA_N}).")
    return "aa", ""


def operating_points(pts: pd.DataFrame, robust: str, floors: dict) -> pd.DataFrame:
    """Per setting and method: the point with the highest ``robust`` accuracy (``pick`` = "best") and the one
    with the highest ``robust`` accuracy among those with clean accuracy >= the setting's floor (``floors``,
    from ``floors``; ``pick`` = "floor"); one row with ``pick`` = "both" when they are the same point. Each row
    carries its setting's ``floor``."""
    rows = []
    for key, g in pts.dropna(subset=[robust, "clean_acc"]).groupby(SETTING + ["method"]):
        floor = floors.get(tuple(key[:len(SETTING)]))
        order = g.sort_values([robust, "clean_acc"], ascending=False)
        ok = order[order["clean_acc"] >= floor] if floor is not None else order.iloc[:0]
        same = not ok.empty and ok.index[0] == order.index[0]
        rows.append(order.iloc[0].to_dict() | {"pick": "both" if same else "best", "floor": floor})
        if not ok.empty and not same:
            rows.append(ok.iloc[0].to_dict() | {"pick": "floor", "floor": floor})
    return pd.DataFrame(rows)


def floors(pts: pd.DataFrame, given: float | None = None) -> dict[tuple, float | None]:
    """Per setting (a ``SETTING`` tuple): the clean-accuracy floor, ``given`` where set, else the setting's
    best clean accuracy minus 5 points (a setting's own: one dataset's accuracies say nothing of another's)."""
    out = {}
    for key, g in pts.groupby(SETTING):
        best = g["clean_acc"].max() if "clean_acc" in g else np.nan
        out[tuple(key)] = given if given is not None else (None if pd.isna(best) else round(float(best) - 0.05, 4))
    return out


def flagged(frame: pd.DataFrame) -> pd.Series:
    """Per row of ``frame`` (points, operating points): whether a sanity check flagged it (``mark_flags``)."""
    if "flags" not in frame:
        return pd.Series(False, index=frame.index)
    return frame["flags"].fillna("") != ""


def mark_flags(pts: pd.DataFrame, flags: pd.DataFrame) -> None:
    """Add ``flags``: the sanity checks flagged at each point (at its own λ, or at all λ of its model: a
    check without a λ), comma-separated, "" where none. ``flags`` is ``flags(table)``."""
    hit: dict[tuple, set] = {}
    for _, f in flags[flags["flagged"]].iterrows():
        hit.setdefault(tuple(f[c] for c in MODEL) + (f["lambda"],), set()).add(f["check"])
    pts["flags"] = [", ".join(sorted(hit.get(tuple(r[c] for c in MODEL) + (r["lambda"],), set())
                                     | hit.get(tuple(r[c] for c in MODEL) + (NONE,), set())))
                    for _, r in pts.iterrows()]


def dial_cost(pts: pd.DataFrame) -> pd.DataFrame:
    """Per once-for-all model: what it stores and costs to train versus one dedicated model per lambda of its
    grid (``grid_lambdas``: the method's own grid, whatever lambdas the run scored; where a run did not record
    it, the lambdas scored). Dedicated costs are the run's dedicated models' measurements: the models trained
    at lambdas the run scored, and for the rest of the grid the mean of the adversarially trained (lambda > 0)
    ones; no training time where the rest would have to be estimated and none was trained adversarially."""
    rows = []
    ofa = pts[pts["kind"] == "ofa"]
    for key, g in ofa.groupby(SETTING + ["method"]):
        setting = dict(zip(SETTING + ["method"], key))
        same = in_setting(pts, key[:3])
        scored = sorted(g["lambda"].unique())
        one = g.iloc[0]
        n = int(one["grid_lambdas"]) if pd.notna(one.get("grid_lambdas", np.nan)) else len(scored)
        choices = pts[same & (pts["kind"] == "dedicated")]
        ded = _dedicated(choices, one.get("trained_on"))
        row = setting | {"lambdas": n,
                         "ofa_params": _first(one, "stored_params", "params"),
                         "ofa_time": one.get("train_time_s", np.nan),
                         "ded_models": len(ded), "ded_params": np.nan, "ded_time": np.nan, "ded_measured": 0,
                         "ded_method": ded["method"].iloc[0] if len(ded) else "",
                         "ded_choices": choices["method"].nunique()}
        if not ded.empty:
            if has(ded, "params"):
                row["ded_params"] = n * float(ded["params"].mean())
            if has(ded, "train_time_s"):
                by_lam = ded.groupby("train_lambda")["train_time_s"].mean().dropna()
                adv = by_lam[by_lam.index > 0].mean()  # NaN when no adversarially trained one was timed
                measured = [lam for lam in scored if lam in by_lam.index][:n]
                rest = n - len(measured)
                row["ded_measured"] = len(measured)
                # the rest of the grid is never estimated from a standard-trained (λ = 0) model: far cheaper
                if not (rest and np.isnan(adv)):
                    row["ded_time"] = float(sum(by_lam[lam] for lam in measured) + (rest * adv if rest else 0.0))
        rows.append(row)
    return pd.DataFrame(rows)


def _dedicated(choices: pd.DataFrame, trained_on) -> pd.DataFrame:
    """The dedicated models a once-for-all model is costed against: one method's (two methods', or one
    method's on two machines, are never summed together): one trained like it (``trained_on``: device and
    precision; a part not recorded matches any) where there is one, else the one with the most models."""
    if choices.empty:
        return choices

    def alike(a, b) -> bool:
        parts = [str(x).split(" | ") for x in (a, b)]
        return all(not x or not y or x == y for x, y in zip(*parts))
    methods = sorted(choices["method"].unique(), key=lambda m: (-(choices["method"] == m).sum(), m))
    if "trained_on" in choices.columns and isinstance(trained_on, str):
        methods = [m for m in methods if all(alike(t, trained_on) for t in
                                             choices.loc[choices["method"] == m, "trained_on"])] or methods
    return choices[choices["method"] == methods[0]]


def _first(row, *names):
    for n in names:
        if n in row and pd.notna(row[n]):
            return float(row[n])
    return np.nan


def models(pts: pd.DataFrame) -> pd.DataFrame:
    """One row per model (a once-for-all model, or one dedicated model): its per-job metrics and lambdas."""
    if pts.empty:
        return pts
    cols = [c for c in pts.columns if c.removesuffix("_sd") in JOB_METRICS]
    g = pts.groupby(MODEL)
    out = g[cols].first() if cols else g.size().to_frame("n")[[]]
    out["lambdas"] = g["lambda"].nunique()
    out["seeds"] = g["seeds"].max()
    out["kind"] = g["kind"].first()
    return out.reset_index()


def flags(table: pd.DataFrame) -> pd.DataFrame:
    """Sanity-check rows (``flag:<check>``): one row per point, check and attack; ``flagged`` when any seed's
    value is 1, ``seeds`` lists the flagged seeds."""
    rows = keyed(table)
    rows = rows[rows["metric"].str.startswith("flag:")]
    cols = POINT + ["check", "attack", "flagged", "seeds"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    rows = rows.assign(check=rows["metric"].str.slice(5), hit=rows["value"] >= 0.5)
    rows["lambda"] = rows["lambda"].fillna(NONE)
    g = rows.groupby(POINT + ["check", "attack"])
    out = g["hit"].any().rename("flagged").to_frame()
    out["seeds"] = g.apply(lambda r: ", ".join(str(s) for s in sorted(r.loc[r["hit"], "seed"])), include_groups=False)
    return out.reset_index()[cols]


def checks(table: pd.DataFrame) -> pd.DataFrame:
    """The sanity checks' extra attacks (``check_acc``): mean and std over seeds per point and attack."""
    rows = keyed(table)
    rows = rows[rows["metric"] == "check_acc"]
    if rows.empty:
        return pd.DataFrame(columns=POINT + ["attack", "eps", "mean", "std"])
    g = rows.groupby(POINT + ["attack", "eps"], dropna=False)["value"].agg(["mean", "std"])
    return g.reset_index()
