"""Expand a run into jobs (methods x datasets x archs x seeds [x training lambda]) and execute them.

Each job trains (or resumes), evaluates at every lambda of its method's grid and writes its own rows; the
run's ``results.csv`` is reassembled from the finished jobs after each one, so nothing finished is lost.
Rerunning skips finished jobs; ``--force`` retrains them.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from methods import get_method

from . import checks
from .config import RunConfig, TrainConfig, apply, check_lambda
from .data import Dataset, load_dataset
from .errors import LambenchError
from .evaluate import evaluate
from .store import assemble, read_json, write_csv, write_json, write_text
from .train import precision_of, train


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
        tl = "" if self.train_lambda is None else f"-tl{self.train_lambda:g}"
        return f"{self.method}-{self.dataset}-{self.arch.replace(':', '_')}-s{self.seed}{tl}"


def expand_jobs(cfg: RunConfig, train_overrides: dict | None = None) -> list[Job]:
    """One job per method x dataset x arch x seed (x training lambda for per-lambda methods).

    Training settings per job: the preset's, then the method's own defaults, then explicit flags."""
    jobs = []
    for name in cfg.methods:
        cls = get_method(name)
        tcfg = apply(apply(cfg.train, cls.defaults), train_overrides or {})
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LambenchError(f"--device {name} asked for, but CUDA is not available; use --device cpu")
    return torch.device(name)


def run(cfg: RunConfig, train_overrides: dict | None = None, log=print, command: str | None = None) -> pd.DataFrame:
    """Run every job of ``cfg``; ``command`` (the command line) is recorded in ``<run>/run.json``."""
    device = resolve_device(cfg.device)
    jobs = expand_jobs(cfg, train_overrides)
    run_dir = Path(cfg.out) / (cfg.run or "run")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "run.json", {"command": command or "", "config": _jsonable(dataclasses.asdict(cfg)),
                                      "device": device_name(device), "versions": versions()})
    datasets: dict[str, Dataset] = {}
    for i, job in enumerate(jobs, 1):
        if job.dataset not in datasets:  # loaded once, kept on the device as uint8
            datasets[job.dataset] = load_dataset(job.dataset, cfg.data_root, cfg.subset).to(device)
        log(f"[{i}/{len(jobs)}] {job.name}")
        run_job(job, cfg, datasets[job.dataset], run_dir, device, log)
        assemble(run_dir)
    table = assemble(run_dir)
    log(f"results: {run_dir / 'results.csv'} ({len(table)} rows)")
    return table


def run_job(job: Job, cfg: RunConfig, data: Dataset, run_dir: Path, device: torch.device, log=print) -> None:
    job_dir = run_dir / job.name
    eps = cfg.eps if cfg.eps is not None else data.info.eps
    identity = {"method": job.method, "dataset": job.dataset, "arch": job.arch, "seed": job.seed,
                "train_lambda": job.train_lambda, "eps": eps, "subset": cfg.subset,
                "train": dataclasses.asdict(job.train)}
    eval_settings = dataclasses.asdict(cfg.eval) | {"eps": eps}
    if cfg.force and job_dir.exists():
        shutil.rmtree(job_dir)
    if (job_dir / "config.json").exists():
        if read_json(job_dir / "config.json") != _jsonable(identity):
            raise LambenchError(f"{job_dir} holds a job trained with other settings; rerun with --force to "
                                f"retrain it, or pick another --run name")
        if (job_dir / "rows.csv").exists() and (job_dir / "eval.json").exists() \
                and read_json(job_dir / "eval.json") == _jsonable(eval_settings):
            log(f"  done already, skipped ({job_dir})")
            return
    write_json(job_dir / "config.json", identity)

    torch.manual_seed(job.seed)
    method = get_method(job.method)(job.train, eps, job.train_lambda)
    model = method.build_model(job.arch, data.info).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    history = train(method, model, data, job.train, job_dir, device, cfg.progress, log)
    t_eval = time.perf_counter()
    rows = evaluate(method, model, data, cfg.eval, eps, seed=job.seed, progress=cfg.progress)
    eval_s = time.perf_counter() - t_eval
    # training cost as rows with no lambda (they do not vary with it)
    seconds = sum(h["seconds"] for h in history)
    images = sum(h["seconds"] * h["images_per_s"] for h in history)
    rows += [{"lambda": float("nan"), "metric": m, "value": v, "attack": "", "n": len(data.x_train)} for m, v in (
        ("train_time_s", seconds), ("train_epoch_time_s", seconds / len(history) if history else float("nan")),
        ("train_images_per_s", images / seconds if seconds else float("nan")),
        ("train_peak_mem_mb", max(h["peak_mem_mb"] for h in history)), ("epochs_trained", len(history)),
        ("eval_time_s", eval_s))]
    meta = {"run": run_dir.name, "job": job.name, "method": job.method, "dataset": job.dataset, "arch": job.arch,
            "seed": job.seed, "train_lambda": job.train_lambda, "eps": eps, "device": device_name(device),
            "torch": torch.__version__, "precision": precision_of(job.train, device)}
    warnings = checks.warning_lines(rows)
    write_text(job_dir / "warnings.txt", "".join(line + "\n" for line in warnings))
    write_json(job_dir / "eval.json", eval_settings)
    write_csv(job_dir / "rows.csv", pd.DataFrame([meta | {k: v for k, v in r.items() if k != "detail"} for r in rows]))
    _log_rows(rows, log)
    for line in warnings:
        log(f"  {line}")


def _log_rows(rows, log) -> None:
    """Accuracies per lambda, then one line of complexity per lambda and one for the job."""
    by = {(r["metric"], r["lambda"]): r["value"] for r in rows}
    for r in rows:
        if r["metric"] in ("clean_acc", "pgd_acc", "aa_acc"):
            on = f" (first {r['n']:g} examples)" if r["metric"] == "aa_acc" else ""
            log(f"  lambda={r['lambda']:g} {r['metric']}{'/' + r['attack'] if r['attack'] else ''} = {r['value']:.4f}{on}")
    for lam in dict.fromkeys(r["lambda"] for r in rows if r["metric"] == "macs"):
        log(f"  lambda={lam:g} MACs {by[('macs', lam)] / 1e6:.2f}M, non-zero params {by[('nonzero_params', lam)] / 1e6:.3f}M, "
            f"latency {by[('infer_latency_ms', lam)]:.2f} ms (batch 1), {by[('infer_throughput', lam)]:.0f} images/s (batch 256)")
    job = {r["metric"]: r["value"] for r in rows if r["metric"] in ("params", "stored_params")}
    if job:
        log(f"  params {job['params'] / 1e6:.3f}M, stored for the whole lambda range {job['stored_params'] / 1e6:.3f}M")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def versions() -> dict:
    import platform
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "cuda": torch.version.cuda or "", "platform": platform.platform()}
    for pkg in ("lambench", "torchvision", "pyautoattack", "timm"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = ""
    return out


def _jsonable(obj):
    return json.loads(json.dumps(obj, sort_keys=True))
