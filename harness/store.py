"""The results store: atomic writes, checkpoints, and the run's tidy ``results.csv``.

Layout of ``<out>/<run>/``:
  <job>/config.json     what the model was trained with (its identity)
  <job>/checkpoint.pt   written atomically at the end of every epoch; ``finished`` once training is done
  <job>/epochs.csv      per-epoch loss, accuracy, images/s, wall-clock, CUDA peak memory
  <job>/rows.csv        this job's evaluation rows
  <job>/eval.json       the evaluation settings rows.csv was produced with, written after it and removed
                        when the job is evaluated again: only rows.csv with its eval.json are finished
  <job>/lambdas/        each lambda's rows as soon as they are scored, with the evaluation settings and
                        the weights' fingerprint: a stopped evaluation resumes at the next lambda, and a
                        later one of the same weights under the same settings (another --lambdas) scores
                        only the lambdas not scored before
  results.csv           every finished job's rows: one row per job x lambda x metric
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import torch

from .atomic import write_atomic, write_text
from .errors import CheckpointError, StoreError

#: columns every results.csv has, in this order (later issues add metrics as rows, not columns)
COLUMNS = ["run", "job", "method", "dataset", "arch", "seed", "train_lambda", "lambda", "metric", "value",
           "attack", "eps", "n", "device", "torch", "precision"]


def result_row(lam: float, metric: str, value, n, attack: str = "", **extra) -> dict:
    """One result row: ``lam`` NaN for a job-wide figure; ``extra`` the optional columns (eps, precision)
    and a flag's ``detail``. ``assemble`` adds the job's columns."""
    return {"lambda": lam, "metric": metric, "value": value, "attack": attack, "n": n, **extra}


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path):
    """A store file's content; a damaged one (cut short, edited) is a one-line error naming the fix."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path} is damaged ({type(exc).__name__}); delete its folder (rerunning the command "
                         f"then redoes that job alone)") from None


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    write_text(path, frame.to_csv(index=False))


def save_checkpoint(path: Path, state: dict) -> None:
    write_atomic(path, lambda f: torch.save(state, f))


def digest(parts) -> str:
    """A short hex digest of ``(label, bytes-like)`` pairs: equal only for the very same content."""
    h = hashlib.blake2b(digest_size=16)
    for label, data in parts:
        h.update(f"{label};".encode())
        h.update(data)
    return h.hexdigest()


def fingerprint(model: torch.nn.Module) -> str:
    """A digest of every tensor of ``model``'s state (weights, BN statistics, masks, alphas): equal only for
    the very same trained model, whatever its memory layout or device."""
    tensors = ((name, t.detach().to("cpu").contiguous()) for name, t in sorted(model.state_dict().items()))
    return digest((f"{name}:{t.dtype}:{tuple(t.shape)}", t.reshape(-1).view(torch.uint8).numpy())
                  for name, t in tensors)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``; a damaged file is a one-line error naming the fix."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(exc).__name__}); delete it "
                              f"(rerunning the command then retrains that job alone)") from None


def assemble(run_dir: Path) -> pd.DataFrame:
    """Rebuild ``results.csv`` from the finished jobs' own rows (in any order, each exactly once)."""
    run_dir = Path(run_dir)
    frames = [_read_rows(p) for p in sorted(run_dir.glob("*/rows.csv"))
              if finished_settings(p.parent) is not None]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    extra = [c for c in table.columns if c not in COLUMNS]
    table = table[[c for c in COLUMNS if c in table.columns] + extra]
    write_csv(run_dir / "results.csv", table)
    return table


def finished_settings(job_dir: Path) -> dict | None:
    """The evaluation settings of the job's finished rows.csv: its eval.json, written after it, without the
    rows' digest it keeps. None where there is no rows.csv, no eval.json (a job being evaluated again: its old
    rows are not the run's until new ones replace them), a damaged one, or a rows.csv that is not the one
    eval.json was written for (cut short or edited): the job is scored again, from each lambda's rows kept
    apart where they are still there."""
    if not (job_dir / "rows.csv").exists():
        return None
    try:
        settings = read_json(job_dir / "eval.json")
        if not isinstance(settings, dict):
            return None
        written = settings.pop(ROWS_DIGEST, None)  # an older lambench's eval.json has none: taken as it is
        if written is not None and written != rows_digest(job_dir / "rows.csv"):
            return None
    except (StoreError, OSError):
        return None
    return settings


#: the key of eval.json that holds a digest of the rows.csv it was written for
ROWS_DIGEST = "rows_digest"


def rows_digest(path: Path) -> str:
    return digest([("rows.csv", Path(path).read_bytes())])


def _read_rows(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as exc:  # EmptyDataError is a ValueError
        raise StoreError(f"{path} is damaged ({type(exc).__name__}); delete it (rerunning the command "
                         f"then scores that job again)") from None


class LambdaRows:
    """The rows of each (variant, lambda) an evaluation has scored, one JSON file each in ``folder``, kept
    with the settings they were computed under and reused only under the same ones: an evaluation that is
    stopped (preempted, killed, out of time) resumes at the lambda it was scoring, and one over another
    lambda grid (``--lambdas``) scores only the lambdas it has no rows for. The settings name the device and
    torch version too, so rows measured elsewhere are never passed off as this machine's, and the trained
    weights' ``fingerprint``, so rows of a model trained again (its checkpoint deleted) are reused only
    where the new training gave the very same weights. ``reused_s`` adds up the scoring time of the lambdas
    given back, so a job's evaluation time counts every lambda once."""

    def __init__(self, folder: Path, settings: dict):
        self.folder, self.settings = Path(folder), json.loads(json.dumps(settings))
        self.reused_s = 0.0

    def _path(self, variant: str, lam: float) -> Path:
        return self.folder / f"{variant or 'model'}-lambda{lam!r}.json"

    def get(self, variant: str, lam: float) -> list[dict] | None:
        if not self._path(variant, lam).exists():
            return None
        try:
            saved = read_json(self._path(variant, lam))
        except StoreError:  # a file cut short is not a result
            return None
        if (not isinstance(saved, dict) or saved.get("settings") != self.settings or saved.get("lambda") != lam
                or not isinstance(saved.get("rows"), list)):  # another's, or edited: not this lambda's rows
            return None
        self.reused_s += saved.get("seconds", 0.0)
        return saved["rows"]

    def put(self, variant: str, lam: float, rows: list[dict], seconds: float) -> None:
        write_json(self._path(variant, lam), {"settings": self.settings, "lambda": lam, "seconds": seconds,
                                              "rows": rows})
