"""Expand a run into jobs (methods x datasets x archs x seeds [x training lambda]) and execute them.

Each job trains (or resumes), evaluates at every lambda of its method's grid and writes its own rows; the
run's ``results.csv`` is reassembled from the finished jobs after each one, so nothing finished is lost.
Rerunning skips finished jobs; ``--force`` retrains them.

Jobs run here one after another (``--executor local``), each across every process of a torchrun launch
(distributed.py: rank 0 writes), or as independent submitit tasks (executor.py), which call ``run_one``.
"""
from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import pandas as pd
import torch

from methods import get_method

from . import checks, distributed
from .config import RunConfig
from .data import Dataset, dataset_eps, load_dataset
from .device import device_name, resolve_device
from .errors import LambenchError
from .evaluate import evaluate
from .executor import ExecutorConfig, check as check_executor, submit_and_wait
from .jobs import (Job, check_run_agrees, dedicated_hint, eval_settings, expand_jobs, identity, job_state,
                   jsonable, rescored, to_do)
from .store import (ROWS_DIGEST, LambdaRows, assemble, fingerprint, result_row, rows_digest, write_csv, write_json,
                    write_text)
from .train import train


def run(cfg: RunConfig, train_overrides: dict | None = None, log=print, command: str | None = None,
        executor: ExecutorConfig | None = None) -> pd.DataFrame:
    """Run every job of ``cfg``; ``command`` (the command line) is recorded in ``<run>/run.json``."""
    ex = executor or ExecutorConfig()
    check_executor(ex)
    launched = distributed.init(cfg.device)
    if launched is not None and ex.kind != "local":
        raise LambenchError(f"--executor {ex.kind} submits the jobs itself; start it once, not under torchrun "
                            f"(use --slurm-gpus-per-job for several GPUs per job)")
    device = launched or resolve_device(cfg.device)
    main = distributed.is_main()
    if not main:
        log = _quiet
    jobs = expand_jobs(cfg, train_overrides)
    run_dir = Path(cfg.out) / (cfg.run or "run")
    hint = dedicated_hint(cfg)
    if hint:
        log(hint)

    def start() -> None:
        """The run folder and its run.json: once every check has passed (a refused or failed command leaves
        the folder, and the run.json describing its results, as they were)."""
        if main:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # --out is a file, read-only, ...
                raise LambenchError(f"cannot make the run folder {run_dir} ({type(exc).__name__}: "
                                    f"{exc.strerror}); pick another --out") from None
            write_json(run_dir / "run.json", {"command": command or "", "config": jsonable(dataclasses.asdict(cfg)),
                                              "device": device_name(device), "versions": versions(),
                                              "processes": distributed.world_size(), "executor": ex.kind})
        distributed.barrier()
    if ex.kind != "local":
        return _submit(cfg, jobs, run_dir, ex, log, start)
    # each dataset loaded once, kept on the device as uint8
    datasets = {name: load_dataset(name, cfg.data_root, cfg.subset).to(device)
                for name in dict.fromkeys(job.dataset for job in jobs)}
    fingerprints = {name: d.fingerprint for name, d in datasets.items()}
    check_run_agrees(jobs, cfg, run_dir, fingerprints)
    todo = to_do(jobs, cfg, run_dir, fingerprints)  # a job trained otherwise is refused here, before any work
    for job in todo:  # so is a batch the processes cannot share
        distributed.per_rank_batch(job.train.batch_size)
    start()
    _unmark(rescored(todo, cfg, run_dir), run_dir, main)
    for i, job in enumerate(jobs, 1):
        log(f"[{i}/{len(jobs)}] {job.name}")
        run_job(job, cfg, datasets[job.dataset], run_dir, device, log)
        if main:
            assemble(run_dir)
    distributed.barrier()
    table = assemble(run_dir) if main else pd.read_csv(run_dir / "results.csv")
    log(f"results: {run_dir / 'results.csv'} ({len(table)} rows)")
    return table


def _unmark(jobs: list[Job], run_dir: Path, main: bool) -> None:
    """Before any work, the jobs this command scores again under another protocol lose their ``eval.json``:
    ``results.csv`` takes only rows with theirs (store.assemble), so a run stopped in between never leaves a
    job's old rows beside other jobs' new ones (its seeds, or the models it is compared with). Their rows and
    checkpoints stay; each gets its ``eval.json`` back once scored."""
    distributed.barrier()  # every process has read the store
    if main:
        for job in jobs:
            (run_dir / job.name / "eval.json").unlink(missing_ok=True)
        if jobs and (run_dir / "results.csv").exists():
            assemble(run_dir)  # the run's table without them, at once
    distributed.barrier()


def _put_back(aside: Path, run_dir: Path) -> None:
    """The job folders ``--force`` put aside (``run_dir/.forced``) back in place, where the job has no new
    folder (a task that started has one: its submission was accepted, and the old folder goes)."""
    for folder in sorted(aside.iterdir()) if aside.is_dir() else ():
        if not (run_dir / folder.name).exists():
            folder.rename(run_dir / folder.name)
    shutil.rmtree(aside, ignore_errors=True)


def _quiet(*args, **kwargs) -> None:
    """The log of ranks other than 0: rank 0 speaks for the job."""


def _submit(cfg: RunConfig, jobs: list[Job], run_dir: Path, ex: ExecutorConfig, log, start) -> pd.DataFrame:
    """Submit the unfinished jobs (each its own task), wait, assemble the table from every finished job."""
    # the data's fingerprints, read here (on the CPU) as the tasks will read them
    data = {name: load_dataset(name, cfg.data_root, cfg.subset).fingerprint
            for name in dict.fromkeys(job.dataset for job in jobs)}
    aside = run_dir / ".forced"  # --force: the jobs' folders, until the scheduler accepts the submission
    _put_back(aside, run_dir)  # a command stopped before that left them: they are still the run's
    check_run_agrees(jobs, cfg, run_dir, data)  # before --force moves anything
    # (each task drops its job's eval.json when it starts: dropping them here, before the submission is
    # accepted, would empty the run's table for a refused one)
    todo = to_do(jobs, cfg, run_dir, data)
    for job in todo:  # each task's processes share its batch
        distributed.per_rank_batch(job.train.batch_size, max(1, ex.gpus_per_job))
    start()
    if cfg.force:
        for job in jobs:
            if (run_dir / job.name).exists():
                aside.mkdir(exist_ok=True)
                (run_dir / job.name).rename(aside / job.name)
    log(f"{len(jobs) - len(todo)} finished already, {len(todo)} to run")
    try:
        failures = submit_and_wait(cfg, todo, run_dir, ex, log,
                                   accepted=lambda: shutil.rmtree(aside, ignore_errors=True))
    except BaseException:  # refused, or stopped before the scheduler answered: the folders back as they were
        _put_back(aside, run_dir)
        raise
    # a task that failed before it started its job left that job's old rows, which the others' new ones
    # no longer match (another protocol): out of the run's table (its rows and checkpoint stay)
    _unmark(rescored(todo, dataclasses.replace(cfg, force=False), run_dir), run_dir, True)  # (--force acted)
    table = assemble(run_dir)
    log(f"results: {run_dir / 'results.csv'} ({len(table)} rows)")
    if failures:
        raise LambenchError(f"{len(failures)} of {len(jobs)} jobs failed ({failures[0]}); rerun the same "
                            f"command to resubmit only those")
    return table


def run_one(cfg: RunConfig, job: Job, run_dir: Path, log=print) -> None:
    """One job in a process of its own (a submitit task; several processes when the task is a DDP job)."""
    launched = distributed.init(cfg.device)
    device = launched or resolve_device(cfg.device)
    if not distributed.is_main():
        log = _quiet
    data = load_dataset(job.dataset, cfg.data_root, cfg.subset).to(device)
    try:
        run_job(job, cfg, data, Path(run_dir), device, log)
    finally:
        distributed.shutdown()


def run_job(job: Job, cfg: RunConfig, data: Dataset, run_dir: Path, device: torch.device, log=print) -> None:
    """Train (or resume) and evaluate one job; on several processes every rank takes part, rank 0 writes."""
    job_dir = run_dir / job.name
    eps = dataset_eps(job.dataset, cfg.eps)
    main = distributed.is_main()
    state = None
    if main:
        try:
            if cfg.force and job_dir.exists():
                shutil.rmtree(job_dir)
            state = job_state(job, cfg, run_dir, data.fingerprint)
            if state != "done":
                for stale in job_dir.rglob(".*.tmp"):  # a write cut short by a kill (a checkpoint's: large)
                    stale.unlink(missing_ok=True)
                write_json(job_dir / "config.json", identity(job, cfg, data.fingerprint))
                # without its eval.json the old rows.csv is neither taken for rows of these settings nor put
                # in the run's table (store.assemble), wherever this run stops; kept only where the same
                # model is scored again under the same protocol (re-batched, say), so its rows still hold
                if rescored([job], cfg, run_dir):
                    (job_dir / "eval.json").unlink(missing_ok=True)
        except LambenchError as exc:  # every rank stops with it
            state = exc
    state = distributed.broadcast_object(state)
    if isinstance(state, LambenchError):
        raise state
    if state == "done":
        log(f"  done already, skipped ({job_dir})")
        return

    torch.manual_seed(job.seed)
    method = get_method(job.method)(job.train, eps, job.train_lambda)
    model = method.build_model(job.arch, data.info).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    shard = distributed.shard_train(data, job.seed)  # this process's share (all of it on one process)
    history = train(method, model, shard, job.train, job_dir, device, cfg.progress, log)
    trained = len(shard.x_train) * distributed.world_size()
    t_eval = time.perf_counter()
    settings = {k: v for k, v in eval_settings(job, cfg).items() if k != "lambdas"}  # a lambda's rows do not
    scored = LambdaRows(job_dir / "lambdas", settings | {  # depend on the others
        "seed": job.seed, "device": device_name(device), "torch": torch.__version__,
        "weights": fingerprint(model)})  # a model trained again is not the one scored before, unless equal
    rows = evaluate(method, model, data, cfg.eval, eps, seed=job.seed, progress=cfg.progress, scored=scored)
    eval_s = time.perf_counter() - t_eval + scored.reused_s  # the lambdas scored before count as they took
    # training cost as rows with no lambda (they do not vary with it)
    seconds = sum(h["seconds"] for h in history)
    images = sum(h["seconds"] * h["images_per_s"] for h in history)
    # labelled with the device and precision training ran on (epochs resumed elsewhere: each of them)
    trained_on = {key: " + ".join(dict.fromkeys(str(h.get(key, "unrecorded")) for h in history))
                  for key in ("device", "precision")}
    scoring = {"precision": "fp32", "device": device_name(device, distributed.world_size())}  # all processes'
    cost = [result_row(float("nan"), m, v, trained, **(trained_on if m != "eval_time_s" else scoring))
            for m, v in (
        ("train_time_s", seconds), ("train_epoch_time_s", seconds / len(history) if history else float("nan")),
        ("train_images_per_s", images / seconds if seconds else float("nan")),
        ("train_peak_mem_mb", max(h["peak_mem_mb"] for h in history)), ("epochs_trained", len(history)),
        ("eval_time_s", eval_s))]
    # a model scored as several (OATS's widths) cost all of it once: each of them carries the whole cost
    rows += [r | ({"method": f"{job.method}-{v}"} if v else {}) for v in method.variants() for r in cost]
    meta = {"run": run_dir.name, "job": job.name, "method": job.method, "dataset": job.dataset, "arch": job.arch,
            "seed": job.seed, "train_lambda": job.train_lambda, "eps": eps, "device": device_name(device),
            "torch": torch.__version__,  # accuracy rows: the precision the model was trained in (evaluation: fp32)
            "precision": trained_on["precision"]}
    if not main:
        return
    warnings = checks.warning_lines(rows)
    write_text(job_dir / "warnings.txt", "".join(line + "\n" for line in warnings))
    (job_dir / "eval.json").unlink(missing_ok=True)  # it describes the rows.csv written next, not the old one
    write_csv(job_dir / "rows.csv", pd.DataFrame([meta | {k: v for k, v in r.items() if k != "detail"} for r in rows]))
    # last: it marks the rows as these settings' (and as these rows: a rows.csv cut short is scored again)
    write_json(job_dir / "eval.json", eval_settings(job, cfg) | {ROWS_DIGEST: rows_digest(job_dir / "rows.csv")})
    _log_rows(rows, log)
    for line in warnings:
        log(f"  {line}")


def _log_rows(rows, log) -> None:
    """Accuracies per lambda, then one line of complexity per lambda and one for the job; under a heading
    per variant where the model is scored as several (OATS's widths)."""
    groups: dict[str | None, list] = {}
    for r in rows:
        groups.setdefault(r.get("method"), []).append(r)
    for name, part in groups.items():
        if len(groups) > 1 and name is not None:
            log(f" {name}:")
        _log_group(part, log)


def _log_group(rows, log) -> None:
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
