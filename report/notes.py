"""What a run's table lacks, said in words the report shows, and what each sanity check means.

Every note names what is missing and what produces it, so a reader knows whether an empty panel is a
limitation of the run or of the methods.
"""
from __future__ import annotations

import json

import pandas as pd

from . import style
from .load import legacy_cpu, machine
from .tables import has

#: the sanity checks the evaluation writes as ``flag:<check>`` rows; a flag (value 1) means suspicious
CHECKS = {
    "aa_le_pgd": "AutoAttack accuracy should not exceed PGD accuracy",
    "pgd_le_clean": "robust accuracy should not exceed clean accuracy",
    "eps2_le_eps": "accuracy at 2ε should not exceed accuracy at ε",
    "unbounded_near_zero": "accuracy under an unbounded attack (ε = 1) should be near zero",
    "pgd100_vs_pgd20": "PGD-100 should not be clearly stronger than PGD-20 (attack not converged)",
    "eot_vs_plain": "PGD with EOT should not be clearly stronger than plain PGD (randomness masks gradients)",
    "autoattack": "the AutoAttack package's own warnings",
}


def describe(check: str) -> str:
    return CHECKS.get(check, "")


def missing(table: pd.DataFrame, pts: pd.DataFrame, info: dict) -> dict[str, list[str]]:
    """Notes per report section ("tradeoff", "complexity", "dial", "checks", "config") on what is missing."""
    notes: dict[str, list[str]] = {k: [] for k in ("tradeoff", "complexity", "dial", "tables", "checks", "config")}
    methods = sorted(set(table["method"]))
    kinds = pts.drop_duplicates("method").set_index("method")["kind"] if len(pts) else pd.Series(dtype=str)
    machines: dict[str, list[str]] = {}  # per method (OATS's widths as one), the machines it is split by
    for m in methods:
        head, at, label = m.partition(" @ ")
        if at:
            base = head.rpartition("-")[0] if head.rpartition("-")[0] in style.KNOWN_ORDER else head
            where = machines.setdefault(style.display(base), [])
            where += [label] if label not in where else []
    for name, where in machines.items():
        if len({machine(w) for w in where}) == 1:  # one machine, trained by 1 and by N processes
            notes["tradeoff"].append(f"{name} was trained by different numbers of processes ({'; '.join(where)}): "
                                     f"each one's jobs are shown as a method of their own, so no figure or table "
                                     f"averages or sums their costs.")
            continue
        notes["tradeoff"].append(f"{name} ran on different machines ({'; '.join(where)}): each machine's jobs "
                                 f"are shown as a method of their own, so no figure or table averages or sums "
                                 f"numbers from two machines (results.csv keeps each row's device, torch and "
                                 f"precision).")
    if not has(pts, "pgd"):
        notes["tradeoff"].append("No PGD results (pgd_acc rows): the evaluation ran no attack; run with "
                                 "--eval pgd20.")
    if not has(pts, "aa"):
        notes["tradeoff"].append("No AutoAttack results (aa_acc rows): run with --aa standard. The AutoAttack "
                                 "panel says so and the AA columns are left out.")
    heads = sorted({m.partition(" @ ")[0] for m in methods})  # a method split by machine is still one
    if len(heads) == 1:
        notes["tradeoff"].append(f"Only one method ({heads[0]}) in this run: nothing to compare it with; add "
                                 f"methods with --methods, e.g. pgd_at,fast_at,oat,float.")
    if len(pts) and pts["lambda"].nunique() == 1:
        notes["tradeoff"].append(f"Every model was evaluated at one λ ({pts['lambda'].iloc[0]:g}) only: no "
                                 f"trade-off curve. Once-for-all methods (oat, float) sweep λ; pgd_at trains "
                                 f"one model per λ with --train-lambdas 0,0.1,0.2,0.3,0.4,1.")
    absent = [name for col, name in (("nonzero_params", "non-zero parameters"), ("macs", "MACs"),
                                     ("infer_latency_ms", "inference latency")) if not has(pts, col)]
    if absent:
        notes["complexity"].append(f"Not measured in this run: {', '.join(absent)} (nonzero_params, macs, "
                                   f"infer_* rows come from the complexity measurement, absent from this run).")
    if not has(pts, "train_time_s"):
        notes["complexity"].append("No training times (train_time_s rows, written per job by python "
                                   "run_all.py): training cost is not compared.")
    timed = table[table["metric"].isin(("train_time_s", "infer_latency_ms")) & (table["device"] != "")]
    # the hardware: training on 2 processes of one machine is that machine's; an older run's "cpu" this CPU
    timed = timed.assign(device=legacy_cpu(timed["device"]).map(machine))
    if timed["device"].nunique() > 1:
        where = timed.groupby("device")["method"].agg(lambda m: ", ".join(style.display(x) for x in
                                                                         style.method_order(m)))
        notes["complexity"].append("Times were measured on different machines (" + "; ".join(
            f"{d}: {m}" for d, m in where.items()) + "): compare training and inference times only between "
            "methods measured on one machine.")
    if not has(pts, "train_peak_mem_mb"):
        cpu = all(d == "" or machine(d).startswith("cpu") for d in set(table["device"]))
        notes["complexity"].append("Training peak memory not measured" + (
            ": a CPU run (train_peak_mem_mb is CUDA peak memory, NaN on CPU)." if cpu else
            " (no train_peak_mem_mb values)."))
    ofa = [m for m in methods if kinds.get(m) == "ofa"]
    if not ofa:
        notes["dial"].append("No once-for-all method in this run, so no dial to cost: add --methods oat,float.")
    elif not (kinds == "dedicated").any():
        notes["dial"].append("No dedicated models to compare with: train pgd_at with --train-lambdas "
                             "0,0.1,0.2,0.3,0.4,1 in the same run.")
    if ofa and not (has(pts, "params") or has(pts, "stored_params")):
        notes["dial"].append("No parameter counts (params, stored_params rows): the parameters stored are not "
                             "compared.")
    if ofa and not has(pts, "train_time_s"):
        notes["dial"].append("No training times (train_time_s rows): the training cost is not compared.")
    flagged_jobs = set(table.loc[table["metric"].str.startswith("flag:"), "job"])
    unchecked = sorted({m for m, j in zip(table["method"], table["job"]) if j not in flagged_jobs})
    if flagged_jobs and unchecked:
        notes["checks"].append(f"No sanity-check rows for {', '.join(style.display(m) for m in unchecked)} "
                               f"(scored with --checks off, or by an older lambench): the checks below say "
                               f"nothing of {'it' if len(unchecked) == 1 else 'them'}.")
    if not table["metric"].str.startswith("flag:").any():
        notes["checks"].append("No sanity-check rows (flag:*, check_acc) in this run: the evaluation's sanity "
                               "checks did not run, so no result here is checked.")
    empty = table[table["metric"].isin(("clean_acc", "pgd_acc", "aa_acc")) & table["value"].isna()]
    if len(empty):
        where = [f"{style.display(r.method)} λ={r['lambda']:g} {r.metric} ({r.attack or 'clean'}, seed {r.seed})"
                 for _, r in empty.head(4).iterrows()]
        notes["tables"].append(f"{len(empty)} accuracy row{'s' if len(empty) > 1 else ''} of results.csv hold no "
                               f"value (NaN: nothing was evaluated) and are left out of every mean, so a point "
                               f"may average fewer seeds than its seeds column says: {'; '.join(where)}"
                               + ("; ..." if len(empty) > 4 else "") + ".")
    if not info:
        notes["config"].append("No readable run.json in the run folder: the command line, configuration and "
                               "versions are unknown (run.json is written by python run_all.py).")
    return notes


def mixed_protocols(table: pd.DataFrame, jobs: dict) -> list[str]:
    """Warnings for settings whose models were scored under different evaluation protocols (run_all.py
    refuses to make such a run folder, but an older lambench's, or one edited by hand, may be one)."""
    from harness.jobs import protocol
    out = []
    first = table.drop_duplicates("job").set_index("job")
    for (dataset, arch, _), g in first.groupby(["dataset", "arch", "job_eps"]):
        found = {job: protocol(jobs[job]["eval"]) for job in g.index
                 if isinstance(jobs.get(job, {}).get("eval"), dict)}
        common = set.intersection(*(set(p) for p in found.values())) if found else set()
        seen: dict[str, set] = {}  # a setting an older lambench did not write is no difference
        for job, settings in found.items():
            key = json.dumps({k: settings[k] for k in common}, sort_keys=True)
            seen.setdefault(key, set()).add((style.display(g.loc[job, "method"]), g.loc[job, "seed"]))
        if len(seen) > 1:
            groups = " vs ".join(sorted(_named(group, seen.values()) for group in seen.values()))
            out.append(f"⚠ {dataset} · {arch}: models were evaluated under different protocols ({groups}; the "
                       f"configuration table says how): compare them with care, or rerun the command that scores "
                       f"them all.")
    return out


def stale_results(run) -> list[str]:
    """A warning where results.csv does not hold the finished jobs' own rows as they are."""
    if not run.stale:
        return []
    jobs = ", ".join(run.stale[:3]) + (f" and {len(run.stale) - 3} more" if len(run.stale) > 3 else "")
    return [f"⚠ results.csv does not hold the rows of {jobs} as their own rows.csv do: it was cut short or "
            f"edited, or the command is still running (it assembles results.csv as jobs finish). This report "
            f"shows what results.csv holds; let the command finish, or rerun it (run.json says how), to "
            f"reassemble it from the jobs' rows."]


def _named(group: set, groups) -> str:
    """The methods of ``group`` ((method, seed) pairs); one that is in other groups too (its seeds were
    scored differently) with its seeds."""
    def methods(g):
        return {m for m, _ in g}

    def name(m):
        if sum(m in methods(g) for g in groups) == 1:
            return m
        return f"{m} (seed {', '.join(str(s) for x, s in sorted(group) if x == m)})"
    return ", ".join(sorted(name(m) for m in methods(group)))


def point_name(row) -> str:
    """A point (or, at lambda NONE, all of a model's points) in words: "PGD-AT (model trained at λ=1) at λ=1"."""
    model = "" if row["train_lambda"] < 0 else f" (model trained at λ={row['train_lambda']:g})"
    lam = "all λ" if row["lambda"] < 0 else f"λ={row['lambda']:g}"
    return f"{style.display(row['method'])}{model} at {lam}"


def flag_line(row) -> str:
    """One flagged check, as a line under the figure or table it concerns."""
    attack = f" [{row['attack']}]" if row["attack"] else ""
    desc = describe(row["check"])
    seeds = f" (seed {row['seeds']})" if row["seeds"] else ""
    return f"{point_name(row)}: {row['check']}{attack} flagged{seeds}" + (f": {desc}" if desc else "")
