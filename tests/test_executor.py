"""A sweep through submitit's local executor (the ``--executor slurm`` path with local processes): one job
is killed mid-way, the command is rerun, and the final table holds every row exactly once. The parent
(``run_all.main``) runs in this process, the jobs in their own."""
import json
import os
import signal
import threading
import time

import pandas as pd
import pytest

import run_all

pytest.importorskip("submitit")

# two jobs (PGD-AT at training lambdas 0 and 1), each a fresh process: 4 epochs of 8 steps
SWEEP = ["--methods", "pgd_at", "--train-lambdas", "0,1", "--train-attack", "fgsm_rs", "--subset", "256",
         "--epochs", "4", "--batch-size", "32", "--eval-n", "100", "--eval", "pgd5", "--aa", "off",
         "--checks", "off", "--complexity", "off", "--device", "cpu", "--no-progress", "--no-report",
         "--executor", "submitit-local", "--slurm-gpus-per-job", "0", "--slurm-time", "10"]
KEY = ["job", "lambda", "metric", "attack"]
VICTIM = "pgd_at-digits-small_cnn-s0-tl1"
OTHER = "pgd_at-digits-small_cnn-s0-tl0"


def _run(argv, capsys):
    """``python run_all.py ARGV`` in this process (its imports are paid already): (exit code, stdout, stderr)."""
    code = run_all.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_sweep_survives_a_killed_job(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # for the submitted processes
    argv = [*SWEEP, "--out", str(tmp_path), "--run", "sweep"]
    run_dir = tmp_path / "sweep"
    victim = run_dir / VICTIM
    result = {}
    parent = threading.Thread(target=lambda: result.update(code=run_all.main(argv)))
    parent.start()
    try:
        deadline = time.monotonic() + 120
        while not ((victim / "checkpoint.pt").exists() and (victim / "task.json").exists()):
            assert parent.is_alive(), capsys.readouterr()
            assert time.monotonic() < deadline, "the victim never finished an epoch"
            time.sleep(0.01)
        os.kill(json.loads((victim / "task.json").read_text())["pid"], signal.SIGKILL)  # mid-way
    finally:
        parent.join(timeout=180)
    out, err = capsys.readouterr()
    assert result.get("code") == 2, out + err
    assert "1 of 2 jobs failed" in err and err.count("\n") == 1      # one line, naming the rerun
    assert f"FAILED {VICTIM}:" in out and f"finished {OTHER}" in out
    assert not (victim / "rows.csv").exists()                       # killed before it finished
    first = pd.read_csv(run_dir / "results.csv")                    # the finished job's rows only
    assert set(first["job"]) == {OTHER} and not first.duplicated(KEY).any()
    assert len(list((run_dir / "slurm").glob("*_log.out"))) == 2

    # resubmit: only the killed job runs again, resuming from its checkpoint
    code, out, err = _run(argv, capsys)
    assert code == 0, out + err
    assert "1 finished already, 1 to run" in out and "submitted 1 job(s)" in out
    victim_log = max((run_dir / "slurm").glob("*_log.out"), key=lambda p: p.stat().st_mtime).read_text()
    assert f"resuming {VICTIM} from epoch" in victim_log
    final = pd.read_csv(run_dir / "results.csv")
    assert not final.duplicated(KEY).any()
    assert final["job"].value_counts().to_dict() == {OTHER: len(first), VICTIM: len(first)}
    assert final[final["job"] == OTHER].reset_index(drop=True).equals(first)   # kept as it was
    assert pd.read_csv(victim / "epochs.csv")["epoch"].tolist() == [1, 2, 3, 4]


def test_a_job_of_two_tasks_finishes(tmp_path, capsys, monkeypatch):
    """A job run as two processes (--slurm-gpus-per-job 2: two submitit tasks joined in one process group,
    gloo on the CPU) is reported finished, not failed: its tasks' results are read with results() (result()
    raised for every such job, after it had written its rows). A batch size the two cannot share is refused
    before run.json is touched, and --force loses no finished job to a submission the scheduler refuses."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    two = [a for a in SWEEP if a not in ("--slurm-gpus-per-job", "0")] + ["--slurm-gpus-per-job", "2"]
    two[two.index("0,1")] = "1"
    two[two.index("--epochs") + 1] = "1"
    argv = [*two, "--out", str(tmp_path), "--run", "pair"]
    code, out, err = _run(argv, capsys)
    assert code == 0, out + err
    assert f"finished {VICTIM}" in out and "FAILED" not in out
    table = pd.read_csv(tmp_path / "pair" / "results.csv")
    assert set(table["job"]) == {VICTIM} and "clean_acc" in set(table["metric"])
    before = (tmp_path / "pair" / "run.json").read_text()
    code, out, err = _run([*argv, "--batch-size", "33", "--force"], capsys)
    assert code == 2 and "--batch-size 33 is not divisible by the 2 processes" in err, out + err
    assert (tmp_path / "pair" / "run.json").read_text() == before
    assert (tmp_path / "pair" / VICTIM / "rows.csv").exists()  # --force deleted nothing: refused first
    # a submission the scheduler refuses: --force had put the job's folder aside, and puts it back
    rows = (tmp_path / "pair" / VICTIM / "rows.csv").read_text()

    def refuse(*args, **kwargs):
        raise RuntimeError("sbatch: error: invalid partition specified")
    monkeypatch.setattr("harness.executor.make_executor", refuse)
    code, out, err = _run([*argv, "--force"], capsys)
    assert code == 2 and "invalid partition" in err, out + err
    assert (tmp_path / "pair" / VICTIM / "rows.csv").read_text() == rows
    assert not (tmp_path / "pair" / ".forced").exists()
    # a command stopped while the folders were aside (killed before the scheduler answered): the next one
    # puts them back, and finds the job done
    (tmp_path / "pair" / ".forced").mkdir()
    (tmp_path / "pair" / VICTIM).rename(tmp_path / "pair" / ".forced" / VICTIM)
    monkeypatch.undo()
    code, out, err = _run(argv, capsys)
    assert code == 0 and "1 finished already, 0 to run" in out, out + err
    assert (tmp_path / "pair" / VICTIM / "rows.csv").read_text() == rows
    assert not (tmp_path / "pair" / ".forced").exists()
