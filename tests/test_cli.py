"""Bad input gets a one-line error naming the fix and a non-zero exit, never a traceback."""
import pytest
import torch

import run_all
from conftest import run_cli


def _main(capsys, *argv):
    code = run_all.main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def test_unknown_method_real_cli(tmp_path):
    proc = run_cli("--methods", "pgd_at,nope", "--out", str(tmp_path))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "unknown method 'nope'" in lines[0] and "pgd_at" in lines[0] and "fast_at" in lines[0]
    assert not any(tmp_path.iterdir()), "nothing may be written before the input is checked"


@pytest.mark.parametrize("argv, expected", [
    (["--train-lambdas", "0,1.5"], "outside [0, 1]"),
    (["--train-lambdas", "-0.1"], "outside [0, 1]"),
    (["--dataset", "cifar10", "--data-root", "/nonexistent/lambench"], "--data-root"),
    (["--dataset", "imagenet"], "unknown dataset"),
    (["--arch", "resnet999"], "unknown architecture"),
    (["--eval", "pgdx"], "unknown attack"),
    (["--train-attack", "cw"], "unknown attack"),
    (["--eps", "8/0"], "cannot read"),
    (["--subset", "0"], "--subset"),
    (["--clean-floor", "80"], "--clean-floor"),
    (["--lambdas", "0,1.5"], "outside [0, 1]"),
    (["--lambdas", ","], "--lambdas is empty"),
    (["--methods", "oat", "--lambdas", "0,0.5"], "--opt encoding=scalar"),
    (["--opt", "encoding=scalar"], "no method of this run has option encoding"),
    (["--executor", "slurm"], "sbatch"),
    (["--executor", "submitit-local", "--slurm-time", "0"], "--slurm-time"),
    # once a traceback, advice to delete a good checkpoint (meta), no attack at all, or a folder outside --out
    (["--device", "mps"], "cpu or cuda only"),
    (["--device", "meta"], "cpu or cuda only"),
    (["--eval", "", "--aa", "off"], "--eval is empty and --aa off"),
    (["--run", "../elsewhere"], "not a folder name"),
    (["--run", ""], "not a folder name"),
])
def test_bad_input_is_one_line(capsys, tmp_path, argv, expected):
    code, err = _main(capsys, "--methods", "pgd_at", "--out", str(tmp_path), "--no-progress", "--epochs", "1", *argv)
    assert code == 2
    assert err.count("\n") == 0 and expected in err and err.startswith("lambench: error:")


def test_missing_data_env_var(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LAMBENCH_DATA", str(tmp_path / "nothing-here"))
    code, err = _main(capsys, "--methods", "pgd_at", "--dataset", "svhn", "--out", str(tmp_path), "--no-progress")
    assert code == 2 and "svhn" in err and str(tmp_path / "nothing-here") in err and "--data-root" in err


def test_corrupt_checkpoint(capsys, tmp_path):
    job = tmp_path / "smoke" / "pgd_at-digits-small_cnn-s0-tl1"
    job.mkdir(parents=True)
    (job / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code, err = _main(capsys, "--methods", "pgd_at", "--out", str(tmp_path), "--no-progress", "--epochs", "1")
    assert code == 2 and "corrupt" in err and "delete it" in err and err.count("\n") == 0
    # deleting it is the named fix (not --force, which would retrain every job of the command), and it works
    (job / "checkpoint.pt").unlink()
    code, err = _main(capsys, "--methods", "pgd_at", "--out", str(tmp_path), "--no-progress", "--epochs", "1",
                      "--aa", "off", "--no-report")
    assert code == 0, err


def test_checkpoint_loads_weights_only(tmp_path, monkeypatch):
    """A checkpoint holding an arbitrary pickled object is refused (weights_only=True), not executed."""
    from harness.errors import CheckpointError
    from harness.store import load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Evil()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


class _Evil:
    pass


def test_nan_loss_is_one_line_error(capsys, tmp_path):
    code, err = _main(capsys, "--methods", "pgd_at", "--train-lambdas", "0", "--out", str(tmp_path),
                      "--no-progress", "--epochs", "2", "--lr", "1e30")
    assert code == 2 and "loss became" in err and "--lr" in err


def test_changed_settings_need_force(capsys, tmp_path):
    base = ["--methods", "pgd_at", "--train-lambdas", "0", "--out", str(tmp_path), "--no-progress", "--aa", "off",
            "--no-report"]
    assert _main(capsys, *base, "--epochs", "1")[0] == 0
    code, err = _main(capsys, *base, "--epochs", "2")
    assert code == 2 and "--force" in err


def test_help_lists_methods_and_presets(capsys):
    with pytest.raises(SystemExit):
        run_all.main(["--help"])
    out = capsys.readouterr().out
    for word in ("pgd_at", "fast_at", "smoke", "cifar10-fast", "paper", "--data-root", "--train-lambdas"):
        assert word in out


@pytest.mark.parametrize("argv, expected", [
    (["--epochs", "many"], "--epochs"),
    (["--preset", "huge"], "--preset"),
    (["--train-lambdas", "a,b"], "cannot read"),
])
def test_usage_errors_are_one_line(capsys, argv, expected):
    code, err = _main(capsys, *argv)
    assert code == 2 and err.count("\n") == 0 and expected in err


def test_lambdas_rescore_a_once_for_all_model_and_options_go_to_the_methods_that_have_them(capsys, tmp_path):
    """--lambdas scores OAT (scalar encoding) at lambdas it was not trained at; pgd_at, a dedicated model,
    keeps its own lambda and does not get OAT's --opt; a new --lambdas re-evaluates without retraining."""
    import pandas as pd
    from harness.store import read_json
    base = ["--methods", "oat,pgd_at", "--opt", "encoding=scalar", "--out", str(tmp_path), "--run", "r",
            "--epochs", "1", "--subset", "128", "--eval-n", "60", "--aa", "off", "--checks", "off",
            "--complexity", "off", "--no-report", "--no-progress"]
    code, err = _main(capsys, *base, "--lambdas", "0,0.25,0.5,0.75,1")
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "r" / "results.csv")
    acc = rows[rows.metric == "clean_acc"]
    assert sorted(acc[acc.method == "oat"]["lambda"]) == [0, 0.25, 0.5, 0.75, 1]
    assert list(acc[acc.method == "pgd_at"]["lambda"]) == [1]
    assert read_json(tmp_path / "r" / "pgd_at-digits-small_cnn-s0-tl1" / "config.json")["train"]["options"] == {}
    checkpoint = tmp_path / "r" / "oat-digits-small_cnn-s0" / "checkpoint.pt"
    trained = checkpoint.stat().st_mtime_ns
    code, err = _main(capsys, *base, "--lambdas", "0.1,0.9")
    assert code == 0, err
    acc = pd.read_csv(tmp_path / "r" / "results.csv").query("metric == 'clean_acc' and method == 'oat'")
    assert sorted(acc["lambda"]) == [0.1, 0.9]
    assert checkpoint.stat().st_mtime_ns == trained, "a new evaluation grid must not retrain"


def test_out_that_is_a_file_is_a_one_line_error(capsys, tmp_path):
    (tmp_path / "afile").write_text("")
    code, err = _main(capsys, "--methods", "pgd_at", "--out", str(tmp_path / "afile"), "--no-progress")
    assert code == 2 and "pick another --out" in err and err.count("\n") == 0


def test_lambdas_take_ranges():
    """--lambdas 0:1:0.05 (its end included) beside single values; a range that cannot be read is refused."""
    assert run_all._lambdas("0:1:0.25") == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert run_all._lambdas("0, 0.5:1:0.5") == (0.0, 0.5, 1.0)
    assert len(run_all._lambdas("0:1:0.05")) == 21
    for bad in ("1:0:0.1", "0:1:0", "0:1:x", "0:1:1e-12", "0:inf:1", "0:1:inf"):  # 1e-12: 10^12 of them
        with pytest.raises(Exception, match="range 0:1:0.05"):
            run_all._lambdas(bad)


def test_autoattack_alone_is_a_protocol():
    """--eval '' with AutoAttack on scores clean and AutoAttack accuracy only: accepted."""
    cfg, _ = run_all.config_from_args(run_all.parser().parse_args(["--methods", "pgd_at", "--eval", "", "--aa",
                                                                   "standard"]))
    assert cfg.eval.attacks == () and cfg.eval.aa == "standard"


@pytest.mark.parametrize("argv, ignored", [
    (["--methods", "float,oat", "--train-lambdas", "0,1"], ["--train-lambdas"]),
    (["--methods", "pgd_at,fast_at", "--lambdas", "0,1"], ["--lambdas"]),
    (["--methods", "pgd_at", "--compile", "default", "--device", "cpu"], ["--compile default"]),
    (["--methods", "pgd_at", "--slurm-time", "5", "--slurm-gpus-per-job", "2"],
     ["--slurm-gpus-per-job", "--slurm-time"]),
    (["--methods", "pgd_at", "--executor", "submitit-local", "--slurm-partition", "gpu", "--slurm-time", "5",
      "--slurm-array-parallelism", "4"], ["--slurm-array-parallelism", "--slurm-partition"]),  # Slurm's alone
    (["--methods", "pgd_at", "--aa", "off", "--aa-n", "9", "--checks", "off", "--checks-n", "9"],
     ["--aa-n", "--checks-n"]),
    (["--methods", "pgd_at", "--clean-floor", "0.5", "--no-report"], ["--clean-floor"]),
    # each of these is used by the run, so nothing is said
    (["--methods", "pgd_at,float", "--train-lambdas", "0,1", "--lambdas", "0,1", "--aa-n", "9", "--checks-n", "9",
      "--clean-floor", "0.5", "--compile", "off"], []),
    (["--methods", "pgd_at", "--executor", "submitit-local", "--slurm-time", "5", "--slurm-gpus-per-job", "0"], []),
    (["--methods", "pgd_at", "--executor", "slurm", "--compile", "default"], []),  # (the nodes' GPUs compile)
])
def test_a_flag_the_run_does_not_use_is_named(argv, ignored):
    """A flag given that does not apply to the run gets a note instead of being dropped without a word."""
    args = run_all.parser().parse_args(argv)
    cfg, overrides = run_all.config_from_args(args)
    _, _, notes = run_all.drop_unused(args, cfg, overrides)
    assert sorted(n.split(" ignored:")[0].removeprefix("note: ") for n in notes) == sorted(ignored)


def test_an_ignored_flag_leaves_the_jobs_settings_as_without_it():
    """What a note calls ignored is set back to its default: it enters no job's settings (a CPU job's
    config.json said compile: default, and a rerun without the flag was refused as trained otherwise) and
    does not make finished jobs look scored under another protocol."""
    def settings(*argv):
        args = run_all.parser().parse_args(["--methods", "pgd_at", "--aa", "off", "--checks", "off", *argv])
        cfg, overrides, _ = run_all.drop_unused(args, *run_all.config_from_args(args))
        return cfg, overrides
    assert settings("--aa-n", "5", "--checks-n", "7", "--lambdas", "0,1", "--compile", "default", "--device",
                    "cpu") == settings("--device", "cpu")
    assert settings("--compile", "default", "--executor", "slurm")[1] == {"compile": "default"}


def test_ignored_flags_do_not_score_a_finished_job_again(capsys, tmp_path):
    base = ["--methods", "pgd_at", "--train-lambdas", "0", "--out", str(tmp_path), "--no-progress", "--aa", "off",
            "--checks", "off", "--no-report", "--epochs", "1", "--subset", "128", "--eval-n", "30",
            "--complexity", "off"]
    assert run_all.main(base) == 0
    capsys.readouterr()
    assert run_all.main([*base, "--aa-n", "5", "--checks-n", "7", "--lambdas", "0,1"]) == 0
    out = capsys.readouterr().out
    assert out.count("ignored:") == 3 and "done already, skipped" in out


def test_unused_flag_notes_reach_the_console(capsys, tmp_path):
    code = run_all.main(["--methods", "pgd_at", "--clean-floor", "0.5", "--no-report", "--out", str(tmp_path),
                         "--dataset", "nope"])
    assert code == 2 and "note: --clean-floor ignored: --no-report renders no report" in capsys.readouterr().out
