"""The report's numbers and marks can be trusted: each model's worst attack, flags on the points (and only the
points) they concern, per-setting floors, NaN rows said and left out, and dial costs never estimated from the
wrong models. Built on the fixture run of test_report (a real short run); edits to it are stated per test."""
import numpy as np
import pandas as pd
import pytest

from report import style
from report import tables as T
from report.content import build
from report.load import load_run
from test_report import _run


def _pts(tmp_path, edit=None, name="run"):
    run = load_run(_run(tmp_path, edit, name))
    return run, T.points(run.table)


def _two_archs(t):
    """A second setting: PGD-AT and FLOAT again under another architecture name, 30 points less accurate."""
    other = t[t["method"].isin(["pgd_at", "float"])].assign(arch="other_cnn", job=lambda d: d["job"] + "-other")
    acc = other["metric"].isin(["clean_acc", "pgd_acc"])
    other.loc[acc, "value"] = (other.loc[acc, "value"] - 0.3).clip(lower=0)
    return pd.concat([t, other], ignore_index=True)


def test_robust_accuracy_is_each_seeds_strongest_attack(tmp_path):
    """Per seed the lowest of the attacks run, then the mean over seeds: where the seeds' strongest attacks
    differ, this is below the best single attack's mean (what the report showed before)."""
    run, pts = _pts(tmp_path)
    rows = T.keyed(run.table)
    rows = rows[rows["metric"] == "pgd_acc"]
    expected = rows.groupby(T.POINT + ["seed"])["value"].min().groupby(T.POINT).mean()
    best_single = rows.groupby(T.POINT + ["attack"])["value"].mean().groupby(T.POINT).min()
    lower = 0
    for _, p in pts.iterrows():
        key = tuple(p[c] for c in T.POINT)
        assert p["pgd"] == pytest.approx(expected.loc[key])
        lower += p["pgd"] < best_single.loc[key] - 1e-9
        assert set(p["pgd_attack"].split("/")) <= {"pgd20", "pgd50x2"}
    assert lower > 0, "the fixture has points whose seeds' strongest attacks differ"


def test_nan_accuracies_are_left_out_and_said(tmp_path):
    """A point with no PGD value at all (nothing evaluated) does not stop the report; the rows are named."""
    def no_pgd(t):
        t.loc[(t["method"] == "float") & (t["lambda"] == 0.5) & (t["metric"] == "pgd_acc"), "value"] = np.nan
        return t
    run, pts = _pts(tmp_path, no_pgd)
    point = pts[(pts["method"] == "float") & (pts["lambda"] == 0.5)].iloc[0]
    assert pd.isna(point["pgd"]) and pd.notna(point["clean_acc"])
    report = build(run)
    said = [n for n in report.notes if "hold no value" in n]
    assert len(said) == 1 and "FLOAT λ=0.5 pgd_acc" in said[0]


def test_flags_mark_their_own_setting_only(tmp_path):
    """A flag raised on FLOAT at λ = 0.5 under one architecture marks that point, not FLOAT's λ = 0.5 under the
    other, in the per-λ table; the sanity-check table names the setting."""
    def flagged(t):
        t = _two_archs(t)
        clean = t[t["metric"] == "clean_acc"]
        flags = clean.assign(metric="flag:pgd_le_clean", attack="pgd20", value=0.0)
        flags.loc[(flags["method"] == "float") & (flags["lambda"] == 0.5) & (flags["arch"] == "other_cnn"),
                  "value"] = 1.0
        return pd.concat([t, flags], ignore_index=True)
    report = build(load_run(_run(tmp_path, flagged)))
    table = next(t for s in report.sections for t in s.tables if t.id == "per-lambda")
    marked = [r for r, m in zip(table.rows, table.marked) if m]
    assert marked and all(r[1] == "other_cnn" and r[4] == "0.5" for r in marked)
    flags = next(t for s in report.sections for t in s.tables if t.id == "flags")
    assert flags.columns[:3] == ["dataset", "arch", "ε"] and flags.rows[0][1] == "other_cnn"


def test_a_flagged_operating_point_is_marked(tmp_path):
    """FLOAT's most robust λ (in the fixture 0.2) is flagged: the operating-point table marks it, the
    complexity figure carries the warning and its caption says what the red ring means."""
    _, pts = _pts(tmp_path, name="plain")
    best = pts[pts["method"] == "float"].sort_values("pgd").iloc[-1]["lambda"]

    def flagged(t):
        clean = t[t["metric"] == "clean_acc"]
        flags = clean.assign(metric="flag:unbounded_near_zero", attack="pgd20@eps1", value=0.0)
        flags.loc[(flags["method"] == "float") & (flags["lambda"] == best), "value"] = 1.0
        return pd.concat([t, flags], ignore_index=True)
    report = build(load_run(_run(tmp_path, flagged)))
    ops = next(t for s in report.sections for t in s.tables if t.id == "operating")
    assert sum(ops.marked) == 1
    row = next(r for r, m in zip(ops.rows, ops.marked) if m)
    assert row[0] == "FLOAT" and row[2] == f"{best:g}" and row[-1] == "⚠ unbounded_near_zero"
    fig = next(f for f in report.figures if f.name == "complexity")
    assert fig.warnings == [f"FLOAT at λ={best:g}: unbounded_near_zero flagged (see Sanity checks)"]
    assert "Red rings" in fig.caption


def test_clean_floor_is_each_settings_own(tmp_path):
    """Without --clean-floor, each setting's floor is its own best clean accuracy minus 5 points."""
    run, pts = _pts(tmp_path, _two_archs)
    floors = T.floors(pts)
    for setting, g in pts.groupby(T.SETTING):
        assert floors[setting] == pytest.approx(g["clean_acc"].max() - 0.05)
    assert len(set(floors.values())) == 2
    assert set(T.floors(pts, 0.5).values()) == {0.5}
    ops = T.operating_points(pts, "pgd", floors)
    assert set(ops.groupby("arch")["floor"].first()) == set(floors.values())


def test_dial_time_is_not_estimated_from_standard_training(tmp_path):
    """With PGD-AT trained at λ = 0 only, the dedicated models for λ > 0 have no honest time estimate: the
    dial leaves the time out."""
    _, pts = _pts(tmp_path, lambda t: t[~t["job"].str.endswith("-tl1")])
    dial = T.dial_cost(pts)
    assert len(dial) and dial["ded_time"].isna().all() and (dial["ded_models"] == 1).all()
    _, pts = _pts(tmp_path, name="both")
    assert T.dial_cost(pts)["ded_time"].notna().all()


def test_many_methods_never_share_a_look():
    """Twelve methods of a user's own beside the seven lambench ships: no two share colour, marker and line
    style at once, and none gets the pale yellow before the palette's other colours are used."""
    methods = list(style.KNOWN_ORDER) + [f"mine{i:02d}" for i in range(12)]
    looks = [style.look(m, methods) for m in methods]
    keys = {(tuple(lk["color"]), lk["marker"], str(lk["linestyle"])) for lk in looks}
    assert len(keys) == len(methods)
    assert looks[len(style.KNOWN_ORDER)]["color"] != style.PALETTE[-1]
    few = ["pgd_at", "mA", "mB", "mC"]  # beside one known method: four colours, none shared
    assert len({tuple(style.look(m, few)["color"]) for m in few}) == 4


def test_settings_differing_in_eps_keep_their_own_figure_files(tmp_path):
    """PGD-AT at ε = 0.1 and at ε = 0.2: each setting's figures go to files of their own (a name ending in
    "eps0.1" once lost its ".1" as a file suffix, and the two settings overwrote one file)."""
    from report import render

    def two_eps(t):
        other = t[t["method"] == "pgd_at"].assign(job=lambda d: d["job"] + "-e2")
        other["eps"] = other["eps"].where(other["eps"].isna(), 0.2)
        acc = other["metric"].isin(["clean_acc", "pgd_acc"])
        other.loc[acc, "value"] = other.loc[acc, "value"] / 2
        return pd.concat([t[t["method"] == "pgd_at"], other], ignore_index=True)
    out = render(_run(tmp_path, two_eps), formats=("html",))
    files = {k for k in out if k.startswith("figure:tradeoff")}
    assert files == {"figure:tradeoff-digits-small_cnn-eps0.1.png", "figure:tradeoff-digits-small_cnn-eps0.2.png"}
    assert len({out[k].read_bytes() for k in files}) == 2


def test_dial_counts_the_methods_grid_not_the_lambdas_scored(tmp_path):
    """FLOAT scored at 3 of its 11 λ (a denser --lambdas likewise): the dial still stands for one dedicated
    model per λ of its grid (its grid_lambdas row); a run without that row counts the λ scored."""
    def three(t):
        t = t[t["lambda"].isna() | (t["method"] != "float") | t["lambda"].isin([0.0, 0.5, 1.0])]
        jobs = t[t["metric"] == "train_time_s"]
        grid = jobs.assign(metric="grid_lambdas", value=jobs["method"].map({"float": 11.0, "oat": 6.0}).fillna(1.0))
        return pd.concat([t, grid], ignore_index=True)
    _, pts = _pts(tmp_path, three)
    dial = T.dial_cost(pts).set_index("method")
    assert dial.loc["float", "lambdas"] == 11 and dial.loc["oat", "lambdas"] == 6
    ded = pts[pts["kind"] == "dedicated"].set_index("train_lambda")["train_time_s"]
    assert dial.loc["float", "ded_measured"] == 2  # λ = 0 and 1 have PGD-AT models; 9 more at λ = 1's time
    assert dial.loc["float", "ded_time"] == pytest.approx(ded[0.0] + ded[1.0] + 9 * ded[1.0])
    _, old = _pts(tmp_path, lambda t: three(t)[lambda d: d["metric"] != "grid_lambdas"], name="old")
    assert T.dial_cost(old).set_index("method").loc["float", "lambdas"] == 3


def test_models_run_without_checks_are_named(tmp_path):
    """Checks ran on PGD-AT's jobs only: the summary row does not claim every model passed, and a note names
    the methods no check looked at."""
    def pgd_checked(t):
        clean = t[(t["metric"] == "clean_acc") & (t["method"] == "pgd_at")]
        return pd.concat([t, clean.assign(metric="flag:pgd_le_clean", attack="pgd20", value=0.0)], ignore_index=True)
    report = build(load_run(_run(tmp_path, pgd_checked)))
    flags = next(t for s in report.sections for t in s.tables if t.id == "flags")
    assert flags.rows[0][0] == "models checked"
    said = [n for n in report.notes if "No sanity-check rows for" in n]
    assert len(said) == 1 and all(m in said[0] for m in ("Fast-AT", "OAT", "FLOAT")) and "PGD-AT" not in said[0]


def test_a_check_budget_reads_like_its_jobs():
    from report import fmt
    assert fmt.eps(0.2, like=0.1) == "0.2" and fmt.eps(1.0, like=0.1) == "1"
    assert fmt.eps(16 / 255, like=8 / 255) == "16/255" and fmt.eps(0.2) == "51/255"


def test_a_run_without_any_clean_value_still_renders_its_tables(tmp_path):
    """Every clean_acc NaN: the points stay (robust accuracy without clean), the report says so, no crash."""
    def no_clean(t):
        t.loc[t["metric"] == "clean_acc", "value"] = np.nan
        return t
    run, pts = _pts(tmp_path, no_clean)
    assert pts["clean_acc"].isna().all() and pts["pgd"].notna().all()
    assert any("hold no value" in n for n in build(run).notes)


def _small_aa(t):
    """SYNTHETIC AutoAttack rows (test_report's) on the first 25 test images, PGD on all 100; FLOAT's (EVIL's)
    with the rand version, as where its forward is random."""
    from test_report import EVIL, _synthetic
    t = _synthetic(t)
    aa = t["metric"] == "aa_acc"
    t.loc[aa, "n"] = 25
    t.loc[aa & (t["method"] == EVIL), "attack"] = "aa-rand"
    return t


def test_autoattack_on_fewer_images_is_said_and_not_ranked_by(tmp_path):
    """AutoAttack on the first 25 images beside PGD on 100 (the smoke preset's --aa-n): every place that shows
    it says on how many, and the operating points are ranked by PGD (25 images: 4-point steps), with the
    reason; a point with one AutoAttack version is not said to be the strongest of several."""
    report = build(load_run(_run(tmp_path, _small_aa)))
    sections = {s.id: s for s in report.sections}
    assert dict(report.facts)["evaluated on"] == "100 test images (AutoAttack: the first 25)"
    trade = sections["tradeoff"].figures[0].caption
    assert "PGD on 100 test images: the strongest" in trade
    assert "AutoAttack on the first 25 test images: aa-rand at 11 points, aa-standard at 9 points." in trade
    cost = sections["complexity"]
    assert "Ranked by PGD accuracy: AutoAttack ran on only 25 test images (PGD on 100)" in cost.figures[0].caption
    assert "PGD" in cost.tables[0].columns and "AA" not in cost.tables[0].columns
    assert "AA (first 25)" in sections["tables"].tables[0].columns
    same = build(load_run(_run(tmp_path, lambda t: _small_aa(t).assign(n=25), name="same")))  # as many: AA ranks
    assert "Ranked by PGD" not in {s.id: s for s in same.sections}["complexity"].figures[0].caption
    assert "AA" in {s.id: s for s in same.sections}["complexity"].tables[0].columns
    assert "first" not in dict(same.facts)["evaluated on"]


def test_each_setting_is_ranked_by_its_own_autoattack_sample(tmp_path):
    """Two settings, AutoAttack on the first 25 images in one (PGD on 100) and on all 100 in the other: each
    is ranked by its own rule and says so in its own caption; the facts and the per-λ table name the setting
    whose AutoAttack was short. A setting scored by AutoAttack alone keeps its complexity figure (ranking the
    whole run by PGD had dropped it)."""
    def edit(t):
        t = _two_archs(_small_aa(t))
        t.loc[(t["arch"] == "other_cnn") & (t["metric"] == "aa_acc"), "n"] = 100
        return t
    report = build(load_run(_run(tmp_path, edit)))
    sections = {s.id: s for s in report.sections}
    caps = {f.name: f.caption for f in sections["complexity"].figures}
    assert "Ranked by PGD" in caps["complexity-digits-small_cnn-eps0.1"]
    assert "Ranked by PGD" not in caps["complexity-digits-other_cnn-eps0.1"]
    ops = sections["complexity"].tables[0]
    robust = ops.columns.index("robust")
    arch = ops.columns.index("arch")
    assert {r[robust][-5:] for r in ops.rows if r[arch] == "small_cnn"} == {"(PGD)"}
    assert {r[robust][-4:] for r in ops.rows if r[arch] == "other_cnn"} == {"(AA)"}
    assert dict(report.facts)["evaluated on"].endswith("(AutoAttack: the first 25 in digits · small_cnn · ε = 0.1)")
    table = sections["tables"].tables[0]
    assert "AA" in table.columns and "AA on the first 25 test images in digits · small_cnn" in table.caption

    def aa_alone(t):  # the second setting scored by AutoAttack alone (--eval '')
        t = edit(t)
        return t[~((t["arch"] == "other_cnn") & (t["metric"] == "pgd_acc"))]
    report = build(load_run(_run(tmp_path, aa_alone, name="aa-alone")))
    names = [f.name for s in report.sections for f in s.figures]
    assert "complexity-digits-other_cnn-eps0.1" in names and "complexity-digits-small_cnn-eps0.1" in names


def test_stacked_labels_join_one_methods_points_only():
    """Points at one place join their labels only within one method (colours repeat past ten methods)."""
    from report.figures import _stacked
    blue = (0.0, 0.45, 0.7)
    items = [(1.0, 2.0, "0.1", blue, "pgd_at"), (1.0, 2.0, "0.2", blue, "pgd_at"), (1.0, 2.0, "0.5", blue, "mine")]
    assert sorted(t for _, _, t, _ in _stacked(items)) == ["0.1, 0.2", "0.5"]


def test_complexity_intro_names_the_attack_its_figures_rank_by(tmp_path):
    """A setting without robust accuracy has no operating points, so it does not make the intro say
    "AutoAttack's, or PGD's" where every figure and the table rank by AutoAttack."""
    from test_report import _synthetic

    def edit(t):
        t = _two_archs(_synthetic(t))
        return t[~((t["arch"] == "other_cnn") & t["metric"].isin(["pgd_acc", "aa_acc"]))]
    report = build(load_run(_run(tmp_path, edit)))
    cost = {s.id: s for s in report.sections}["complexity"]
    assert cost.intro.startswith("At what cost: AutoAttack accuracy of each method")
