"""One job on two processes (torchrun, gloo on CPU) against the same job on one process.

One torchrun launch (``tests/ddp_check.py``) first checks a single DDP step against the 1-process step
on the same global batch (gradients, updated weights, dual-BN statistics, masks broadcast from rank 0),
then runs ``run_all.main`` with the job's arguments, as ``torchrun run_all.py ARGS`` would.
"""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

import run_all
from conftest import ROOT

# PGD-AT at training lambda 0.5 (a clean and an adversarial pass per step), FGSM-RS, 4 epochs on the
# whole embedded digits training split, global batch 128 (64 per process)
JOB = ["--methods", "pgd_at", "--train-lambdas", "0.5", "--train-attack", "fgsm_rs", "--epochs", "4", "--lr", "0.2",
       "--batch-size", "128", "--eval-n", "300", "--eval", "pgd10", "--aa", "off", "--checks", "off",
       "--complexity", "off", "--no-progress", "--no-report", "--device", "cpu"]
KEY = ["job", "lambda", "metric", "attack"]
# what two runs of this job with different seeds differ by (seeds 0-3 on one process: clean 0.963-0.973,
# PGD-10 0.637-0.680): the 2-process run shards the data and draws its own random numbers, so it matches
# the 1-process run as another seed would, not bit for bit (one step on the same batch matches exactly)
CLEAN_TOL, PGD_TOL, LOSS_TOL = 0.03, 0.08, 0.25


def _torchrun(*args, timeout=240):
    # PYTHONPATH: ddp_check.py imports harness whether or not the project is installed
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available in this build")
def test_two_gloo_processes_match_one(tmp_path):
    two = _torchrun(str(ROOT / "tests" / "ddp_check.py"), "--", *JOB, "--out", str(tmp_path), "--run", "two")
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-4000:]

    # one DDP step equals the 1-process step on the same global batch
    step = json.loads(next(line for line in two.stdout.splitlines() if line.startswith("{")))
    assert step["world"] == 2
    assert abs(step["loss"] - step["ref_loss"]) < 1e-5
    assert step["grad_diff"] < 1e-5 and step["weight_diff"] < 1e-6
    assert step["bn_stats_diff"] < 1e-5            # dual BN synchronised across the ranks...
    assert step["clean_vs_adv_stats"] > 1e-3       # ...with bn_clean and bn_adv kept apart
    assert step["unused_params"] and all(n.endswith("alpha") for n in step["unused_params"])
    assert step["masks_equal_on_ranks"] == 2

    # the whole job, 1 process, same global batch
    assert run_all.main([*JOB, "--out", str(tmp_path), "--run", "one"]) == 0
    one = pd.read_csv(tmp_path / "one" / "results.csv")
    two_rows = pd.read_csv(tmp_path / "two" / "results.csv")

    # rank 0 alone wrote: one checkpoint, one epochs.csv, one set of rows, nothing half-written
    job_dir = tmp_path / "two" / "pgd_at-digits-small_cnn-s0-tl0.5"
    assert [p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("checkpoint.pt")] == \
           [job_dir.relative_to(tmp_path / "two") / "checkpoint.pt"]
    assert not list((tmp_path / "two").rglob("*.tmp"))
    assert len(pd.read_csv(job_dir / "epochs.csv")) == 4
    assert not two_rows.duplicated(KEY).any()
    assert len(two_rows) == len(one) and set(two_rows["metric"]) == set(one["metric"])
    rows = pd.read_csv(job_dir / "rows.csv")
    assert rows[two_rows.columns].equals(two_rows)

    def value(table, metric):
        return table.loc[table["metric"] == metric, "value"].item()

    assert abs(value(two_rows, "clean_acc") - value(one, "clean_acc")) <= CLEAN_TOL
    assert abs(value(two_rows, "pgd_acc") - value(one, "pgd_acc")) <= PGD_TOL
    assert value(two_rows, "epochs_trained") == 4
    loss_one = pd.read_csv(tmp_path / "one" / "pgd_at-digits-small_cnn-s0-tl0.5" / "epochs.csv")["loss"].iloc[-1]
    loss_two = pd.read_csv(job_dir / "epochs.csv")["loss"].iloc[-1]
    assert abs(loss_two - loss_one) <= LOSS_TOL * loss_one
    # every global batch counted once: the same number of images per epoch as on one process
    assert value(two_rows, "train_images_per_s") > 0
    # the training and evaluation times name the two processes that shared the work, so a report never
    # averages them with one process's (nor a one-process dedicated model's cost with them)
    shared = two_rows["metric"].str.startswith("train_") | two_rows["metric"].isin(["epochs_trained", "eval_time_s"])
    assert two_rows.loc[shared, "device"].str.startswith("2 × cpu (").all()
    assert not two_rows.loc[~shared, "device"].str.startswith("2 ×").any()  # accuracy, rank 0's timings
    assert not one["device"].str.contains("×").any()
    # and the command the run records is the launch it was: torchrun with its processes
    assert json.loads((tmp_path / "two" / "run.json").read_text())["command"].startswith(
        "torchrun --nproc-per-node 2 run_all.py -- --methods")
    assert json.loads((tmp_path / "one" / "run.json").read_text())["command"].startswith("python run_all.py --")
