"""AutoAttack through the adapter on real (quickly trained) digits models, and the checks that catch a
gradient-masked model PGD alone would certify.

Budgets: the digits are 8x8 with 17 grey levels and their default eps is 0.1 (the MNIST family's); an
undefended small CNN keeps ~20% under PGD-20 and ~8% under AutoAttack there, so "undefended goes to ~0"
is tested at eps = 0.15, where both reach 0. (The 8/255 of the issue is the CIFAR-scale budget.)
"""
import sys
import types
from contextlib import contextmanager

import pytest
import torch

from harness.attacks import parse_attack
from harness.autoattack import package, run_autoattack
from harness.config import EvalConfig, TrainConfig
from harness.evaluate import evaluate
from harness.train import train
from methods import get_method
from methods.base import Method, eval_mode


def _train(digits, tmp_path, train_lambda, epochs, attack="pgd7"):
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, train_attack=attack)
    method = get_method("pgd_at")(cfg, 0.1, train_lambda)
    model = method.build_model("small_cnn", digits.info)
    train(method, model, digits, cfg, tmp_path, torch.device("cpu"), progress=False, log=lambda *_: None)
    return method, model.eval()


@pytest.fixture(scope="module")
def undefended(digits, tmp_path_factory):
    """Standard training (pgd_at at lambda 0): ~98% clean."""
    return _train(digits, tmp_path_factory.mktemp("std"), 0.0, epochs=6)[1]


def _xy(digits, n):
    return digits.x_test[:n].float() / 255, digits.y_test[:n]


def _pgd_acc(forward, x, y, eps):
    torch.manual_seed(0)
    x_adv = parse_attack("pgd20")(forward, x, y, eps)
    with torch.no_grad():
        return (forward(x_adv).argmax(1) == y).float().mean().item()


def test_package_is_a_maintained_autoattack():
    name, cls = package()
    assert name in ("autoattack", "pyautoattack") and hasattr(cls, "run_standard_evaluation")


def test_undefended_model_goes_to_zero(digits, undefended):
    x, y = _xy(digits, 40)
    with torch.no_grad():
        assert (undefended(x).argmax(1) == y).float().mean() > 0.9
    grads = [None if p.grad is None else p.grad.clone() for p in undefended.parameters()]
    res = run_autoattack(undefended, x, y, eps=0.15, seed=0)
    assert res.acc <= 0.025 and res.n == 40 and res.attack == "aa-standard" and not res.warnings
    for p, g in zip(undefended.parameters(), grads):  # FAB's backward must not reach the weights
        assert (p.grad is None and g is None) or torch.equal(p.grad, g), "AutoAttack left gradients on the weights"
    assert not undefended.training and all(p.requires_grad for p in undefended.parameters())


class Quantised(Method):
    """A deliberately gradient-masked defence: the forward rounds its input to the digits' 17 grey levels,
    so the input gradient is zero everywhere and PGD cannot move from its random start."""
    name = "quantised"

    @contextmanager
    def configure(self, model, lam):
        with eval_mode(model):
            yield lambda x: model(torch.round(x * 16) / 16)


def test_gradient_masked_model_is_flagged_and_autoattack_scores_it_low(digits, undefended):
    method = Quantised(TrainConfig(), 0.1)
    cfg = EvalConfig(aa_n=24, checks_n=100, complexity=False)
    rows = evaluate(method, undefended, digits, cfg, eps=0.1, progress=False)
    value = {(r["metric"], r["attack"]): r["value"] for r in rows}
    pgd, aa = value[("pgd_acc", "pgd20")], value[("aa_acc", "aa-standard")]
    assert pgd > 0.85, "PGD-20 is fooled by the masking"
    assert aa < pgd - 0.5, "AutoAttack (Square) sees through it"
    assert value[("flag:unbounded_near_zero", "pgd20@eps1.0")] == 1.0
    assert value[("flag:autoattack", "aa-standard")] == 1.0
    detail = next(r["detail"] for r in rows if r["metric"] == "flag:autoattack")
    assert "zero gradient" in detail or "Square" in detail
    # the same network without the masking passes the gradient checks
    plain = [r for r in evaluate(get_method("pgd_at")(TrainConfig(), 0.1, 0.0), undefended, digits,
                                 EvalConfig(aa="off", checks_n=100, complexity=False), eps=0.1, progress=False)
             if r["metric"] == "flag:unbounded_near_zero"]
    assert [r["value"] for r in plain] == [0.0]


@pytest.mark.slow  # ~40 s on one CPU core: Square's 5000 queries run in full on a robust model
def test_autoattack_at_most_pgd_on_pgd_at_model(digits, tmp_path):
    """The smoke preset's pgd_at model (15 epochs, PGD-7): on the same 100 examples AutoAttack's accuracy
    is at most PGD-20's."""
    method, model = _train(digits, tmp_path, 1.0, epochs=15)
    x, y = _xy(digits, 100)
    with method.configure(model, 1.0) as forward:
        pgd = _pgd_acc(forward, x, y, 0.1)
        res = run_autoattack(forward, x, y, eps=0.1, seed=0, model=model)
    assert pgd > 0.7, "the model should be robust"
    assert res.acc <= pgd + 1e-6, (res.acc, pgd)


def test_official_package_api_is_preferred_and_its_warnings_captured(monkeypatch, digits, undefended):
    """With an importable official ``autoattack`` module (positional model, ``bs=``, ``return_labels``,
    warnings printed through its logger), the adapter uses it and turns its warnings into flags."""
    calls = {}

    class AutoAttack:
        def __init__(self, model, norm="Linf", eps=0.3, seed=None, verbose=True, attacks_to_run=[],
                     version="standard", is_tf_model=False, device="cuda", log_path=None):
            calls.update(norm=norm, eps=eps, seed=seed, verbose=verbose, version=version, device=device)
            self.model = model

        def run_standard_evaluation(self, x, y, bs=250, return_labels=False):
            calls["bs"] = bs
            print("Warning: it seems to be a randomized defense! Please use version=\"rand\".")
            y_adv = self.model(x).argmax(1)
            return (x, y_adv) if return_labels else x

    monkeypatch.setitem(sys.modules, "autoattack", types.SimpleNamespace(AutoAttack=AutoAttack))
    x, y = _xy(digits, 16)
    res = run_autoattack(undefended, x, y, eps=0.1, version="rand", batch_size=8, seed=3)
    assert res.package == "autoattack" and res.attack == "aa-rand"
    assert calls == dict(norm="Linf", eps=0.1, seed=3, verbose=False, version="rand", device=x.device, bs=8)
    with torch.no_grad():
        assert res.acc == pytest.approx((undefended(x).argmax(1) == y).float().mean().item())
    assert res.warnings == ["it seems to be a randomized defense! Please use version=\"rand\"."]
