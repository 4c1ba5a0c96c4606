"""Read a run from the results store (``results.csv`` and ``run.json``) and check it can be reported on."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import LambenchError
from harness.store import ROWS_DIGEST, finished_settings

#: columns a report needs; the rest of store.COLUMNS are used when present
REQUIRED = ("job", "method", "lambda", "metric", "value")
OPTIONAL = {"run": "", "dataset": "", "arch": "", "seed": 0, "train_lambda": float("nan"), "attack": "",
            "eps": float("nan"), "n": float("nan"), "device": "", "torch": "", "precision": ""}


@dataclass
class Run:
    """One run: its tidy table and what ``run.json`` says about how it was produced."""
    dir: Path
    table: pd.DataFrame
    info: dict = field(default_factory=dict)
    #: job -> the settings its rows came from: "train" (its ``config.json``'s) and "eval" (its ``eval.json``)
    jobs: dict = field(default_factory=dict)
    #: finished jobs whose own rows.csv results.csv does not hold as it is (results.csv cut short or edited)
    stale: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.dir.name


def load_run(run_dir) -> Run:
    run_dir = Path(run_dir)
    csv = run_dir / "results.csv"
    if not run_dir.is_dir():
        raise LambenchError(f"no run folder {run_dir}; run python run_all.py first (results go to "
                            f"results/<run>/) or pass the folder that holds results.csv")
    if not csv.is_file():
        raise LambenchError(f"no results.csv in {run_dir}; run python run_all.py first (a run writes it "
                            f"after each finished job)")
    try:
        table = pd.read_csv(csv, keep_default_na=True)
    except pd.errors.EmptyDataError:
        table = pd.DataFrame()
    except Exception as exc:
        raise LambenchError(f"cannot read {csv} ({type(exc).__name__}); rerun python run_all.py to "
                            f"reassemble it from the jobs' rows.csv") from None
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing and not table.empty:
        raise LambenchError(f"{csv} lacks the column(s) {', '.join(missing)}; it was not written by lambench "
                            f"(rerun python run_all.py to reassemble it)")
    if table.empty:
        raise LambenchError(f"results.csv in {run_dir} has no rows (no job has finished yet); run python "
                            f"run_all.py until at least one job finishes")
    table = _normalise(table)
    return Run(run_dir, table, _info(run_dir), _jobs(run_dir, sorted(set(table["job"]))), _stale(run_dir, table))


def _stale(run_dir: Path, table: pd.DataFrame) -> list[str]:
    """The finished jobs (rows.csv with its eval.json) whose rows results.csv does not hold as they are (the
    same metrics and values, in order)."""
    out = []
    where = table.groupby("job", sort=False).indices  # once: a filter per job is slow on runs of many jobs
    for rows in sorted(run_dir.glob("*/rows.csv")):
        if finished_settings(rows.parent) is None:
            continue
        try:
            own = pd.read_csv(rows)
        except (ValueError, OSError):  # the run's own check says so when it reads it
            continue
        held = table.iloc[where.get(rows.parent.name, [])]
        same = (len(held) == len(own) and held["metric"].astype(str).tolist() == own["metric"].astype(str).tolist()
                and np.array_equal(pd.to_numeric(held["value"], errors="coerce").to_numpy(float),
                                   pd.to_numeric(own["value"], errors="coerce").to_numpy(float), equal_nan=True))
        if not same:
            out.append(rows.parent.name)
    return out


def _normalise(table: pd.DataFrame) -> pd.DataFrame:
    table = table.copy()
    for col, default in OPTIONAL.items():
        if col not in table.columns:
            table[col] = default
    for col in ("lambda", "value", "train_lambda", "eps", "n"):
        table[col] = pd.to_numeric(table[col], errors="coerce")
    table["seed"] = pd.to_numeric(table["seed"], errors="coerce").fillna(0).astype(int)
    for col in ("job", "method", "metric", "attack", "dataset", "arch", "device", "torch", "precision", "run"):
        table[col] = table[col].fillna("").astype(str)
    # the job's budget (check_acc rows carry the eps of their own check attack in ``eps``)
    own = table[~table["metric"].isin(("check_acc",)) & table["eps"].notna()]
    job_eps = own.groupby("job")["eps"].agg(lambda s: s.mode().iloc[0])
    table["job_eps"] = table["job"].map(job_eps).fillna(-1.0)
    return _by_machine(table)


#: a method's seeds are averaged only where they ran alike: trained on one device in one precision, scored on
#: one device with one torch
MACHINE = ("trained on", "precision", "scored on", "torch")
UNKNOWN = {"", "unrecorded"}  # not recorded (an older lambench's rows or checkpoint): matches any value


def machine(device: str) -> str:
    """The hardware a ``device`` entry names, without the processes that shared it (``2 × NVIDIA H100`` is an
    H100's)."""
    return re.sub(r"^\d+ × ", "", device)


def legacy_cpu(names: pd.Series) -> pd.Series:
    """Jobs' devices with an older lambench's bare ``cpu`` taken for the one CPU (``cpu (MODEL, N threads)``)
    the other jobs name, where they name exactly one: a run resumed or extended with this lambench on the
    machine that began it is not split in two. Where they name several CPUs, ``cpu`` stays a device of its own."""
    parts = {p for v in names for p in v.split(" + ")}
    cpus = {p for p in parts if machine(p).startswith("cpu (")}
    if "cpu" not in parts or len({machine(p) for p in cpus}) != 1:
        return names
    cpu = machine(next(iter(cpus)))
    return names.map(lambda v: " + ".join(dict.fromkeys(cpu if p == "cpu" else p for p in v.split(" + "))))


def _by_machine(table: pd.DataFrame) -> pd.DataFrame:
    """The table with a method whose jobs ran on different machines (within one dataset, architecture and
    eps) split into one method per machine: it becomes ``"<method> @ <what differs>"`` (``pgd_at @ cpu (AMD
    EPYC, 2 threads)``, ``pgd_at @ 2 × NVIDIA H100 80GB HBM3``: processes that shared the work count too),
    so no figure or table averages, or sums, numbers from two machines; every job of that method is
    labelled, whatever its training lambda. Where they ran alike, nothing changes. Adds ``trained_on``: each
    job's training device and precision, ``"<device> | <precision>"`` (empty where not recorded)."""
    def joined(rows: pd.DataFrame, col: str) -> pd.Series:
        return rows.groupby("job")[col].agg(
            lambda s: " + ".join(sorted({part for v in s for part in v.split(" + ")} - UNKNOWN)))

    train = table[table["metric"] == "train_time_s"]
    scored = table[table["metric"] == "clean_acc"]
    jobs = pd.DataFrame({"trained on": joined(train, "device"), "precision": joined(train, "precision"),
                         "scored on": joined(scored, "device"), "torch": joined(scored, "torch")})
    jobs = jobs.reindex(sorted(set(table["job"]))).fillna("")
    jobs["trained on"], jobs["scored on"] = legacy_cpu(jobs["trained on"]), legacy_cpu(jobs["scored on"])
    table = table.copy()
    table["trained_on"] = table["job"].map(jobs["trained on"] + " | " + jobs["precision"])
    model = table.drop_duplicates("job").set_index("job")[["dataset", "arch", "job_eps", "method"]]
    label = {}
    for _, group in jobs.join(model).groupby(["dataset", "arch", "job_eps", "method"]):
        differ = [c for c in MACHINE if group.loc[group[c] != "", c].nunique() > 1]
        for job, r in group.iterrows() if differ else ():
            where = [_devices(r["trained on"], r["scored on"])] if {"trained on", "scored on"} & set(differ) else []
            where += [r["precision"] or "?"] if "precision" in differ else []
            where += [f"torch {r['torch'] or '?'}"] if "torch" in differ else []
            label[job] = ", ".join(where)
    at = table["job"].map(label)
    table.loc[at.notna(), "method"] = table["method"] + " @ " + at
    return table


def _devices(trained: str, scored: str) -> str:
    if not trained or not scored or machine(trained) == scored:  # (trained on 2 processes: "2 × <scored>")
        return trained or scored or "?"
    return f"trained on {trained}, scored on {scored}"


def _jobs(run_dir: Path, names: list[str]) -> dict:
    """Each job's own settings (a run.json describes only the last command); unreadable files are left out."""
    out = {}
    for name in names:
        settings = {}
        for part, file in (("train", "config.json"), ("eval", "eval.json")):
            try:
                loaded = json.loads((run_dir / name / file).read_text())
            except (ValueError, OSError):
                continue
            loaded = loaded.get("train") if part == "train" and isinstance(loaded, dict) else loaded
            if isinstance(loaded, dict):
                loaded.pop(ROWS_DIGEST, None)  # which rows.csv it was written for, not a setting
                settings[part] = loaded
        if settings:
            out[name] = settings
    return out


def _info(run_dir: Path) -> dict:
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text())
    except (ValueError, OSError):
        return {"_unreadable": str(path)}
    return info if isinstance(info, dict) else {}
