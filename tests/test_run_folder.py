"""A run folder never holds figures a reader cannot trust: seeds of one model agree on every setting, a
job's data is part of its identity, a stopped re-evaluation is never taken for a finished one, damaged store
files are one-line errors (or rescored), and training cost names the device it was measured on."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import run_all
from harness.device import device_name
from harness.store import load_checkpoint, save_checkpoint

QUICK = ["--methods", "pgd_at", "--epochs", "1", "--subset", "64", "--eval-n", "16", "--aa", "off",
         "--checks", "off", "--complexity", "off", "--no-report", "--no-progress"]
JOB = "pgd_at-digits-small_cnn-s0-tl1"


def _main(capsys, *argv):
    code = run_all.main(list(argv))
    return code, capsys.readouterr()


def test_seeds_of_one_model_trained_or_scored_otherwise_are_refused(tmp_path, capsys):
    """The report averages a model's seeds; a second command adding seed 1 with other --epochs (or another
    --eval-n) would have had it average two experiments. It is refused, naming what differs; a new
    --lambdas grid is not a difference."""
    out = ["--out", str(tmp_path)]
    assert _main(capsys, *QUICK, *out)[0] == 0
    code, io = _main(capsys, *QUICK, *out, "--seeds", "1", "--epochs", "2")
    assert code == 2 and "seed 0" in io.err and "train.epochs: 1 -> 2" in io.err and "--run" in io.err
    assert io.err.count("\n") == 1
    code, io = _main(capsys, *QUICK, *out, "--seeds", "1", "--eval-n", "24")
    assert code == 2 and "evaluated with other settings" in io.err and "n: 16 -> 24" in io.err
    assert not (tmp_path / "smoke" / "pgd_at-digits-small_cnn-s1-tl1").exists(), "refused before any work"
    assert _main(capsys, *QUICK, *out, "--seeds", "0,1", "--eval-n", "24")[0] == 0, "both seeds, same settings"
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert set(table.loc[table.metric == "clean_acc", "n"]) == {24}
    other_lambdas = ["--methods", "float", "--lambdas", "0,1", "--eval-n", "24"]
    assert _main(capsys, *QUICK, *other_lambdas, *out, "--seeds", "0")[0] == 0
    assert _main(capsys, *QUICK, *out, "--methods", "float", "--seeds", "1", "--eval-n", "24")[0] == 0, \
        "another grid is fine"


def test_models_compared_in_one_figure_share_the_evaluation(tmp_path, capsys):
    """The report puts the methods of one dataset, architecture and eps in one figure: a method scored with
    --eval-n 24 beside one scored with 16 would be compared on other examples. It is refused before any
    work, naming the fix; following it works, even where the two models were trained with other flags (each
    command is refused because of the other: the fix must not send the user round in a circle), and
    scoring the first again does not retrain it; another eps is another figure, so its protocol may differ."""
    out = ["--out", str(tmp_path)]
    assert _main(capsys, *QUICK, *out)[0] == 0
    before = pd.read_csv(tmp_path / "smoke" / "results.csv")
    code, io = _main(capsys, *QUICK, *out, "--methods", "fast_at", "--eval-n", "24", "--epochs", "2")
    assert code == 2 and "n: 16 -> 24" in io.err and "deleting its eval.json" in io.err
    assert io.err.count("\n") == 1
    assert not (tmp_path / "smoke" / "fast_at-digits-small_cnn-s0").exists(), "refused before any work"
    (tmp_path / "smoke" / JOB / "eval.json").unlink()  # the fix named: pgd_at set aside
    assert _main(capsys, *QUICK, *out, "--methods", "fast_at", "--eval-n", "24", "--epochs", "2")[0] == 0
    assert _main(capsys, *QUICK, *out, "--eval-n", "24")[0] == 0, "pgd_at scored again, with its own flags"
    assert set(pd.read_csv(tmp_path / "smoke" / "results.csv")["method"]) == {"pgd_at", "fast_at"}
    shutil.rmtree(tmp_path / "smoke" / "fast_at-digits-small_cnn-s0")
    assert _main(capsys, *QUICK, *out)[0] == 0, "back to n = 16: scored again from the cached lambdas"
    code, io = _main(capsys, *QUICK, *out, "--methods", "pgd_at", "--train-lambdas", "0", "--eval-n", "24")
    assert code == 2 and "pgd_at-digits-small_cnn-s0-tl1 (pgd_at)" in io.err, "PGD-AT at another λ: compared too"
    # what the compared accuracies do not depend on may differ: batching, complexity, checks, an unused --aa-n
    besides = ["--eval-batch-size", "7", "--complexity", "on", "--checks", "on", "--checks-n", "8", "--aa-n", "5"]
    assert _main(capsys, *QUICK, *out, "--methods", "fast_at", *besides)[0] == 0
    shutil.rmtree(tmp_path / "smoke" / "fast_at-digits-small_cnn-s0")
    assert _main(capsys, *QUICK, *out, "--methods", "fast_at", "--eval-n", "24", "--eps", "0.2")[0] == 0
    assert _main(capsys, *QUICK, *out, "--eval-n", "24")[0] == 0, "pgd_at scored again: the fix named"
    after = pd.read_csv(tmp_path / "smoke" / "results.csv")
    pgd = (after.method == "pgd_at") & (after.metric == "clean_acc")
    assert set(after.loc[pgd, "n"]) == {24}, "scored again under the new settings"
    time = lambda t: t.loc[(t.method == "pgd_at") & (t.metric == "train_time_s"), "value"].tolist()
    assert time(after) == time(before), "not retrained"


def _npz_folder(path, flip_test):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (96, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, 96)
    path.mkdir()
    np.savez(path / "train.npz", x=x[:64], y=y[:64])
    np.savez(path / "test.npz", x=255 - x[64:] if flip_test else x[64:], y=y[64:])
    return str(path)


def test_a_job_on_other_data_is_not_taken_for_the_one_done(tmp_path, capsys):
    """Two data roots with the same training split and another test set: the job's finished rows belong to
    the first; under the second root the job is refused (its data's fingerprint differs), not skipped."""
    quick = [a for a in QUICK if a not in ("--subset", "64")]
    out = ["--out", str(tmp_path / "out"), "--dataset", "npz"]
    a, b = _npz_folder(tmp_path / "a", False), _npz_folder(tmp_path / "b", True)
    assert _main(capsys, *quick, *out, "--data-root", a)[0] == 0
    assert _main(capsys, *quick, *out, "--data-root", a)[1].out.count("done already") == 1
    code, io = _main(capsys, *quick, *out, "--data-root", b)
    assert code == 2 and "trained with other settings (data:" in io.err and "--force" in io.err


def test_another_model_on_other_data_of_the_same_name_is_refused(tmp_path, capsys):
    """Two --data-root folders of one dataset name: another method scored on the second would be compared
    with the first's in one figure, on other test images; it is refused before any work."""
    quick = [a for a in QUICK if a not in ("--subset", "64")]
    out = ["--out", str(tmp_path / "out"), "--dataset", "npz"]
    a, b = _npz_folder(tmp_path / "a", False), _npz_folder(tmp_path / "b", True)
    assert _main(capsys, *quick, *out, "--data-root", a)[0] == 0
    code, io = _main(capsys, *quick, *out, "--data-root", b, "--methods", "fast_at")
    assert code == 2 and "other data under the name npz" in io.err and io.err.count("\n") == 1
    assert _main(capsys, *quick, *out, "--data-root", a, "--methods", "fast_at")[0] == 0


def test_a_stopped_reevaluation_never_marks_old_rows_as_new(tmp_path, capsys, monkeypatch):
    """A job re-evaluated under new settings drops its eval.json first and writes it after rows.csv: stopped
    in between, its rows.csv (old settings) is never taken for rows of the new ones."""
    from harness import evaluate
    out = ["--out", str(tmp_path)]
    job = tmp_path / "smoke" / JOB
    assert _main(capsys, *QUICK, *out)[0] == 0
    real = evaluate._score_lambda

    def stop(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "_score_lambda", stop)
    assert _main(capsys, *QUICK, *out, "--eval-n", "24")[0] == 130
    assert (job / "rows.csv").exists() and not (job / "eval.json").exists()
    monkeypatch.setattr(evaluate, "_score_lambda", real)
    # another seed at yet other settings: seed 0's old rows are not the run's, so nothing is averaged
    assert _main(capsys, *QUICK, *out, "--seeds", "1", "--eval-n", "32")[0] == 0
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert set(table["seed"]) == {1} and set(table.loc[table.metric == "clean_acc", "n"]) == {32}
    code, io = _main(capsys, *QUICK, *out, "--seeds", "0,1", "--eval-n", "32")
    assert code == 0 and "done already" in io.out and io.out.count("done already") == 1  # seed 1's
    rows = pd.read_csv(job / "rows.csv")
    assert set(rows.loc[rows.metric == "clean_acc", "n"]) == {32}
    assert json.loads((job / "eval.json").read_text())["n"] == 32
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert set(table["seed"]) == {0, 1} and set(table.loc[table.metric == "clean_acc", "n"]) == {32}


def test_a_stopped_command_never_leaves_one_jobs_old_rows_beside_anothers_new(tmp_path, capsys, monkeypatch):
    """Two methods scored again under a new --eval-n, stopped while scoring the second: results.csv holds the
    first's new rows and not the second's old ones (its eval.json went before any work), so the report never
    compares n = 24 with n = 16; the same command again finishes the second."""
    from harness import evaluate
    out = ["--out", str(tmp_path)]
    both = ["--methods", "pgd_at,fast_at"]
    assert _main(capsys, *QUICK, *out, *both)[0] == 0
    real, calls = evaluate._score_lambda, []

    def stop_on_the_second(*args):
        calls.append(args[0].name)
        if args[0].name == "fast_at":
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(evaluate, "_score_lambda", stop_on_the_second)
    assert _main(capsys, *QUICK, *out, *both, "--eval-n", "24")[0] == 130
    assert calls == ["pgd_at", "fast_at"]
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert set(table["method"]) == {"pgd_at"} and set(table.loc[table.metric == "clean_acc", "n"]) == {24}
    monkeypatch.setattr(evaluate, "_score_lambda", real)
    assert _main(capsys, *QUICK, *out, *both, "--eval-n", "24")[0] == 0
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert set(table["method"]) == {"pgd_at", "fast_at"} and set(table.loc[table.metric == "clean_acc", "n"]) == {24}


def test_a_refused_or_stopped_command_keeps_the_runs_table(tmp_path, capsys, monkeypatch):
    """Nothing leaves results.csv before a command's work starts, unless its protocol changes: an unknown
    --arch is refused before any work; a command that only re-batches the evaluation, stopped, keeps every
    job's rows; --force with the submitit executor is refused before it deletes a job."""
    from harness import evaluate
    out = ["--out", str(tmp_path)]
    both = ["--methods", "pgd_at,fast_at"]
    assert _main(capsys, *QUICK, *out, *both)[0] == 0
    before = pd.read_csv(tmp_path / "smoke" / "results.csv")
    code, io = _main(capsys, *QUICK, *out, *both, "--arch", "smal_cnn,small_cnn", "--eval-n", "24")
    assert code == 2 and "unknown architecture 'smal_cnn'" in io.err
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "smoke" / "results.csv"), before)

    def stop(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(evaluate, "_score_lambda", stop)
    assert _main(capsys, *QUICK, *out, *both, "--eval-batch-size", "7")[0] == 130
    after = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert set(after["job"]) == set(before["job"]), "a new batch size alone keeps the rows"
    monkeypatch.undo()
    code, io = _main(capsys, *QUICK, *out, "--methods", "fast_at", "--eval-n", "24", "--force",
                     "--executor", "submitit-local")
    assert code == 2 and "evaluated with other settings" in io.err
    assert (tmp_path / "smoke" / "fast_at-digits-small_cnn-s0" / "checkpoint.pt").exists()


def test_a_stopped_force_run_never_leaves_old_seeds_beside_retrained_ones(tmp_path, capsys, monkeypatch):
    """--force retrains every job of the command: stopped at its second job, results.csv holds the retrained
    first seed only, not the first beside the second's old model (trained with other settings)."""
    from harness import runner
    out = ["--out", str(tmp_path)]
    assert _main(capsys, *QUICK, *out, "--seeds", "0,1")[0] == 0
    real, started = runner.run_job, []

    def stop_at_the_second(job, *args, **kwargs):
        started.append(job.name)
        if len(started) == 2:
            raise KeyboardInterrupt
        return real(job, *args, **kwargs)
    monkeypatch.setattr(runner, "run_job", stop_at_the_second)
    assert _main(capsys, *QUICK, *out, "--seeds", "0,1", "--epochs", "2", "--force")[0] == 130
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert set(table["seed"]) == {0} and set(table.loc[table.metric == "epochs_trained", "value"]) == {2}


@pytest.mark.parametrize("eval_n, kept", [("8", False), ("16", True)])
def test_a_failed_cluster_task_leaves_no_old_protocol_rows(tmp_path, capsys, monkeypatch, eval_n, kept):
    """With --executor, each task drops its own job's eval.json; a task that died before it started (node
    lost, cancelled) left its job's old rows, which under a new protocol do not belong beside the others'
    new ones: they leave the run's table (rows and checkpoint stay). Under the same protocol they stay."""
    from harness import runner
    out = ["--out", str(tmp_path)]
    assert _main(capsys, *QUICK, *out)[0] == 0
    monkeypatch.setattr(runner, "submit_and_wait", lambda cfg, todo, *a, **k: [f"{j.name}: lost" for j in todo])
    code, _ = _main(capsys, *QUICK, *out, "--eval-n", eval_n, "--eval-batch-size", "7",
                    "--executor", "submitit-local")
    assert code == 2
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert (len(table) > 0) == kept and (tmp_path / "smoke" / JOB / "rows.csv").exists()


def test_damaged_store_files_are_one_line_errors_or_scored_again(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    job = tmp_path / "smoke" / JOB
    assert _main(capsys, *QUICK, *out)[0] == 0
    (job / "eval.json").write_text('{"n": ')  # the marker of finished rows, cut short: score again
    code, io = _main(capsys, *QUICK, *out)
    assert code == 0 and "done already" not in io.out and json.loads((job / "eval.json").read_text())["n"] == 16
    (job / "config.json").write_text('{"method": ')
    code, io = _main(capsys, *QUICK, *out)
    assert code == 2 and io.err.count("\n") == 1 and "config.json is damaged" in io.err
    assert "delete its folder" in io.err  # the named fix, for that job alone (--force would redo every job)
    shutil.rmtree(job)
    assert _main(capsys, *QUICK, *out)[0] == 0
    state = load_checkpoint(job / "checkpoint.pt")
    del state["rng"]
    save_checkpoint(job / "checkpoint.pt", state)
    (job / "eval.json").unlink()
    code, io = _main(capsys, *QUICK, *out)
    assert code == 2 and io.err.count("\n") == 1 and "does not fit this job" in io.err and "delete it" in io.err
    (job / "checkpoint.pt").unlink()
    assert _main(capsys, *QUICK, *out)[0] == 0
    for other, blocks in (("fast_at-digits-small_cnn-s0", False), ("pgd_at-digits-small_cnn-s1-tl1", True)):
        (tmp_path / "smoke" / other).mkdir()
        (tmp_path / "smoke" / other / "config.json").write_text("{")
        code, io = _main(capsys, *QUICK, *out)
        assert code == (2 if blocks else 0), "only a seed of this command's model is this command's business"
        if blocks:
            assert io.err.count("\n") == 1 and "delete that folder" in io.err
        shutil.rmtree(tmp_path / "smoke" / other)
    (tmp_path / "smoke" / "other-job").mkdir()
    (tmp_path / "smoke" / "other-job" / "rows.csv").write_text("")
    (tmp_path / "smoke" / "other-job" / "eval.json").write_text("{}")
    code, io = _main(capsys, *QUICK, *out)
    assert code == 2 and io.err.count("\n") == 1 and "rows.csv is damaged" in io.err


def test_jobs_from_before_data_fingerprints_still_resume(tmp_path, capsys):
    """A config.json written before jobs held their data's fingerprint is taken as this data (as it was
    then), not refused: a long run started with an older lambench resumes and takes more seeds."""
    out = ["--out", str(tmp_path)]
    config = tmp_path / "smoke" / JOB / "config.json"
    assert _main(capsys, *QUICK, *out)[0] == 0
    old = json.loads(config.read_text())
    del old["data"]
    config.write_text(json.dumps(old))
    code, io = _main(capsys, *QUICK, *out, "--seeds", "0,1")
    assert code == 0 and io.out.count("done already") == 1


def test_training_cost_names_the_device_it_was_measured_on(tmp_path, capsys):
    """A job trained on a GPU and re-scored on the CPU (a new --eval-n) keeps its training figures labelled
    with the GPU and bf16; the evaluation's rows say cpu. Here the checkpoint's history is edited to stand
    for epochs trained elsewhere."""
    out = ["--out", str(tmp_path)]
    job = tmp_path / "smoke" / JOB
    assert _main(capsys, *QUICK, *out)[0] == 0
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    here = device_name(torch.device("cpu"))  # "cpu (<model>, <n> threads)"
    assert here.startswith("cpu (") and f", {torch.get_num_threads()} thread" in here
    assert set(table["device"]) == {here} and set(table["precision"]) == {"fp32"}
    state = load_checkpoint(job / "checkpoint.pt")
    for record in state["history"]:
        record.update(device="NVIDIA H100 80GB HBM3", precision="bf16")
    save_checkpoint(job / "checkpoint.pt", state)
    assert _main(capsys, *QUICK, *out, "--eval-n", "24", "--complexity", "on")[0] == 0
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    cost = table.metric.isin(["train_time_s", "train_images_per_s", "train_peak_mem_mb", "epochs_trained"])
    assert set(table.loc[cost, "device"]) == {"NVIDIA H100 80GB HBM3"} and set(table.loc[cost, "precision"]) == {"bf16"}
    assert set(table.loc[table.metric == "clean_acc", "device"]) == {here}
    assert set(table.loc[table.metric == "eval_time_s", "device"]) == {here}
    # accuracy: the model's precision (it was trained in bf16), not what "auto" means on this device; what
    # evaluation measures itself (counts, timings) is fp32, the precision it runs in
    assert set(table.loc[table.metric.isin(["clean_acc", "pgd_acc"]), "precision"]) == {"bf16"}
    measured = ["macs", "nonzero_params", "params", "stored_params", "infer_latency_ms", "eval_time_s"]
    assert set(table.loc[table.metric.isin(measured), "precision"]) == {"fp32"}


@pytest.mark.parametrize("argv, expected", [
    (["--epochs", "0"], "--epochs must be a whole number of at least 1"),
    (["--epochs", "-1"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"),
    (["--eval-batch-size", "-1"], "--eval-batch-size"),
    (["--eval-n", "0"], "--eval-n"),
    (["--eval-n", "-5"], "--eval-n"),
    (["--lr", "-0.1"], "--lr -0.1 is outside (0, inf]"),
    (["--eps", "-0.1"], "--eps"),
    (["--eps", "2"], "--eps 2.0 is outside (0, 1]"),
    (["--attack-step", "-1"], "--attack-step"),
    (["--device", "foo"], "--device 'foo' is not a device"),
    (["--methods", ","], "--methods is empty"),
])
def test_bad_numbers_are_one_line_errors_before_any_work(tmp_path, capsys, argv, expected):
    code, io = _main(capsys, *QUICK, "--out", str(tmp_path), *argv)
    assert code == 2 and io.err.count("\n") == 1 and expected in io.err and io.err.startswith("lambench: error:")
    assert not any(tmp_path.iterdir()), "nothing written before the input is checked"


def test_rows_cut_short_are_scored_again_and_a_results_csv_cut_short_is_warned_of(tmp_path, capsys):
    """A rows.csv cut short still parses; it was taken as finished (results.csv lost rows, silently). Now
    eval.json holds the digest of the rows.csv it was written for, so the job is scored again, to the same
    accuracies (each lambda's saved rows, edited here into junk, are not reused). A results.csv cut short
    beside whole rows.csv is the report's warning."""
    from report.load import load_run
    from report.notes import stale_results
    out = ["--out", str(tmp_path)]
    assert _main(capsys, *QUICK, *out)[0] == 0
    run = tmp_path / "smoke"
    full = pd.read_csv(run / "results.csv")
    rows = run / JOB / "rows.csv"
    rows.write_text(rows.read_text()[:300])
    for saved in (run / JOB / "lambdas").glob("*.json"):
        saved.write_text("[1]")
    code, io = _main(capsys, *QUICK, *out)
    assert code == 0 and "done already" not in io.out
    again = pd.read_csv(run / "results.csv")
    assert len(again) == len(full)
    acc = ["clean_acc", "pgd_acc"]
    assert again[again["metric"].isin(acc)]["value"].tolist() == full[full["metric"].isin(acc)]["value"].tolist()
    assert _main(capsys, *QUICK, *out)[1].out.count("done already") == 1
    assert stale_results(load_run(run)) == []
    full.head(3).to_csv(run / "results.csv", index=False)
    warned = stale_results(load_run(run))
    assert len(warned) == 1 and JOB in warned[0] and "reassemble" in warned[0]
    full.assign(value=full["value"].where(full["metric"] != "pgd_acc", 1.0)).to_csv(run / "results.csv", index=False)
    assert len(stale_results(load_run(run))) == 1, "edited values, as many rows: still not the jobs' rows"


def test_a_refused_command_leaves_the_run_folder_as_it_was(tmp_path, capsys):
    """A command that stops before any work (data not found, a job trained otherwise) leaves run.json, the
    report's record of how the results were produced, as it was, and makes no folder for a new run."""
    out = ["--out", str(tmp_path)]
    assert _main(capsys, *QUICK, *out)[0] == 0
    before = (tmp_path / "smoke" / "run.json").read_text()
    missing = ["--dataset", "npz", "--data-root", str(tmp_path / "nothing")]
    assert _main(capsys, *QUICK, *out, *missing)[0] == 2
    assert _main(capsys, *QUICK, *out, "--epochs", "2")[0] == 2  # trained otherwise: refused
    assert (tmp_path / "smoke" / "run.json").read_text() == before
    assert _main(capsys, *QUICK, *out, *missing, "--run", "fresh")[0] == 2
    assert not (tmp_path / "fresh").exists()


def test_a_write_cut_short_leaves_no_file_behind_once_the_job_runs_again(tmp_path, capsys):
    """A kill during an atomic write leaves its temporary file (a checkpoint's is as large as the model):
    the job's next run removes it; a finished job's folder is not touched."""
    out = ["--out", str(tmp_path)]
    job = tmp_path / "smoke" / JOB
    assert _main(capsys, *QUICK, *out)[0] == 0
    stale = job / ".checkpoint.pt.x1y2z3.tmp"
    stale.write_bytes(b"\0" * 1024)
    assert _main(capsys, *QUICK, *out)[0] == 0  # done already: nothing runs
    assert stale.exists()
    assert _main(capsys, *QUICK, *out, "--eval-n", "24")[0] == 0  # scored again
    assert not stale.exists() and (job / "checkpoint.pt").exists()
