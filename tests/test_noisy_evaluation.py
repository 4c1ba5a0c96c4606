"""Noisy evaluation: a model whose forward is random (FLOAT at lambda >= 0.1) is scored with a fixed noise seed
per evaluation, its clean accuracy the mean and sample std over ``noise_draws`` draws (README "Methods")."""
import numpy as np
import pytest
import torch

from harness import evaluate as evaluation
from harness.config import EvalConfig, TrainConfig
from methods import get_method

N = 64  # test examples scored; every setting below is the smallest that exercises the rule
FAST = dict(attacks=("pgd1",), n=N, batch_size=32, aa="off", checks=False, complexity=False)


@pytest.fixture(scope="module")
def noisy_float(digits):
    """An untrained FLOAT small CNN whose noise scale is raised from 0.25 to 2, so that different draws
    classify differently (at 0.25 an untrained model gives the same accuracy at every draw)."""
    torch.manual_seed(0)
    method = get_method("float")(TrainConfig(), 0.1)
    model = method.build_model("small_cnn", digits.info)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "alpha"):
                module.alpha.fill_(2.0)
    return method, model


def _evaluate(noisy_float, digits, lambdas, seed=0, **cfg):
    method, model = noisy_float
    return evaluation.evaluate(method, model, digits, EvalConfig(lambdas=lambdas, **(FAST | cfg)), eps=0.1,
                               seed=seed, progress=False)


def _record_clean_passes(monkeypatch):
    """Wrap the accuracy function evaluate uses so that each clean pass (one noise draw) keeps its logits;
    attacked passes go through untouched."""
    draws, real = [], evaluation._correct

    def correct(forward, loader, attack=None, *args, **kwargs):
        if attack is not None:
            return real(forward, loader, attack, *args, **kwargs)
        logits = []

        def recorded(x):
            out = forward(x)
            logits.append(out.detach().clone())
            return out
        result = real(recorded, loader, attack, *args, **kwargs)
        draws.append(torch.cat(logits))
        return result
    monkeypatch.setattr(evaluation, "_correct", correct)
    return draws


def _value(rows, lam, metric):
    found = [r["value"] for r in rows if r["lambda"] == lam and r["metric"] == metric]
    assert len(found) <= 1, f"{metric} at lambda {lam} appears {len(found)} times"
    return found[0] if found else None


def test_the_noise_seed_is_fixed_per_evaluation_and_follows_the_seed_argument(noisy_float, digits, monkeypatch):
    """The same model evaluated twice gives identical rows at random lambdas, whatever the global RNG held
    before; another ``seed`` draws other noise (other logits at a random lambda, the same at lambda = 0)."""
    assert noisy_float[0].is_random(0.3) and not noisy_float[0].is_random(0.0)
    torch.manual_seed(11)
    first = _evaluate(noisy_float, digits, (0.3, 0.7))
    torch.manual_seed(22)
    torch.rand(5)
    again = _evaluate(noisy_float, digits, (0.3, 0.7))
    assert first == again
    assert _value(first, 0.3, "clean_acc_std") is not None and _value(first, 0.7, "clean_acc_std") is not None

    draws = _record_clean_passes(monkeypatch)
    _evaluate(noisy_float, digits, (0.0, 0.3), seed=0)
    _evaluate(noisy_float, digits, (0.0, 0.3), seed=1)
    assert len(draws) == 2 * (1 + 3)  # per seed: lambda 0 once, lambda 0.3 three times
    assert torch.equal(draws[0], draws[4]), "lambda = 0 is deterministic: the seed changes nothing"
    for d in range(3):
        assert not torch.equal(draws[1 + d], draws[5 + d]), f"seed 1 must draw other noise (draw {d})"


@pytest.mark.parametrize("noise_draws", [None, 4])
def test_clean_acc_is_the_mean_and_sample_std_of_the_noise_draws(noisy_float, digits, monkeypatch, noise_draws):
    """At a random lambda clean accuracy is scored ``noise_draws`` times (3 by default), each draw with its
    own noise; ``clean_acc`` is the mean of the draws' accuracies and ``clean_acc_std`` their sample standard
    deviation (n - 1), both over all the examples scored."""
    draws = _record_clean_passes(monkeypatch)
    cfg = {} if noise_draws is None else {"noise_draws": noise_draws}
    rows = _evaluate(noisy_float, digits, (0.6,), **cfg)
    k = noise_draws or 3
    assert EvalConfig().noise_draws == 3 and len(draws) == k
    for i in range(k):
        for j in range(i):
            assert not torch.equal(draws[i], draws[j]), f"draws {j} and {i} share their noise"
    y = digits.y_test[:N]
    acc = np.array([(logits.argmax(1) == y).float().mean().item() for logits in draws])
    assert len(set(acc.tolist())) > 1, "the test needs draws that differ in accuracy"
    assert _value(rows, 0.6, "clean_acc") == pytest.approx(acc.mean(), abs=1e-6)
    assert _value(rows, 0.6, "clean_acc_std") == pytest.approx(acc.std(ddof=1), abs=1e-6)
    assert {r["n"] for r in rows if r["metric"].startswith("clean_acc")} == {N}


def test_a_deterministic_lambda_has_one_draw_and_no_spread(noisy_float, digits, monkeypatch):
    """Below lambda = 0.1 FLOAT's forward is deterministic: clean accuracy is one pass and there is no
    ``clean_acc_std`` row (the convention: the row exists only for random models)."""
    draws = _record_clean_passes(monkeypatch)
    rows = _evaluate(noisy_float, digits, (0.0, 0.05))
    assert len(draws) == 2, "one clean pass per deterministic lambda"
    y = digits.y_test[:N]
    for lam, logits in zip((0.0, 0.05), draws):
        assert _value(rows, lam, "clean_acc") == pytest.approx((logits.argmax(1) == y).float().mean().item())
        assert _value(rows, lam, "clean_acc_std") is None


@pytest.mark.parametrize("draws", [0, 1, 2])
def test_fewer_than_three_noise_draws_is_refused(draws):
    """The protocol's spread needs at least 3 draws: fewer is a clear error, not one silent draw."""
    from harness.errors import LambenchError
    with pytest.raises(LambenchError, match="at least 3 noise draws"):
        EvalConfig(noise_draws=draws)
