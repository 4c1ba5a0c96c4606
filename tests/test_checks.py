"""Each sanity check flags a constructed bad table and passes a good one."""
import math

import pytest

from harness import checks


def _row(metric, value, attack="", n=1000, lam=1.0, **extra):
    return {"lambda": lam, "metric": metric, "value": value, "attack": attack, "n": n, **extra}


def _good(lam=1.0):
    return [_row("clean_acc", 0.85, lam=lam), _row("pgd_acc", 0.52, "pgd20", lam=lam),
            _row("aa_acc", 0.48, "aa-standard", n=1000, lam=lam),
            _row("check_acc", 0.53, "pgd20", n=200, lam=lam, eps=8 / 255),
            _row("check_acc", 0.20, "pgd20@2eps", n=200, lam=lam, eps=16 / 255),
            _row("check_acc", 0.0, "pgd20@eps1.0", n=200, lam=lam, eps=1.0),
            _row("check_acc", 0.51, "pgd100", n=200, lam=lam, eps=8 / 255),
            _row("check_acc", 0.52, "pgd20-eot", n=200, lam=lam, eps=8 / 255)]


def _flags(rows):
    return {r["metric"]: r["value"] for r in checks.flag_rows(rows)}


def test_good_table_passes_every_check():
    flags = _flags(_good())
    assert set(flags) == {f"flag:{c}" for c in checks.CHECKS if c != "autoattack"}
    assert not any(flags.values()), flags
    assert checks.warning_lines(checks.flag_rows(_good())) == []


def _replace(rows, metric, attack, value):
    return [dict(r, value=value) if (r["metric"], r["attack"]) == (metric, attack) else r for r in rows]


@pytest.mark.parametrize("metric, attack, value, flag", [
    ("aa_acc", "aa-standard", 0.60, "aa_le_pgd"),          # AutoAttack above PGD
    ("pgd_acc", "pgd20", 0.95, "pgd_le_clean"),            # PGD above clean
    ("check_acc", "pgd20@2eps", 0.70, "eps2_le_eps"),      # more budget, more accuracy
    ("check_acc", "pgd20@eps1.0", 0.12, "unbounded_near_zero"),  # the whole box and still 12%
    ("check_acc", "pgd100", 0.40, "pgd100_vs_pgd20"),      # PGD-20 had not converged
    ("check_acc", "pgd20-eot", 0.30, "eot_vs_plain"),      # randomness inflated PGD
])
def test_each_check_flags_its_bad_table(metric, attack, value, flag):
    rows = _replace(_good(), metric, attack, value)
    flagged = checks.flag_rows(rows)
    values = {r["metric"]: r["value"] for r in flagged}
    assert values[f"flag:{flag}"] == 1.0, flagged
    assert sum(values.values()) == 1.0, f"only {flag} should fire: {values}"
    lines = checks.warning_lines(flagged)
    assert len(lines) == 1 and f"flag:{flag}" in lines[0] and "lambda=1" in lines[0]


def test_small_differences_within_sampling_tolerance_pass():
    # AutoAttack 1 point above PGD on 1000 examples, PGD-100 2 points below PGD-20 on 200: sampling noise
    rows = _replace(_replace(_good(), "aa_acc", "aa-standard", 0.53), "check_acc", "pgd100", 0.51)
    assert not any(_flags(rows).values())
    assert checks.tolerance(0.5, 200, 0.5, 10000) == pytest.approx(2 * math.sqrt(0.25 / 200) + 1 / 200)


def test_flags_per_lambda_and_only_where_data_exist():
    rows = _good(0.0) + _replace(_good(1.0), "check_acc", "pgd20@eps1.0", 0.5)
    rows = [r for r in rows if not (r["lambda"] == 0.0 and r["attack"] == "pgd20-eot")]  # deterministic at 0
    flagged = checks.flag_rows(rows)
    by = {(r["lambda"], r["metric"]): r["value"] for r in flagged}
    assert by[(1.0, "flag:unbounded_near_zero")] == 1.0 and by[(0.0, "flag:unbounded_near_zero")] == 0.0
    assert (0.0, "flag:eot_vs_plain") not in by and (1.0, "flag:eot_vs_plain") in by
    # per-job rows (lambda NaN) are ignored; no AutoAttack row: no aa flag
    rows = [r for r in _good() if r["metric"] != "aa_acc"] + [_row("params", 10, lam=float("nan"))]
    assert "flag:aa_le_pgd" not in _flags(rows)


def test_pgd_reference_falls_back_to_whole_split():
    rows = [r for r in _good() if not (r["metric"] == "check_acc" and r["attack"] == "pgd20")]
    assert _flags(rows)["flag:pgd100_vs_pgd20"] == 0.0
    assert _flags(_replace(rows, "check_acc", "pgd100", 0.3))["flag:pgd100_vs_pgd20"] == 1.0


def test_runner_prints_flags_and_keeps_details_out_of_the_table(monkeypatch, tmp_path, capsys):
    """A flagged row reaches the console as a WARNING line and <job>/warnings.txt; the results table keeps
    the flag as a row (value 1.0) and its explanation out of its columns."""
    import pandas as pd

    import harness.runner as runner
    import run_all

    real = runner.evaluate

    def evaluate(*args, **kwargs):
        rows = real(*args, **kwargs)
        return rows + [_row("flag:aa_le_pgd", 1.0, "aa-standard", n=math.nan, lam=0.0, detail="made up for the test")]

    monkeypatch.setattr(runner, "evaluate", evaluate)
    code = run_all.main(["--methods", "pgd_at", "--train-lambdas", "0", "--epochs", "1", "--aa", "off",
                         "--checks-n", "20", "--out", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "WARNING lambda=0 flag:aa_le_pgd (aa-standard): made up for the test" in out
    job = tmp_path / "smoke" / "pgd_at-digits-small_cnn-s0-tl0"
    assert (job / "warnings.txt").read_text().strip().endswith("made up for the test")
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert "detail" not in table.columns
    flags = table[table.metric.str.startswith("flag:")].set_index("metric").value
    assert flags["flag:aa_le_pgd"] == 1.0 and flags.drop("flag:aa_le_pgd").eq(0.0).all()
    assert {"check_acc", "macs", "nonzero_params", "params", "stored_params", "train_epoch_time_s",
            "infer_latency_ms", "infer_throughput", "infer_peak_mem_mb"} <= set(table.metric)
    assert (table[table.metric == "infer_latency_ms"].precision == "fp32").all()
    # the run ends with its report, the flag shown next to the figure it concerns
    run_dir = tmp_path / "smoke"
    assert f"report: {run_dir / 'report.html'}, {run_dir / 'report.pdf'}" in out
    assert "aa_le_pgd [aa-standard] flagged" in (run_dir / "report.html").read_text()
    assert (run_dir / "report.pdf").read_bytes().startswith(b"%PDF")
