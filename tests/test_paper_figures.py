"""The paper-sized figures: each report figure again at a column (3.4 in) or page (7 in) width with 8 pt text,
saved under figures/paper/ and linked from the report. The run is the report fixture plus the SYNTHETIC
rows of test_report (AutoAttack, complexity, one flag), rendering inputs only."""
import matplotlib.text
import pytest

from report import render, style
from report.content import build
from report.figures import new_figure
from report.load import load_run
from test_report import _run, _synthetic

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
