"""OATS: OAT on a slimmable network (harness/slimmable.py, methods/oats.py)."""
import pandas as pd
import pytest
import torch
from torch import nn

import run_all
from harness import complexity
from harness.conditioned import Condition, FiLM
from harness.config import TrainConfig
from harness.data import DatasetInfo
from harness.slimmable import SlimConv2d, SlimFiLM, SwitchableDualBN, channels
from methods import get_method

CIFAR = DatasetInfo("c", 10, 3, 32, (0.5,) * 3, (0.25,) * 3, 8 / 255, 4, True)


def _oats(**opts):
    return get_method("oats")(TrainConfig(train_attack="pgd2", options=opts), 8 / 255)


def test_full_width_film_is_film_and_slices_take_both_halves():
    torch.manual_seed(0)
    cond = Condition(enc=torch.randn(3, 4))
    film, slim = FiLM(8, 4, cond), SlimFiLM(8, 4, cond)
    slim.load_state_dict(film.state_dict())
    h = torch.randn(3, 8, 5, 5)
    assert torch.allclose(slim(h), film(h), atol=1e-6)
    # at 4 of 8 channels: the first 4 scales and the first 4 shifts of the same MLP, hidden units likewise
    rows = torch.tensor([0, 1, 2, 3, 8, 9, 10, 11])
    small = FiLM(4, 4, cond)
    small.mlp[0].weight.data, small.mlp[0].bias.data = film.mlp[0].weight[rows], film.mlp[0].bias[rows]
    small.mlp[2].weight.data, small.mlp[2].bias.data = film.mlp[2].weight[rows][:, rows], film.mlp[2].bias[rows]
    assert torch.allclose(slim(h[:, :4]), small(h[:, :4]), atol=1e-6)


def test_slim_conv_is_the_leading_slice():
    torch.manual_seed(0)
    cond = Condition(width=0.5)
    conv = SlimConv2d(6, 8, 3, padding=1, cond=cond)
    x = torch.randn(2, 3, 7, 7)  # half the input channels
    out = conv(x)
    assert out.shape == (2, 4, 7, 7)
    assert torch.allclose(out, nn.functional.conv2d(x, conv.weight[:4, :3], conv.bias[:4], padding=1), atol=1e-6)


def test_each_width_has_its_own_dual_bn():
    cond = Condition(width=0.5)
    bn = SwitchableDualBN(8, (1.0, 0.5), cond)
    assert [b.bn_adv.num_features for b in bn.bns] == [8, 4]
    bn.train()
    bn(torch.randn(4, 4, 3, 3) + 5)
    assert bn.bns[0].bn_adv.running_mean.abs().max() == 0          # the full width's stats untouched
    assert bn.bns[1].bn_adv.running_mean.min() > 0.1                # this width's moved
    assert bn.bns[1].bn_clean.running_mean.abs().max() == 0         # and only the adversarial branch


def test_complexity_shrinks_with_width():
    """Non-zero parameters and MACs per width, as torch's counter and the forward hooks see them: MACs of
    the convolutions scale about as width squared."""
    m = _oats()
    model = m.build_model("resnet34", CIFAR)
    x = torch.rand(1, 3, 32, 32)
    got = {}
    for v in m.variants():
        with m.variant(v), m.configure(model, 0.4) as forward:
            got[v] = (complexity.count(complexity.used_masks(forward, model, x)), complexity.macs(forward, model, x))
    assert m.variants() == ["w1", "w0.75", "w0.5"]
    assert got["w1"][0] > got["w0.75"][0] > got["w0.5"][0]
    assert got["w1"][1] == pytest.approx(1.16e9, rel=0.02)                  # ResNet-34 and its FiLM cost
    assert got["w0.5"][1] / got["w1"][1] == pytest.approx(0.25, abs=0.02)
    assert got["w0.75"][1] / got["w1"][1] == pytest.approx(0.5625, abs=0.02)
    assert complexity.params(model) > got["w1"][0]  # the narrower widths' own BN layers are not used at w1
    assert channels(64, 0.75) == 48


def test_train_step_trains_every_width():
    torch.manual_seed(0)
    m = _oats(widths="0.5,1")
    model = m.build_model("small_cnn", CIFAR)
    loss, logits, y = m.train_step(model.train(), torch.rand(12, 3, 32, 32), torch.randint(0, 10, (12,)))
    loss.backward()
    assert logits.shape == (12, 10) and m.factory.cond.width == 1.0
    bns = [mod for mod in model.modules() if isinstance(mod, SwitchableDualBN)]
    for i in range(2):  # both widths' BN layers (clean and adversarial branch) got gradient
        for branch in ("bn_clean", "bn_adv"):
            assert getattr(bns[0].bns[i], branch).weight.grad.abs().sum() > 0


def test_bad_widths_is_one_line(capsys):
    code = run_all.main(["--methods", "oats", "--opt", "widths=0.5,2", "--epochs", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "widths" in err and err.count("\n") == 1


def test_each_width_is_scored_as_its_own_model(tmp_path, capsys):
    """One OATS job: rows for every width at every lambda of OAT's grid, each width with the training cost,
    its own MACs and parameters, and a report that names them."""
    code = run_all.main(["--methods", "oats", "--epochs", "1", "--subset", "256", "--eval-n", "60",
                         "--eval", "pgd3", "--aa", "off", "--checks", "off", "--no-progress", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    assert set(table.method) == {"oats-w1", "oats-w0.75", "oats-w0.5"} and table.job.nunique() == 1
    clean = table[table.metric == "clean_acc"]
    assert clean.groupby("method")["lambda"].apply(sorted).map(tuple).unique().tolist() == \
        [(0.0, 0.1, 0.2, 0.3, 0.4, 1.0)]
    assert (table[table.metric == "train_time_s"].groupby("method").size() == 1).all()
    macs = table[(table.metric == "macs") & (table["lambda"] == 1.0)].set_index("method").value
    assert macs["oats-w1"] > macs["oats-w0.75"] > macs["oats-w0.5"]
    assert " oats-w0.5:" in out
    html = (tmp_path / "smoke" / "report.html").read_text()
    assert all(f"OATS {w}" in html for w in ("w1", "w0.75", "w0.5"))


@pytest.mark.slow
def test_the_dial_works_at_every_width(tmp_path):
    """Digits at eps 0.2, 15 epochs (about a minute on 2 cores): at every width PGD accuracy at lambda = 1
    beats lambda = 0 by a margin, and clean accuracy at lambda = 0 is at least that at lambda = 1."""
    code = run_all.main(["--methods", "oats", "--eps", "0.2", "--epochs", "15", "--lr", "0.1", "--train-attack",
                         "pgd3", "--eval", "pgd10", "--aa", "off", "--checks", "off", "--complexity", "off",
                         "--no-progress", "--no-report", "--out", str(tmp_path)])
    assert code == 0
    table = pd.read_csv(tmp_path / "smoke" / "results.csv")
    acc = table[table.metric.isin(["clean_acc", "pgd_acc"])].pivot_table(
        index=["method", "lambda"], columns="metric", values="value")
    for width in ("w1", "w0.75", "w0.5"):
        a = acc.loc[f"oats-{width}"]
        assert a.loc[1.0, "pgd_acc"] > a.loc[0.0, "pgd_acc"] + 0.05, a
        assert a.loc[0.0, "clean_acc"] >= a.loc[1.0, "clean_acc"], a


def test_widths_share_the_method_hue_but_no_look():
    from report import style
    methods = ["pgd_at", "oat", "oats-w0.5", "oats-w0.75", "oats-w1"]
    looks = {m: style.look(m, methods) for m in methods}
    assert len({(tuple(v["color"]), v["marker"]) for v in looks.values()}) == len(methods)
    assert style.display("oats-w0.5") == "OATS w0.5" and style.display("oats") == "OATS"
