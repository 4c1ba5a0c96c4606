"""Where a run's jobs execute: here, one after another (``--executor local``, the default, see runner.py),
or each as an independent task through submitit: on a Slurm cluster (``--executor slurm``) or, for tests
and a first try, as local processes (``--executor submitit-local``, submitit's LocalExecutor).

A submitted task runs one job in a fresh process (``runner.run_one``: load the data, train or resume,
evaluate) and writes only that job's folder; with ``--slurm-gpus-per-job N`` > 1 the job runs N tasks, one
per GPU, joined into one DDP job as torchrun would. The parent submits the unfinished jobs as one job
array, waits for them all, then assembles ``results.csv`` from the job folders: jobs may finish in any
order, fail, time out or be rerun without a row being lost or written twice. A failed job is one line of
the report; rerunning the same command resubmits only what is unfinished (it resumes from its checkpoint).
A job stopped by Slurm at its time limit is requeued by submitit and resumes from its last epoch.
Logs: ``<out>/<run>/slurm/``.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import LambenchError

KINDS = ("local", "slurm", "submitit-local")


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"                # local (sequential, here) | slurm | submitit-local
    partition: str | None = None       # Slurm partition (None: the cluster's default)
    gpus_per_job: int = 1              # GPUs (= processes, one DDP job) per job; 0: a CPU-only job
    time_min: int = 24 * 60            # time limit per job, in minutes
    array_parallelism: int = 32        # at most this many jobs of the array run at once
    cpus_per_task: int | None = None   # CPU cores per process (None: the cluster's default)


def check(ex: ExecutorConfig) -> None:
    """One-line errors for impossible settings, before anything is submitted."""
    if ex.kind not in KINDS:
        raise LambenchError(f"unknown executor {ex.kind!r}; choose local or slurm")
    if ex.gpus_per_job < 0 or ex.time_min < 1 or ex.array_parallelism < 1:
        raise LambenchError("--slurm-gpus-per-job must be >= 0, --slurm-time >= 1 (minutes) and "
                            "--slurm-array-parallelism >= 1")
    if ex.kind == "slurm" and shutil.which("sbatch") is None:
        raise LambenchError("--executor slurm needs Slurm's sbatch on this machine (a cluster's login node); "
                            "use --executor local here")
    if ex.kind != "local":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise LambenchError(f"--executor {ex.kind} needs submitit: pip install submitit") from None


def make_executor(ex: ExecutorConfig, folder: Path, name: str):
    import submitit
    cluster = "slurm" if ex.kind == "slurm" else "local"
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    procs = max(1, ex.gpus_per_job)
    params = dict(name=name, timeout_min=ex.time_min, nodes=1, tasks_per_node=procs, gpus_per_node=ex.gpus_per_job,
                  slurm_array_parallelism=ex.array_parallelism)
    if ex.partition:
        params["slurm_partition"] = ex.partition
    if ex.cpus_per_task:
        params["cpus_per_task"] = ex.cpus_per_task
    executor.update_parameters(**params)
    return executor


def submit_and_wait(cfg, jobs: list, run_dir: Path, ex: ExecutorConfig, log=print, accepted=None) -> list[str]:
    """Submit ``jobs`` (unfinished ones) as one job array, wait for all of them; return one line per failure.
    ``accepted()`` is called once the scheduler has accepted the array, before any waiting."""
    if not jobs:
        return []
    cfg = dataclasses.replace(cfg, progress=False, force=False)  # logs are files; --force acted already
    folder = run_dir / "slurm"
    procs = max(1, ex.gpus_per_job)
    try:
        executor = make_executor(ex, folder, f"lambench-{run_dir.name}")
        submitted = executor.map_array(Task(), [cfg] * len(jobs), jobs, [str(run_dir)] * len(jobs), [procs] * len(jobs))
    except Exception as exc:  # noqa: BLE001 - sbatch refused (partition, limits): one line naming it
        raise LambenchError(f"submitting {len(jobs)} job(s) to {ex.kind} failed: {_one_line(exc)}") from None
    if accepted is not None:
        accepted()
    log(f"submitted {len(jobs)} job(s) ({ex.kind}: {', '.join(j.job_id for j in submitted)}); logs in {folder}")
    failures = []
    for job, sub in zip(jobs, submitted):
        try:
            sub.results()  # (every task's: result() refuses a job of several tasks)
            log(f"  finished {job.name}")
        except Exception as exc:  # noqa: BLE001 - a failed job is reported, the others go on
            failures.append(f"{job.name}: {_one_line(exc)} (log: {sub.paths.stderr})")
            log(f"  FAILED {failures[-1]}")
    return failures


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return last if len(last) <= 300 else last[:297] + "..."


try:  # requeued with the same arguments at a Slurm timeout or preemption: the job resumes from its checkpoint
    from submitit.helpers import Checkpointable as _Base
except ImportError:  # pragma: no cover - check() names the fix before anything is submitted
    _Base = object


class Task(_Base):
    """One job in a fresh process: joins a process group when the job has several tasks, then runs it."""

    def __call__(self, cfg, job, run_dir: str, processes: int = 1) -> str:
        if processes > 1:
            import submitit
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        from .runner import run_one
        from .store import write_json
        run_dir = Path(run_dir)
        if int(os.environ.get("RANK", "0")) == 0:
            write_json(run_dir / job.name / "task.json", {
                "executor": os.environ.get("SUBMITIT_EXECUTOR", ""), "host": socket.gethostname(),
                "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
                "submitit_job_id": os.environ.get("SUBMITIT_LOCAL_JOB_ID", os.environ.get("SLURM_ARRAY_JOB_ID", "")),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
        run_one(cfg, job, run_dir)
        return job.name
