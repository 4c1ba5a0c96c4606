"""Jobs: how a run expands into them, what each one's results depend on, and where each stands in the store.

A job's ``config.json`` is its identity (what training its model depends on, the data's content included);
its ``eval.json`` the evaluation settings its ``rows.csv`` was scored under. A run folder is one protocol:
the seeds of one model (same method, dataset, architecture and training lambda) must agree on both, or the
report would average different experiments as if they were seeds; the models of one setting (dataset,
architecture, eps), which the report compares in one figure, on their data and evaluation ``protocol``.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from methods import get_method

from .config import RunConfig, TrainConfig, apply, check_lambda
from .data import dataset_eps
from .errors import LambenchError, StoreError
from .models import check_arch
from .store import finished_settings, read_json


@dataclass(frozen=True)
class Job:
    method: str
    dataset: str
    arch: str
    seed: int
    train_lambda: float | None
    train: TrainConfig

    @property
    def name(self) -> str:
        return self.name_with(self.seed)

    def name_with(self, seed) -> str:
        tl = "" if self.train_lambda is None else f"-tl{self.train_lambda:g}"
        return f"{self.method}-{self.dataset}-{self.arch.replace(':', '_')}-s{seed}{tl}"


def expand_jobs(cfg: RunConfig, train_overrides: dict | None = None) -> list[Job]:
    """One job per method x dataset x arch x seed (x training lambda for per-lambda methods).

    Training settings per job: the preset's, then the method's own defaults, then explicit flags. A method
    option (``--opt key=value``) goes to the methods that have that option; one that none has is an error."""
    jobs = []
    overrides = dict(train_overrides or {})
    options = overrides.pop("options", {})
    classes = [get_method(name) for name in cfg.methods]
    unknown = set(options) - {key for cls in classes for key in cls.options}
    if unknown:
        known = "; ".join(f"{c.name}: {', '.join(c.options) or 'none'}" for c in classes)
        raise LambenchError(f"no method of this run has option {', '.join(sorted(unknown))} (--opt); "
                            f"their options: {known}")
    for name, cls in zip(cfg.methods, classes):
        mine = {k: v for k, v in options.items() if k in cls.options}
        tcfg = apply(apply(cfg.train, cls.defaults), overrides | ({"options": mine} if mine else {}))
        # bad options and a bad --lambdas fail here, before any training (an unknown dataset too)
        method = cls(tcfg, dataset_eps(cfg.datasets[0], cfg.eps))
        if cfg.eval.lambdas is not None and cls.once_for_all:
            method.eval_grid(cfg.eval.lambdas)
        for arch in cfg.archs:  # an unknown one fails here, before any work, not at its job's turn
            check_arch(arch, method.layers())
        lambdas = cfg.train_lambdas if cfg.train_lambdas is not None else cls.train_lambdas
        if cls.train_lambdas is None:
            lambdas = (None,)
        for lam in lambdas:
            if lam is not None:
                check_lambda(lam)
            for dataset in cfg.datasets:
                for arch in cfg.archs:
                    for seed in cfg.seeds:
                        jobs.append(Job(name, dataset, arch, seed, lam, tcfg))
    return jobs


def dedicated_hint(cfg: RunConfig) -> str | None:
    """A line for a run of once-for-all methods beside per-lambda methods (PGD-AT) left at their default
    training lambda: one dedicated model, not one per lambda to compare the dial with."""
    classes = [get_method(name) for name in cfg.methods]
    per = [c for c in classes if c.train_lambdas is not None]
    if cfg.train_lambdas is not None or not per or not any(c.once_for_all for c in classes):
        return None
    which = ", ".join(f"{c.name} at λ = {', '.join(f'{v:g}' for v in c.train_lambdas)}" for c in per)
    return (f"note: one dedicated model each ({which}); to compare the once-for-all methods with one dedicated "
            f"model per λ (the report's cost of the dial), add --train-lambdas 0,0.1,0.2,0.3,0.4,1")


def jsonable(obj):
    return json.loads(json.dumps(obj, sort_keys=True))


def identity(job: Job, cfg: RunConfig, data_fingerprint: str) -> dict:
    """What a job's model depends on (its ``config.json``); ``eval.json`` holds the evaluation settings."""
    return jsonable({"method": job.method, "dataset": job.dataset, "arch": job.arch, "seed": job.seed,
                     "train_lambda": job.train_lambda, "eps": dataset_eps(job.dataset, cfg.eps),
                     "subset": cfg.subset, "data": data_fingerprint, "train": dataclasses.asdict(job.train)})


def eval_settings(job: Job, cfg: RunConfig) -> dict:
    return jsonable(dataclasses.asdict(cfg.eval) | {"eps": dataset_eps(job.dataset, cfg.eps)})


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: old -> new' for every setting that differs (nested dicts by their dotted keys)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "unset"), new.get(key, "unset")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            short = (lambda v: v[:8] if key == "data" and isinstance(v, str) else v)
            out.append(f"{prefix}{key}: {short(a)} -> {short(b)}")
    return out


def _said(differences: list[str]) -> str:
    return ", ".join(differences[:3]) + (f" and {len(differences) - 3} more" if len(differences) > 3 else "")


def _stored(path: Path, fix: str = "delete its folder (rerunning the command then redoes that job alone)"
            ) -> dict | None:
    if not path.exists():
        return None
    try:
        stored = read_json(path)
    except StoreError as exc:
        raise StoreError(f"{str(exc).split(';')[0]}; {fix}") from None
    if not isinstance(stored, dict):
        raise StoreError(f"{path} is damaged (not a settings object); {fix}")
    return stored


def _same(stored: dict, wanted: dict) -> list[str]:
    """What differs between a stored identity and the wanted one; one without ``data`` (an older lambench's
    job, written before jobs held their data's fingerprint) is taken as of this data, as it was then."""
    if stored.get("data") is None:
        stored = {**stored, "data": wanted.get("data")}
    return _differences(stored, wanted)


def job_state(job: Job, cfg: RunConfig, run_dir: Path, data_fingerprint: str) -> str:
    """"done" (rows written under these settings), "new" (nothing yet, or a checkpoint to resume from);
    a folder trained with other settings is an error naming what differs and --force."""
    job_dir = run_dir / job.name
    stored = _stored(job_dir / "config.json")
    if stored is None:
        return "new"
    differ = _same(stored, identity(job, cfg, data_fingerprint))
    if differ:
        raise LambenchError(f"{job_dir} holds a job trained with other settings ({_said(differ)}); rerun with "
                            f"--force to retrain it, or pick another --run name")
    if finished_settings(job_dir) == eval_settings(job, cfg):
        return "done"
    return "new"


def to_do(jobs: list[Job], cfg: RunConfig, run_dir: Path, fingerprints: dict[str, str]) -> list[Job]:
    """The jobs this command trains or scores (all of them with --force), read before any work: a job
    trained with other settings is refused here, before any other job's work, too."""
    return [job for job in jobs if cfg.force or job_state(job, cfg, run_dir, fingerprints[job.dataset]) != "done"]


def rescored(jobs: list[Job], cfg: RunConfig, run_dir: Path) -> list[Job]:
    """The finished jobs whose rows stop holding once this command starts them: scored again under another
    ``protocol`` (not those only re-batched, or measured for complexity or checks), or trained again
    (--force, or their checkpoint gone)."""
    out = []
    for job in jobs:
        job_dir = Path(run_dir) / job.name
        scored = finished_settings(job_dir)
        if scored is not None and (cfg.force or not (job_dir / "checkpoint.pt").exists()
                                   or protocol(scored) != protocol(eval_settings(job, cfg))):
            out.append(job)
    return out


#: evaluation settings the compared figures do not depend on: the lambda grid (a lambda's rows do not depend
#: on the others), batching, and what runs besides the accuracies (complexity, sanity checks)
_BESIDES = ("lambdas", "batch_size", "complexity", "checks", "checks_n", "checks_eot")


def protocol(settings: dict) -> dict:
    """The evaluation settings (an ``eval.json``) that clean, PGD and AutoAttack accuracy depend on: what
    seeds averaged together, and models compared in one figure, must share."""
    out = {k: v for k, v in settings.items() if k not in _BESIDES}
    if out.get("aa") == "off":
        out.pop("aa_n", None)
    return out


def check_run_agrees(jobs: list[Job], cfg: RunConfig, run_dir: Path, fingerprints: dict[str, str]) -> None:
    """Refuse a run whose jobs would sit in ``run_dir`` beside jobs the report would wrongly put with them:
    seeds of the same model trained or scored under other settings (a second command with other --epochs
    or --eval-n and another --seeds; the report averages a model's seeds, and would average two experiments),
    or other models of the same setting (dataset, architecture, eps) scored under another evaluation
    protocol (the report compares them in one figure). ``fingerprints``: dataset -> data."""
    mine = {job.name for job in jobs}
    folders = [p for p in sorted(Path(run_dir).glob("*/config.json")) if p.parent.name not in mine]
    others: dict[Path, tuple] = {}  # other models' folders, each read once
    for job in jobs:
        wanted, evaluated = identity(job, cfg, fingerprints[job.dataset]), protocol(eval_settings(job, cfg))
        point = {k: wanted[k] for k in ("method", "dataset", "arch", "train_lambda")}
        # the folders of this model's other seeds, by name
        seeds = re.compile(re.escape(job.name_with("SEED")).replace("SEED", r"-?\d+") + "$")
        for path in folders:
            if not seeds.match(path.parent.name):
                if path not in others:
                    others[path] = _finished(path)
                _check_protocol(job, wanted, evaluated, path, *others[path])
                continue
            stored = _stored(path, fix="delete that folder (a seed of this command's model), or pick another --run")
            if {k: stored.get(k) for k in point} != point:
                continue
            differ = _same({**stored, "seed": None}, {**wanted, "seed": None})
            what, scored = "trained", finished_settings(path.parent)
            if not differ and scored is not None:
                differ, what = _differences(protocol(scored), evaluated), "evaluated"
            if differ:
                raise LambenchError(f"{path.parent} is seed {stored.get('seed')} of {job.name}'s model, {what} with "
                                    f"other settings ({_said(differ)}); the report would average them as seeds: "
                                    f"pick another --run, include seed {stored.get('seed')} in --seeds "
                                    f"(with --force if it was trained differently), or delete that folder")


def _finished(path: Path) -> tuple[dict | None, dict | None]:
    """(identity, evaluation settings) of another model's finished job, its ``config.json`` at ``path``; read
    leniently: files that cannot be read are that job's own business (its rerun says so), here None."""
    try:
        stored, scored = _stored(path), finished_settings(path.parent)
    except StoreError:
        return None, None
    return (stored, scored) if stored is not None and scored is not None else (None, None)


def _check_protocol(job: Job, wanted: dict, evaluated: dict, path: Path, stored, scored) -> None:
    """Refuse ``job`` (``wanted``: its identity, ``evaluated``: its protocol) beside the finished job in
    ``path.parent`` (``stored``, ``scored``: its ``_finished``) if the report would compare the two (same
    dataset, architecture and eps) though they were scored on other data under the same dataset name, or
    under another evaluation protocol."""
    if stored is None or any(stored.get(k) != wanted[k] for k in ("dataset", "arch", "eps")):
        return
    other = f"{path.parent} ({stored.get('method')})"
    if stored.get("subset") == wanted["subset"] and stored.get("data") not in (None, wanted["data"]):
        raise LambenchError(f"{other} was trained and scored on other data under the name {job.dataset} (data: "
                            f"{stored['data'][:8]} -> {wanted['data'][:8]}; another --data-root?), and the report "
                            f"would compare it with {job.name}: pick another --run")
    differ = _differences(protocol(scored), evaluated)
    if differ:
        raise LambenchError(f"{other} was evaluated with other settings ({_said(differ)}) than {job.name} would be, "
                            f"and the report compares them in one figure: pick another --run, or set that job "
                            f"aside by deleting its eval.json (its checkpoint and rows stay; the command that "
                            f"trained it, with these evaluation flags, scores it again without retraining)")
