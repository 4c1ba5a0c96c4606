"""Reports render from a stored results table alone (no training), whatever subset of metrics it holds.

The fixture ``tests/fixtures/report-smoke`` is a real short run (see tests/fixtures/README.md). Metrics that
run does not produce yet (AutoAttack, complexity, parameter counts, sanity checks) are added here, in code, as
SYNTHETIC rendering inputs: they test that the report shows them, and are not results.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.errors import LambenchError
from report import render
from report import tables as T
from report.load import load_run

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "report-smoke"
NAMES = {"pgd_at": "PGD-AT", "fast_at": "Fast-AT", "oat": "OAT", "float": "FLOAT"}
EVIL = "<script>x</script>"  # a method name that must reach the HTML escaped


def _run(tmp_path, edit=None, name="run") -> Path:
    """A copy of the fixture run under tmp_path, its results.csv passed through ``edit`` (a frame -> frame)."""
    run = tmp_path / name
    shutil.copytree(FIXTURE, run)
    if edit is not None:
        table = edit(pd.read_csv(run / "results.csv"))
        table.to_csv(run / "results.csv", index=False)
    return run


def _pdf_pages(path: Path) -> int:
    return len(re.findall(rb"/Type\s*/Page\b", path.read_bytes()))


def _synthetic(table: pd.DataFrame) -> pd.DataFrame:
    """SYNTHETIC rows (rendering inputs only): AutoAttack 2 points under PGD, complexity, parameter counts,
    sanity checks with one flag raised. Not results. FLOAT is renamed to EVIL (escaping is tested on it)."""
    per = table[(table["metric"] == "pgd_acc") & (table["attack"] == "pgd20")]
    rows = [per.assign(metric="aa_acc", attack="aa-standard", value=(per["value"] - 0.02).clip(lower=0))]
    clean = table[table["metric"] == "clean_acc"]
    rows.append(clean.assign(metric="nonzero_params", attack="", value=50_000 * (1 - 0.3 * clean["lambda"])))
    rows.append(clean.assign(metric="macs", attack="", value=2.0e6 * (1 - 0.3 * clean["lambda"])))
    rows.append(clean.assign(metric="infer_latency_ms", attack="", value=0.8))
    rows.append(clean.assign(metric="check_acc", attack="pgd20@2eps", value=clean["value"] * 0.2))
    flags = clean.assign(metric="flag:aa_le_pgd", attack="aa-standard", value=0.0)
    flags.loc[(flags["method"] == "oat") & (flags["lambda"] == 1.0), "value"] = 1.0
    rows.append(flags)
    jobs = table[table["metric"] == "train_time_s"]
    rows.append(jobs.assign(metric="params", value=60_000.0))
    rows.append(jobs.assign(metric="stored_params", value=jobs["method"].map({"oat": 70_000.0}).fillna(60_000.0)))
    mem = jobs.assign(metric="train_peak_mem_mb", value=jobs["method"].map({"oat": 300.0, "float": 250.0}).fillna(120.0))
    table = pd.concat([table[table["metric"] != "train_peak_mem_mb"], *rows, mem], ignore_index=True)
    return table.assign(method=table["method"].replace("float", EVIL))


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The fixture run rendered to HTML and PDF, as it is (no AutoAttack, no complexity, no checks)."""
    run = _run(tmp_path_factory.mktemp("full"))
    out = render(run)
    return run, out, out["html"].read_text()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The fixture run plus SYNTHETIC AutoAttack, complexity and sanity-check rows, and FLOAT renamed to a
    method name holding HTML, rendered to HTML (its PDF tables are tested on their own, to keep this fast)."""
    run = _run(tmp_path_factory.mktemp("synthetic"), _synthetic)
    out = render(run, clean_floor=0.8, formats=("html",))
    return run, out, out["html"].read_text()


def test_html_has_every_method_and_figure(full):
    run, out, html = full
    for name in NAMES.values():
        assert name in html
    assert out.figures == ["tradeoff", "lambda", "complexity", "dial"]
    assert html.count("<img") == len(out.figures)
    for name in out.figures:
        assert f'id="fig-{name}"' in html
        assert (run / "figures" / f"{name}.png").stat().st_size > 1000
        assert (run / "figures" / f"{name}.pdf").read_bytes().startswith(b"%PDF")
    # self-contained: every image is embedded
    assert len(re.findall(r'<img src="data:image/png;base64,', html)) == len(out.figures)


def test_pdf_page_count(full):
    run, out, _ = full
    assert out.pdf_pages >= 1 + len(out.figures)
    assert _pdf_pages(run / "report.pdf") == out.pdf_pages


def test_pdf_tables_split_over_pages(synthetic, tmp_path):
    """The synthetic run's table sections alone (flagged rows marked), then a long table that must go over
    several pages: the page count returned is the one written."""
    from report.content import build
    from report.document import Report, Section, Table
    from report.pdf import render_pdf
    run, _, _ = synthetic
    report = build(load_run(run), clean_floor=0.8)
    report.sections = [s for s in report.sections if s.id in ("tables", "checks", "config")]
    flags = next(t for s in report.sections for t in s.tables if t.id == "flags")
    assert sum(flags.marked) == 1 and len(flags.rows) == 2  # OAT at λ=1 flagged; the rest passed, counted
    pages = render_pdf(report, tmp_path / "tables.pdf")
    assert pages == _pdf_pages(tmp_path / "tables.pdf") >= 1 + len(report.sections)
    rows = [[str(i), "a long cell that wraps " * (i % 5)] for i in range(150)]
    long = Report("long", [], [Section("s", "Long", tables=[Table("t", "Long table", ["i", "text"], rows)])])
    pages = render_pdf(long, tmp_path / "long.pdf")
    assert pages == _pdf_pages(tmp_path / "long.pdf") >= 5


def test_missing_autoattack_is_said(full):
    _, out, html = full
    assert "No AutoAttack results" in html and "--aa standard" in html
    assert any("AutoAttack" in n for n in out.notes)
    assert "Not measured in this run" in html  # complexity: CPU run, no MACs/non-zero counts


def test_strongest_pgd_attack_is_reported(full):
    run, _, html = full
    pts = T.points(load_run(run).table)
    table = pd.read_csv(run / "results.csv")
    assert {a for s in pts["pgd_attack"] for a in s.split("/")} <= {"pgd20", "pgd50x2"}
    point = pts[(pts["method"] == "fast_at")].iloc[0]
    fast = table[(table["method"] == "fast_at") & (table["metric"] == "pgd_acc")]
    assert point["pgd"] == pytest.approx(fast.groupby("seed")["value"].min().mean())  # each seed's worst
    assert "strongest (lowest accuracy) of pgd20, pgd50x2 for each seed" in html


def test_synthetic_metrics_render(synthetic):
    _, out, html = synthetic
    assert "No AutoAttack results" not in html
    assert "AutoAttack" in html and "MACs" in html and "non-zero params" in html
    # the flagged check is shown under the trade-off figure and marked in the per-λ table
    tradeoff = html[html.index('id="fig-tradeoff"'):html.index('id="fig-lambda"')]
    assert "warnings" in tradeoff and "aa_le_pgd" in tradeoff and "OAT at λ=1" in tradeoff
    assert 'class="marked"' in html and "⚠ aa_le_pgd" in html
    assert "pgd20@2eps" in html  # check_acc rows go to the sanity-check table, not the plots
    assert not any("AutoAttack" in n or "non-zero" in n for n in out.notes)


def test_tables_are_written_for_a_paper(synthetic):
    """Every report table also as <run>/tables/<id>.csv (the cells as shown) and .tex (booktabs, with the
    report's symbols as LaTeX math and LaTeX's specials escaped), linked from the HTML."""
    from report.latex import tex
    run, out, html = synthetic
    frame = pd.read_csv(run / "tables" / "per-lambda.csv", dtype=str, keep_default_na=False)
    assert "clean" in frame.columns and frame["method"].str.contains("OAT").any()
    assert any("±" in v for v in frame["clean"])
    latex = (run / "tables" / "per-lambda.tex").read_text()
    assert "\\toprule" in latex and "\\begin{tabular}" in latex and "$\\pm$" in latex and "$\\lambda$" in latex
    for name in ("per-lambda", "models", "operating", "dial", "flags", "config"):
        assert (run / "tables" / f"{name}.tex").exists() and f'href="tables/{name}.csv"' in html
        assert not set((run / "tables" / f"{name}.tex").read_text()) & set("±λεσ≥×÷★⚠—·")
    for path in (run / "tables").glob("*.csv"):  # each column named once: the CSV reads back as it was written
        header = path.read_text().splitlines()[0].split(",")
        assert len(header) == len(set(header)), (path.name, header)
    assert tex("50% of a_b & c ≥ 0.8 ± 1 {x}") == r"50\% of a\_b \& c $\geq$ 0.8 $\pm$ 1 \{x\}"
    for text in ("--methods", "---", "a−-b", "x–-y", "-—"):  # no run of hyphens LaTeX would set as a dash
        assert "--" not in tex(text), (text, tex(text))
    assert tex("— –") == r"\textemdash{} \textendash{}"
    assert tex('["a"] <b>') == r'["a"] \textless{}b\textgreater{}'  # OT1 would print < > as ¡ ¿


def test_table_files_of_an_earlier_render_go(tmp_path):
    """A table an earlier render wrote and this one has not leaves no file behind (a user's own files stay); a
    long table is split into floats of at most LONG rows, each scaled down to the line where wider; a wide
    one spans a two-column page; long text wraps and numbers are right-aligned."""
    from report.document import Report, Section, Table
    from report.latex import FIT, LINE, LONG, TEXT, WIDE, write_tables
    gone = Table("gone", "Gone", ["a"], [["1"]])
    write_tables(Report("r", [], [Section("s", "S", tables=[gone])]), tmp_path)
    (tmp_path / "my-paper.tex").write_text("\\documentclass{article}")  # the user's own files stay
    (tmp_path / "notes.csv").write_text("a\n")
    long = Table("long", "Long", ["i", "name"], [[str(i), f"model {i}"] for i in range(2 * LONG + 1)])
    written = write_tables(Report("r", [], [Section("s", "S", tables=[long])]), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["long.csv", "long.tex", "my-paper.tex", "notes.csv"]
    assert len(written) == 2
    text = (tmp_path / "long.tex").read_text()
    floats = text.split("\\begin{table}")[1:]
    assert len(floats) == 3 and text.count(FIT) == 3 and text.count("\\caption{") == 1
    assert all(f.count("\\\\\n") - 1 <= LONG for f in floats)  # rows (and the header) per float
    assert "\\ref{tab:lambench-long}, continued: rows 31--60 of 61" in floats[1] and "row 61 of 61" in floats[2]
    assert "{rl}" in floats[0] and "model 60" in floats[2] and "model 59" in floats[1]
    wrapped = Table("wrapped", "Wrapped", ["name", "text"], [[str(i), "word " * 20] for i in range(LONG)])
    text = write_tables(Report("r", [], [Section("s", "S", tables=[wrapped])]), tmp_path)["table:wrapped.tex"]
    assert LINE == 30 and text.read_text().count("\\begin{table}") == -(-LONG // (LONG // 4))  # a row 4 lines (100
    # characters, 30 a line): LONG // 4 rows a float
    wide = Table("wide", "Wide", [f"c{i}" for i in range(WIDE + 1)], [["x" * (TEXT + 1)] + ["9.5 ± 0.1"] * WIDE])
    write_tables(Report("r", [], [Section("s", "S", tables=[wide])]), tmp_path)
    text = (tmp_path / "wide.tex").read_text()
    assert "\\begin{table*}" in text and FIT + "\n\\begin{tabular}" in text and "\\end{tabular}}" in text
    assert "{>{\\raggedright\\arraybackslash}p{0.60\\linewidth}" + "r" * WIDE + "}" in text
    assert text.splitlines()[0].endswith("needs \\usepackage{booktabs, graphicx, array}")


@pytest.mark.parametrize("options", ["", "twocolumn"])
def test_latex_tables_compile(synthetic, tmp_path, options):
    """The report's .tex tables, a long wide one, a config whose values have long words (an explicit --lambdas
    list, a path) and 30 flags whose text wraps compile with pdfLaTeX and the packages their first lines name
    (no fontenc: < and > are LaTeX's own), in one- and two-column documents: nothing wider than the line,
    no float taller than a page (needs pdflatex: TeX Live's texlive-latex-base and -recommended)."""
    from report.document import Report, Section, Table
    from report.latex import write_tables
    from report.notes import describe
    if shutil.which("pdflatex") is None:
        pytest.skip("pdflatex not installed (e.g. apt install texlive-latex-base texlive-latex-recommended)")
    run, _, _ = synthetic
    files = sorted((run / "tables").glob("*.tex"))
    rows = [[f"method {i} (trained at λ={i / 80:.2f})", *[f"{i}.{j} ± 0.{j}" for j in range(12)]] for i in range(80)]
    config = [["command", "python run_all.py --methods pgd_at,float --lambdas " + ",".join(f"{k / 20:g}" for k in range(21))],
              ["config: data_root", "/mnt/shared/datasets/cifar10_batches_py/train_and_test"], ["x", "<b> \\n"]]
    flags = [[m, f"{k / 10:g}", "eot_vs_plain", "pgd20-eot", "⚠ flagged (seed 0, 1, 2)", describe("eot_vs_plain")]
             for m in ("FLOAT", "FLOATS", "OAT") for k in range(10)]
    extra = [Table("big", "Big", ["method", *[f"metric {j}" for j in range(12)]], rows),
             Table("long-words", "Configuration", ["setting", "value"], config),
             Table("many-flags", "Flags", ["model", "λ", "check", "attack", "result", "what it checks"], flags)]
    files += list(write_tables(Report("r", [], [Section("s", "S", tables=extra)]), tmp_path / "more").values())
    files = [f for f in files if f.suffix == ".tex"]
    packages = set()
    for f in files:
        packages |= set(f.read_text().splitlines()[0].split("usepackage{")[1].rstrip("}").split(", "))
    doc = tmp_path / "paper.tex"
    doc.write_text("\\documentclass[%s]{article}\\usepackage{%s}\\begin{document}\n%s\n\\end{document}\n"
                   % (options, ",".join(sorted(packages)), "\n".join(f"\\input{{{f}}}\\clearpage" for f in files)))
    for _ in range(2):  # the second pass resolves the continued floats' references
        done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert done.returncode == 0, log[-3000:]
    for problem in ("Overfull \\hbox", "undefined", "Float too large", "Missing character"):
        assert problem not in log, (problem, log[-3000:])
    assert len(files) >= 10 and (tmp_path / "paper.pdf").stat().st_size > 10_000


def test_one_lambda(tmp_path):
    out = render(_run(tmp_path, lambda t: t[(t["lambda"] == 1.0) | t["lambda"].isna()]), formats=("html",))
    html = out["html"].read_text()
    assert "evaluated at one λ (1) only" in html
    assert html.count("<img") == len(out.figures)
    # HTML only: no report.pdf, and the figures as PNG only
    assert "pdf" not in out and not (out["html"].parent / "report.pdf").exists()
    assert not list((out["html"].parent / "figures").glob("*.pdf"))


def test_method_names_are_escaped(synthetic):
    _, _, html = synthetic
    assert EVIL not in html and "&lt;script&gt;x&lt;/script&gt;" in html


def test_two_settings_get_their_own_figures(tmp_path):
    """Two architectures in one run: every figure is made once per setting (checked without drawing)."""
    from report.content import build

    def two_archs(t):
        other = t[t["method"] == "pgd_at"].assign(arch="other_cnn", job=lambda d: d["job"] + "-other")
        return pd.concat([t, other], ignore_index=True)
    names = [f.name for f in build(load_run(_run(tmp_path, two_archs))).figures]
    for kind in ("tradeoff", "lambda", "complexity"):
        assert {f"{kind}-digits-other_cnn-eps0.1", f"{kind}-digits-small_cnn-eps0.1"} <= set(names)
    assert "dial-digits-small_cnn-eps0.1" in names and "dial-digits-other_cnn-eps0.1" not in names  # no OFA there


def test_pareto_front():
    pts = pd.DataFrame({"a": [0.9, 0.8, 0.5, 0.7, 0.9], "b": [0.1, 0.5, 0.6, 0.4, 0.05]})
    assert T.pareto(pts, "a", "b").tolist() == [True, True, True, False, False]


def test_missing_results_is_one_line_error(tmp_path):
    with pytest.raises(LambenchError, match="no results.csv in .*run python run_all.py"):
        render(tmp_path)
    (tmp_path / "results.csv").write_text(",".join(["run", "job", "method", "lambda", "metric", "value"]) + "\n")
    with pytest.raises(LambenchError, match="no rows.*run_all.py"):
        render(tmp_path)
    with pytest.raises(LambenchError, match="no run folder"):
        render(tmp_path / "nothing")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "report", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_renders_one_method_one_lambda(tmp_path):
    """python -m report on a run of one method evaluated at one λ: exit 0, both reports, the gaps named."""
    run = _run(tmp_path, lambda t: t[t["method"] == "fast_at"])
    proc = _cli(str(run), "--clean-floor", "0.8")
    assert proc.returncode == 0, proc.stderr
    assert f"html: {run / 'report.html'}" in proc.stdout
    pages = int(re.search(r"pdf: .*report\.pdf \((\d+) pages\)", proc.stdout).group(1))
    assert _pdf_pages(run / "report.pdf") == pages
    html = (run / "report.html").read_text()
    assert "Fast-AT" in html and not any(n in html.split("Run configuration")[0] for n in ("OAT", "FLOAT", "PGD-AT"))
    assert "Only one method" in html and "one λ" in html and "No once-for-all method" in html
    assert html.count("<img") == len(re.findall(r'<figure id="fig-', html)) >= 2


def test_cli_errors_exit_2(tmp_path):
    bad = _cli(str(tmp_path / "empty"))
    assert bad.returncode == 2
    assert bad.stderr.startswith("lambench: error:") and bad.stderr.count("\n") == 1 and "run_all.py" in bad.stderr
    floor = _cli(str(tmp_path), "--clean-floor", "80")
    assert floor.returncode == 2 and "outside [0, 1]" in floor.stderr


def test_configuration_shows_each_jobs_own_settings(tmp_path):
    """run.json records the last command's settings before each method's defaults and flags (the fixture's
    says 15 epochs; its jobs trained 2). Where the jobs' config.json and eval.json are there, the table shows
    those: one value where all jobs agree, each method's where they differ, every value where a method's
    jobs differ. (The job files here are written by the test: stand-ins with the fixture's real settings.)"""
    import json
    from report.tabulate import config_table
    run = _run(tmp_path)
    table = pd.read_csv(run / "results.csv")
    for job, method in table.drop_duplicates("job")[["job", "method"]].itertuples(index=False):
        train = {"epochs": 2, "lr": 0.2 if method == "fast_at" else 0.05,
                 "schedule": "cyclic" if method == "fast_at" else "cosine",
                 "batch_size": 32 if job == "oat-digits-small_cnn-s1" else 64}
        (run / job).mkdir()
        (run / job / "config.json").write_text(json.dumps({"method": method, "train": train}))
        (run / job / "eval.json").write_text(json.dumps({"n": 100, "attacks": ["pgd20", "pgd50x2"]}))
    rows = dict(config_table(load_run(run)).rows)
    assert rows["train.epochs"] == "2" and "config: train.epochs" not in rows, "not run.json's 15"
    assert rows["train.lr"] == "fast_at: 0.2; float: 0.05; oat: 0.05; pgd_at: 0.05"
    assert rows["train.schedule"].startswith("fast_at: cyclic;")
    assert rows["train.batch_size"] == "fast_at: 64; float: 64; oat: 32 | 64; pgd_at: 64"
    assert rows["eval.n"] == "100" and rows["eval.attacks"] == '["pgd20", "pgd50x2"]'
    assert rows["config: methods"] == '["pgd_at", "fast_at", "float", "oat"]', "run.json's other settings stay"
    bare = dict(config_table(load_run(_run(tmp_path, name="bare"))).rows)
    assert bare["config: train.epochs"] == "15", "no job files: run.json's, said to be the last invocation's"


def test_seeds_from_two_machines_are_never_averaged(tmp_path):
    """Seed 1 of OAT ran on a GPU, seed 0 on the CPU (say two commands, or a cluster's mixed nodes): the
    report shows them as two models, labelled by machine, and says why; a model whose seeds ran alike, and
    every other method, stays as it was."""
    gpu = "NVIDIA H100 80GB HBM3"

    def one_seed_on_a_gpu(t):
        seed1 = t["job"] == "oat-digits-small_cnn-s1"
        t.loc[seed1, "device"] = gpu
        t.loc[seed1 & (t["metric"] == "train_time_s"), "precision"] = "bf16"
        return t
    run = load_run(_run(tmp_path, one_seed_on_a_gpu))
    assert {"oat @ cpu, fp32", f"oat @ {gpu}, bf16"} <= set(run.table["method"])
    assert "oat" not in set(run.table["method"]) and {"pgd_at", "fast_at", "float"} <= set(run.table["method"])
    pts = T.points(run.table)
    oat = pts[pts["method"].str.startswith("oat")]
    assert set(oat["seeds"]) == {1}, "each machine's seed alone"
    other = pts[pts["method"] == "float"]
    assert set(other["seeds"]) == {2}
    out = render(run.dir, formats=("html",))
    html = out["html"].read_text()
    assert f"OAT @ {gpu}, bf16" in html and "OAT ran on different machines" in html


def test_times_from_different_machines_are_named(tmp_path):
    """OAT trained and timed on a GPU, the rest on the CPU: the complexity section says whose times come from
    which machine; a run on one machine says nothing of it."""
    from report.content import build

    def oat_on_a_gpu(t):
        t.loc[t["method"] == "oat", "device"] = "NVIDIA H100 80GB HBM3"
        return t
    notes = build(load_run(_run(tmp_path, oat_on_a_gpu))).notes
    said = [n for n in notes if "different machines" in n]
    assert len(said) == 1 and "NVIDIA H100 80GB HBM3: OAT" in said[0] and "cpu: PGD-AT, Fast-AT, FLOAT" in said[0]
    assert not [n for n in build(load_run(_run(tmp_path, name="same"))).notes if "different machines" in n]


def test_an_older_runs_cpu_and_several_processes_are_one_machine(tmp_path):
    """The fixture's rows name the CPU "cpu" (an older lambench); OAT's seed 1 stands for a job this lambench
    added on the same machine ("cpu (AMD EPYC, 2 threads)"): its seeds are still averaged and no note says
    "different machines". Trained on 2 processes of that machine, seed 1 is a model of its own (its cost is
    two processes'), but its times are still that machine's. Where the run names two CPUs, "cpu" is
    neither of them."""
    from report.content import build
    here = "cpu (AMD EPYC, 2 threads)"
    seed1 = "oat-digits-small_cnn-s1"

    def added(t, training=here, other=None):
        t.loc[t["job"] == seed1, "device"] = here
        t.loc[(t["job"] == seed1) & (t["metric"].str.startswith("train_") | (t["metric"] == "epochs_trained")),
              "device"] = training
        if other:
            t.loc[t["job"] == "float-digits-small_cnn-s1", "device"] = other
        return t

    def machines_note(run):
        return [n for n in build(run).notes if "different machines" in n]
    run = load_run(_run(tmp_path, added, name="same"))
    assert "oat" in set(run.table["method"]) and not machines_note(run)
    assert set(T.points(run.table).query("method == 'oat'")["seeds"]) == {2}
    run = load_run(_run(tmp_path, lambda t: added(t, training=f"2 × {here}"), name="two"))
    assert f"oat @ 2 × {here}" in set(run.table["method"]) and not machines_note(run)
    assert any("OAT was trained by different numbers of processes" in n for n in build(run).notes)
    run = load_run(_run(tmp_path, lambda t: added(t, other="cpu (Intel Xeon, 8 threads)"), name="xeon"))
    assert {f"oat @ {here}", "oat @ cpu"} <= set(run.table["method"])
    said = machines_note(run)
    assert any(n.startswith("OAT ran on different machines") for n in said)
    assert any(n.startswith("Times were measured on different machines") for n in said)


def test_dedicated_models_from_two_machines_are_not_summed(tmp_path):
    """Seed 1 of PGD-AT (both training λ) ran on a GPU: every PGD-AT job is labelled by machine, and the cost
    of the dial sums the models trained like the once-for-all ones (on the CPU, in fp32), though OAT was
    scored with another torch and FLOAT's seed 1 did not record its precision, and though the GPU's name
    sorts first."""
    gpu = "NVIDIA H100 80GB HBM3"

    def seed_on_a_gpu(t):
        job = t["job"].isin(["pgd_at-digits-small_cnn-s1-tl0", "pgd_at-digits-small_cnn-s1-tl1"])
        t.loc[job, "device"] = gpu
        t.loc[job & (t["metric"] == "train_time_s"), ["value", "precision"]] = [0.001, "bf16"]
        t.loc[t["method"] == "oat", "torch"] = "2.99.0"
        t.loc[(t["job"] == "float-digits-small_cnn-s1") & (t["metric"] == "train_time_s"), "precision"] = "unrecorded"
        return t
    run = load_run(_run(tmp_path, seed_on_a_gpu))
    labels = run.table.drop_duplicates("job").set_index("job")["method"]
    assert labels["pgd_at-digits-small_cnn-s0-tl1"] == "pgd_at @ cpu, fp32"
    assert labels["pgd_at-digits-small_cnn-s1-tl0"] == f"pgd_at @ {gpu}, bf16"
    pts = T.points(run.table)
    dial = T.dial_cost(pts).set_index("method")
    assert set(dial.index) == {"oat", "float"}
    cpu = run.table[(run.table["method"] == "pgd_at @ cpu, fp32") & (run.table["metric"] == "train_time_s")]
    per_lambda = cpu.groupby("train_lambda")["value"].mean()
    for method, row in dial.iterrows():
        assert row["ded_method"] == "pgd_at @ cpu, fp32" and row["ded_models"] == 2
        expected = sum(per_lambda.get(lam, per_lambda[1.0]) for lam in pts.loc[pts.method == method, "lambda"])
        assert row["ded_time"] == pytest.approx(expected)


def test_unrecorded_machine_facts_do_not_split(tmp_path):
    """A job from an older lambench (no device or precision recorded for its training) ran on the same CPU
    as far as anyone knows: it is averaged with its other seed, not shown as another machine."""
    def unrecorded(t):
        job = t["job"] == "float-digits-small_cnn-s1"
        t.loc[job & (t["metric"] == "train_time_s"), ["device", "precision"]] = "unrecorded"
        t.loc[job & (t["metric"] == "clean_acc"), "torch"] = ""
        return t
    run = load_run(_run(tmp_path, unrecorded))
    assert "float" in set(run.table["method"]) and not run.table["method"].str.contains(" @ ").any()


def test_models_scored_under_different_protocols_are_warned_of(tmp_path):
    """A re-evaluation stopped between two methods leaves FLOAT scored on 24 examples beside the others' 100:
    the report warns of it above the trade-off figure; batching alone is no difference."""
    import json
    from report.content import build
    run = _run(tmp_path)
    table = pd.read_csv(run / "results.csv")
    for job, method in table.drop_duplicates("job")[["job", "method"]].itertuples(index=False):
        (run / job).mkdir()
        n, batch = (24, 500) if method == "float" else (100, 64 if method == "oat" else 500)
        (run / job / "eval.json").write_text(json.dumps({"n": n, "batch_size": batch, "attacks": ["pgd20"]}))
    warned = [n for n in build(load_run(run)).notes if "different protocols" in n]
    assert len(warned) == 1 and warned[0].startswith("⚠") and "(FLOAT vs Fast-AT, OAT, PGD-AT;" in warned[0]
    for job in table.loc[table["method"] == "float", "job"].unique():
        (run / job / "eval.json").write_text(json.dumps({"n": 100, "batch_size": 7, "attacks": ["pgd20"]}))
    assert not [n for n in build(load_run(run)).notes if "different protocols" in n]
    (run / "oat-digits-small_cnn-s1" / "eval.json").write_text(json.dumps({"n": 24, "attacks": ["pgd20"]}))
    warned = [n for n in build(load_run(run)).notes if "different protocols" in n]
    assert len(warned) == 1 and "(FLOAT, Fast-AT, OAT (seed 0), PGD-AT vs OAT (seed 1);" in warned[0]
    # a setting an older lambench did not write (no aa at all) is no difference
    for job in table["job"].unique():
        settings = {"n": 100, "attacks": ["pgd20"]} | ({} if job.startswith("oat") else {"aa": "off"})
        (run / job / "eval.json").write_text(json.dumps(settings))
    assert not [n for n in build(load_run(run)).notes if "different protocols" in n]
