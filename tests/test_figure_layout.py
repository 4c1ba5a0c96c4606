"""How figures are laid out: the paper-sized versions (each report figure again at a column, 3.4 in, or page,
7 in, width with 8 pt text, saved under figures/paper/ and linked from the report), legends, λ labels. The
run is the report fixture plus the SYNTHETIC rows of test_report (AutoAttack, complexity, one flag),
rendering inputs only."""
import contextlib
import math

import matplotlib.colors
import matplotlib.text
import pytest

from report import render, style
from report.content import build
from report.figures import new_figure
from report.load import load_run
from test_report import _run, _synthetic  # noqa: F401

PAPER = {"tradeoff-pgd": 3.4, "tradeoff-aa": 3.4, "lambda": 7.0, "complexity": 7.0, "dial": 7.0}


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    run = _run(tmp_path_factory.mktemp("paper"), _synthetic)
    style.setup()
    return run, {p.name: p for f in build(load_run(run)).figures for p in f.paper}


def test_every_figure_has_paper_versions_saved_and_linked(paper):
    run, _ = paper
    out = render(run, formats=("html",))
    html = out["html"].read_text()
    for name in PAPER:
        assert (run / "figures" / "paper" / f"{name}.png").stat().st_size > 1000
        assert f'href="figures/paper/{name}.png"' in html
        assert out[f"figure:paper/{name}.png"] == run / "figures" / "paper" / f"{name}.png"


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_figures_are_sized_for_a_paper_and_fit(paper, name):
    """Column or page wide; every text between 5.5 and 8.5 pt (8 pt at 100%: not the report's 9–12.5 pt
    shrunk to 6 pt); the legend and every label inside the figure (a two-column legend once ran off a
    column-wide figure); no panel listing what was not measured; the panels at least 1.3 in high."""
    _, figs = paper
    spec = figs[name]
    assert spec.size[0] == PAPER[name]
    with style.paper():
        fig = new_figure(spec.size, layout="constrained")
        spec.draw(fig)
        renderer = fig.canvas.get_renderer()
        texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
        assert texts
        for t in texts:
            assert 5.5 <= t.get_fontsize() <= 8.5, (t.get_text(), t.get_fontsize())
        drawn = fig.get_tightbbox(renderer)  # inches: what is drawn, legend and λ labels included
        assert -0.02 <= drawn.x0 and drawn.x1 <= spec.size[0] + 0.02, drawn
        assert -0.02 <= drawn.y0 and drawn.y1 <= spec.size[1] + 0.02, drawn
        assert not any("Not measured" in t.get_text() for t in texts)
        for ax in fig.axes:
            assert ax.get_window_extent(renderer).height / fig.dpi >= 1.3


def test_report_legends_take_as_many_columns_as_fit(paper):
    """The report's own figures keep a legend that fits on one row there (the λ figure's five entries across
    11 in), and a column-wide paper figure stacks its entries."""
    run, figs = paper
    report = build(load_run(run))
    lam = next(f for f in report.figures if f.name == "lambda")
    fig = new_figure(lam.size, layout="constrained")
    lam.draw(fig)
    (leg,) = fig.legends
    assert leg._ncols == len(leg.legend_handles) == 5
    with style.paper():
        fig = new_figure(figs["tradeoff-aa"].size, layout="constrained")
        figs["tradeoff-aa"].draw(fig)
    assert fig.legends[0]._ncols < len(fig.legends[0].legend_handles)


def _gap(bb, point) -> float:
    return math.hypot(max(bb.x0 - point[0], 0, point[0] - bb.x1), max(bb.y0 - point[1], 0, point[1] - bb.y1))


def test_every_lambda_label_is_nearest_its_own_point(paper):
    """A λ label is placed only where no other point is nearer to it than its own (before, about one label in
    four in a cluster sat nearer a neighbour: read as that point's λ); most labels still find a place."""
    run, figs = paper
    report = build(load_run(run))
    shown = total = 0
    for spec, ctx in [(f, contextlib.nullcontext) for f in report.figures] + [(p, style.paper) for p in figs.values()]:
        if not spec.name.startswith(("tradeoff", "complexity")):
            continue
        with ctx():
            fig = new_figure(spec.size, layout="constrained")
            spec.draw(fig)
            renderer = fig.canvas.get_renderer()
            for ax in fig.axes:  # every plotted point: the methods' markers (lines and scatters)
                points = [ax.transData.transform(xy) for ln in ax.lines if ln.get_marker() in style.MARKERS
                          for xy in ln.get_xydata()]
                points += [ax.transData.transform(xy) for c in ax.collections if type(c).__name__ == "PathCollection"
                           for xy in c.get_offsets()]
                total += len({(round(x), round(y)) for x, y in points})
                for ann in (t for t in ax.texts if isinstance(t, matplotlib.text.Annotation)):
                    shown += 1
                    bb = ann.get_window_extent(renderer)
                    own = _gap(bb, ax.transData.transform(ann.xy))
                    assert all(_gap(bb, q) >= own - 1 for q in points), (spec.name, ann.get_text())
    assert shown >= 0.5 * total, (shown, total)


def _drawn(spec, ctx=contextlib.nullcontext):
    with ctx():
        fig = new_figure(spec.size, layout="constrained")
        spec.draw(fig)
    return fig


def test_lambda_figure_gives_clean_accuracy_its_own_scale(paper):
    """Clean accuracy has its own axis (97–99% on digits were flat lines on a 0–100% axis shared with robust
    accuracy); PGD and AutoAttack share theirs; no axis runs much past what accuracy can be."""
    run, _ = paper
    lam = next(f for f in build(load_run(run)).figures if f.name == "lambda")
    clean, pgd, aa = _drawn(lam).axes[:3]
    assert not clean.get_shared_y_axes().joined(clean, pgd) and pgd.get_shared_y_axes().joined(pgd, aa)
    for ax in (clean, pgd):
        span = ax.get_ylim()[1] - ax.get_ylim()[0]
        assert ax.get_ylim()[1] <= 100 + 0.05 * span and ax.get_ylim()[0] >= -0.05 * span


def test_points_at_one_place_are_one_label_and_dedicated_points_lie_on_top(tmp_path):
    """One method's points at the same place get one label naming each λ ("0.1, 0.2"), not one λ for the
    stack; a dedicated model's marker is drawn over a once-for-all line's."""
    def stack(t):  # OAT at λ = 0.1, 0.2 and 0.3: the same accuracies, every seed
        t = _synthetic(t)
        for metric, value in (("clean_acc", 0.5), ("pgd_acc", 0.3), ("aa_acc", 0.28)):
            t.loc[(t["method"] == "oat") & (t["metric"] == metric) & t["lambda"].isin([0.1, 0.2, 0.3]), "value"] = value
        return t
    run = _run(tmp_path, stack)
    style.setup()
    trade = next(f for f in build(load_run(run)).figures if f.name == "tradeoff")
    fig = _drawn(trade)
    methods = style.method_order(load_run(run).table["method"])
    oat = tuple(c * 0.6 for c in matplotlib.colors.to_rgb(style.look("oat", methods)["color"]))  # (its labels')
    texts = [t.get_text() for ax in fig.axes for t in ax.texts if isinstance(t, matplotlib.text.Annotation)
             and matplotlib.colors.to_rgb(t.get_color()) == pytest.approx(oat)]
    assert "0.1, 0.2, 0.3" in texts and not {"0.1", "0.2", "0.3"} & set(texts)
    orders = [(ln.get_linestyle() == "None", ln.get_zorder()) for ln in fig.axes[0].lines
              if ln.get_marker() in style.MARKERS]
    assert min(z for dedicated, z in orders if dedicated) > max(z for dedicated, z in orders if not dedicated)


def test_dial_says_how_many_dedicated_models_were_timed_and_paper_pngs_are_300_dpi(paper):
    """The dial's hatched time bar is partly the timed models' mean: the tick says how many of the grid were
    timed (the fixture's PGD-AT: at 2 of FLOAT's 11 λ). Paper PNGs are 300 dpi (1,020 px across a column)."""
    run, figs = paper
    dial = next(f for f in build(load_run(run)).figures if f.name == "dial")
    ticks = [t.get_text() for ax in _drawn(dial).axes for t in ax.get_xticklabels()]
    assert any(t.endswith("(11 grid λ, 2 timed)") for t in ticks), ticks
    from PIL import Image
    render(run, formats=("html",))
    assert Image.open(run / "figures" / "paper" / "tradeoff-aa.png").size[0] == 1020


def _white_dots(ax) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections if len(c.get_facecolor()) and len(c.get_offsets())
               and matplotlib.colors.to_hex(c.get_facecolor()[0]) == "#ffffff")


def test_autoattack_rand_points_carry_a_white_dot(tmp_path):
    """Where a point's AutoAttack accuracy is AutoAttack rand's (EOT, for FLOAT-family noise at λ ≥ 0.1), its
    marker carries a white dot in the trade-off and λ figures, named in the legend and the caption; the
    standard version's points carry none, and the column-wide paper figure still fits its legend."""
    from report.marks import RAND_CAPTION
    from test_report import EVIL

    def rand(t):
        t = _synthetic(t)
        noisy = (t["method"] == EVIL) & (t["metric"] == "aa_acc") & (t["lambda"] >= 0.1)
        t.loc[noisy & ~((t["lambda"] == 0.5) & (t["seed"] == 1)), "attack"] = "aa-rand"  # λ=0.5: seed 0's only
        return t
    style.setup()
    figures = {f.name: f for f in build(load_run(_run(tmp_path, rand))).figures}
    for name, panel in (("tradeoff", 1), ("lambda", 2)):  # the AutoAttack panel
        spec = figures[name]
        assert RAND_CAPTION in spec.caption
        fig = _drawn(spec)
        assert _white_dots(fig.axes[panel]) == 9, name  # λ = 0.1 … 1 but 0.5 (one seed's); λ = 0: standard
        assert _white_dots(fig.axes[0]) == 0  # the PGD (or clean) panel
        assert any("AutoAttack rand" in t.get_text() for leg in fig.legends for t in leg.get_texts())
    assert "AutoAttack rand (a random forward pass) scored " in figures["complexity"].caption  # (no dots there)
    plain = {f.name: f for f in build(load_run(_run(tmp_path, _synthetic, name="plain"))).figures}  # no rand
    assert RAND_CAPTION not in plain["tradeoff"].caption and "AutoAttack rand" not in plain["complexity"].caption
    spec = next(p for p in figures["tradeoff"].paper if p.name == "tradeoff-aa")
    with style.paper():
        fig = new_figure(spec.size, layout="constrained")
        spec.draw(fig)
        drawn = fig.get_tightbbox(fig.canvas.get_renderer())
    assert drawn.x1 <= spec.size[0] + 0.02 and drawn.y0 >= -0.02 and drawn.y1 <= spec.size[1] + 0.02


def test_points_of_several_methods_at_one_place_are_all_seen(tmp_path):
    """Two methods' points at one place: the covered marker is drawn again, smaller, over the top one (before,
    OAT's λ=0 point vanished under FLOAT's), in the trade-off and λ figures, and the captions say so."""
    from report.marks import NESTED_CAPTION
    from test_report import EVIL

    def same(t):  # OAT and FLOAT (renamed EVIL) at λ = 0: the same accuracies, every seed
        t = _synthetic(t)
        for metric, value in (("clean_acc", 0.5), ("pgd_acc", 0.3), ("aa_acc", 0.28)):
            t.loc[t["method"].isin(["oat", EVIL]) & (t["metric"] == metric) & (t["lambda"] == 0), "value"] = value
        return t
    style.setup()
    run = _run(tmp_path, same)
    methods = style.method_order(load_run(run).table["method"])
    figures = {f.name: f for f in build(load_run(run)).figures}
    for name, point in (("tradeoff", (30.0, 50.0)), ("lambda", (0.0, 50.0))):
        assert NESTED_CAPTION in figures[name].caption
        ax = _drawn(figures[name]).axes[0]
        seen = {}
        for ln in ax.lines:
            xs, ys = ln.get_xdata(), ln.get_ydata()
            for x, y in zip(xs, ys):
                if (round(float(x), 6), round(float(y), 6)) == point:
                    seen.setdefault(matplotlib.colors.to_hex(ln.get_color()), []).append((ln.get_zorder(), ln.get_markersize()))
        top, covered = (matplotlib.colors.to_hex(style.look(m, methods)["color"]) for m in (EVIL, "oat"))
        assert max(z for z, _ in seen[covered]) > max(z for z, _ in seen[top]), seen  # drawn over the top one
        assert min(s for _, s in seen[covered]) < min(s for _, s in seen[top])  # and smaller
    plain = {f.name: f for f in build(load_run(_run(tmp_path, _synthetic, name="plain"))).figures}
    assert NESTED_CAPTION not in plain["tradeoff"].caption

    def single(t):  # Fast-AT (a single model: drawn over lines) and OAT at λ = 1, OAT drawn after it
        t = _synthetic(t)
        for metric, value in (("clean_acc", 0.5), ("pgd_acc", 0.3), ("aa_acc", 0.28)):
            t.loc[t["method"].isin(["oat", "fast_at"]) & (t["metric"] == metric) & (t["lambda"] == 1), "value"] = value
        return t
    lam = next(f for f in build(load_run(_run(tmp_path, single, name="single"))).figures if f.name == "lambda")
    seen = {}
    for ln in _drawn(lam).axes[0].lines:
        if any((round(float(x), 6), round(float(y), 6)) == (1.0, 50.0) for x, y in zip(ln.get_xdata(), ln.get_ydata())):
            seen.setdefault(matplotlib.colors.to_hex(ln.get_color()), []).append(ln.get_zorder())
    oat, fast = (matplotlib.colors.to_hex(style.look(m, methods)["color"]) for m in ("oat", "fast_at"))
    assert max(seen[oat]) > max(seen[fast]), seen  # OAT's line marker lies under Fast-AT's: redrawn over it
