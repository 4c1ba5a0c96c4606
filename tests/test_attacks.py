"""Tests for harness.attacks: budget/box constraints, analytic worst case on a linear model, the
best-iterate rule of PGD, no side effects on the model, attack-name parsing and a robustness sanity check."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from harness import attacks
from harness.attacks import AttackSpec, fgsm_rs, parse_attack, pgd
from harness.errors import LambenchError

TOL = 1e-6


# --- helpers -------------------------------------------------------------------------------------------------
def small_conv(seed: int = 0, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 4 * 4, classes),
    ).eval()


def images_with_extremes(n: int = 16, seed: int = 1) -> torch.Tensor:
    """Random images in [0, 1] with a share of pixels at exactly 0 and exactly 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    r = torch.rand(x.shape, generator=g)
    x[r < 0.15] = 0.0
    x[r > 0.85] = 1.0
    return x


def ce_and_wrong(model, x_adv, y):
    with torch.no_grad():
        logits = model(x_adv)
    return F.cross_entropy(logits, y, reduction="none"), logits.argmax(1) != y


def assert_in_budget(x_adv, x, eps):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.isfinite(x_adv).all()
    assert (x_adv - x).abs().max().item() <= eps + TOL
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0


# --- 1. eps-ball and [0, 1] box ------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [1 / 255, 8 / 255, 0.1, 0.3])
def test_fgsm_rs_stays_in_eps_ball_and_box(eps):
    model, x = small_conv(), images_with_extremes()
    assert (x == 0).any() and (x == 1).any()
    y = torch.arange(len(x)) % 10
    for alpha in (None, 0.5 * eps, 3 * eps):
        torch.manual_seed(0)
        x_adv = fgsm_rs(model, x, y, eps, alpha)
        assert_in_budget(x_adv, x, eps)
        # it really perturbs (an attack returning x unchanged would pass the bounds trivially)
        assert (x_adv - x).abs().max().item() > eps / 2


@pytest.mark.parametrize("eps", [1 / 255, 8 / 255, 0.1, 0.3])
@pytest.mark.parametrize("restarts,random_start", [(1, False), (1, True), (3, True)])
def test_pgd_stays_in_eps_ball_and_box(eps, restarts, random_start):
    model, x = small_conv(), images_with_extremes()
    y = torch.arange(len(x)) % 10
    for keep_best in (True, False):
        torch.manual_seed(0)
        x_adv = pgd(model, x, y, eps, alpha=eps / 2, steps=4, restarts=restarts,
                    random_start=random_start, keep_best=keep_best)
        assert_in_budget(x_adv, x, eps)
        assert (x_adv - x).abs().max().item() > eps / 2


def test_pgd_is_reproducible_with_a_generator():
    model, x = small_conv(), images_with_extremes()
    y = torch.arange(len(x)) % 10
    a = pgd(model, x, y, 0.1, 0.05, 3, restarts=2, generator=torch.Generator().manual_seed(5))
    b = pgd(model, x, y, 0.1, 0.05, 3, restarts=2, generator=torch.Generator().manual_seed(5))
    c = pgd(model, x, y, 0.1, 0.05, 3, restarts=2, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --- 2. analytic worst case on a 2-class linear model ---------------------------------------------------------
def linear_problem(n: int = 32, seed: int = 0):
    """2-class linear model on [n, 3, 4, 4] inputs in [0.2, 0.8]. For CE loss the input gradient is
    p_wrong * (w_wrong - w_true), so its sign is the constant sign(w_wrong - w_true)."""
    g = torch.Generator().manual_seed(seed)
    d = 3 * 4 * 4
    base = torch.randn(d, generator=g)
    diff = (0.5 + torch.rand(d, generator=g)) * torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([base, base + diff]))
        model[1].bias.zero_()
    model.eval()
    x = 0.2 + 0.6 * torch.rand(n, 3, 4, 4, generator=g)
    y = torch.arange(n) % 2
    w = model[1].weight.detach()
    direction = torch.sign(w[1 - y] - w[y]).view_as(x)   # sign(w_wrong - w_true), per example
    return model, x, y, direction


def test_linear_input_gradient_sign_is_analytic():
    model, x, y, direction = linear_problem()
    xr = x.clone().requires_grad_(True)
    F.cross_entropy(model(xr), y, reduction="sum").backward()
    assert torch.equal(torch.sign(xr.grad), direction)


@pytest.mark.parametrize("eps", [2 / 255, 8 / 255, 0.1])
def test_pgd_reaches_analytic_worst_case_on_linear_model(eps):
    model, x, y, direction = linear_problem()
    expected = x + eps * direction
    for keep_best in (True, False):
        x_adv = pgd(model, x, y, eps, alpha=eps / 4, steps=10, random_start=False, keep_best=keep_best)
        torch.testing.assert_close(x_adv, expected, atol=1e-6, rtol=0)
    # one PGD step of size eps from the clean point is already the corner
    x_adv = pgd(model, x, y, eps, alpha=eps, steps=1, random_start=False)
    torch.testing.assert_close(x_adv, expected, atol=1e-6, rtol=0)
    # the named attack (random start, default step eps/4, 20 steps) reaches it too
    torch.manual_seed(0)
    x_adv = parse_attack("pgd20")(model, x, y, eps)
    torch.testing.assert_close(x_adv, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("eps", [2 / 255, 8 / 255, 0.1])
def test_fgsm_rs_on_linear_model(eps):
    model, x, y, direction = linear_problem()
    # a step of 2 eps from any start in the ball lands on the corner
    torch.manual_seed(0)
    torch.testing.assert_close(fgsm_rs(model, x, y, eps, alpha=2 * eps), x + eps * direction, atol=1e-6, rtol=0)
    # the default step (1.25 eps) moves every pixel at least 0.25 eps in the ascent direction
    torch.manual_seed(1)
    delta = fgsm_rs(model, x, y, eps) - x
    assert (delta * direction).min().item() >= 0.25 * eps - 1e-6


# --- 3. PGD keeps each example's best iterate ------------------------------------------------------------------
def mlp_problem(seed: int = 0, n: int = 256):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 64), nn.Tanh(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 10)).eval()
    x = torch.rand(n, 3, 6, 6)
    with torch.no_grad():
        y = model(x).argmax(1)   # all clean-correct, so the attack outcome is a mix of fooled and not fooled
    return model, x, y


def weaker(loss_a, wrong_a, loss_b, wrong_b, tol=1e-5):
    """Per example: is result ``b`` strictly weaker than result ``a`` under the best-iterate rule?"""
    return (wrong_a & ~wrong_b) | ((wrong_a == wrong_b) & (loss_b < loss_a - tol))


@pytest.mark.parametrize("random_start,restarts", [(False, 1), (True, 1), (True, 3)])
def test_pgd_more_steps_never_weaker(random_start, restarts):
    model, x, y = mlp_problem()
    eps, alpha = 0.05, 0.1   # step twice the radius: the iterates bounce and the loss along the path is non-monotone

    def run(steps, keep_best=True):
        return pgd(model, x, y, eps, alpha, steps, restarts=restarts, random_start=random_start,
                   keep_best=keep_best, generator=torch.Generator().manual_seed(3))

    results = {k: ce_and_wrong(model, run(k), y) for k in (1, 2, 4, 8)}
    # the setup is non-trivial: some but not all examples are fooled
    n_wrong = results[8][1].sum().item()
    assert 0 < n_wrong < len(y)
    for fewer, more in [(1, 2), (2, 4), (4, 8), (1, 8)]:
        (lf, wf), (lm, wm) = results[fewer], results[more]
        assert not (wf & ~wm).any(), f"fooled after {fewer} steps but not after {more}"
        same = wf == wm
        assert (lm[same] >= lf[same] - 1e-5).all(), f"lower loss after {more} steps than after {fewer}"
        assert not weaker(lf, wf, lm, wm).any()

    # a last-iterate PGD (keep_best=False) would fail the check above in this setup
    ll, wl = ce_and_wrong(model, run(8, keep_best=False), y)
    assert weaker(*results[4], ll, wl).any()
    assert weaker(*results[8], ll, wl).sum().item() >= 10


def test_pgd_best_is_at_least_clean_strength():
    model, x, y = mlp_problem(seed=1)
    l0, w0 = ce_and_wrong(model, x, y)
    l1, w1 = ce_and_wrong(model, pgd(model, x, y, 0.05, 0.1, 5, random_start=False), y)
    assert not weaker(l0, w0, l1, w1).any()
    assert (l1 > l0 + 1e-4).all()   # every example's loss went up


# --- 4. no side effects on the model -----------------------------------------------------------------------------
def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.0),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


ATTACKS = {
    "fgsm_rs": lambda m, x, y: fgsm_rs(m, x, y, 8 / 255),
    "pgd": lambda m, x, y: pgd(m, x, y, 8 / 255, 2 / 255, 3, restarts=2),
    "pgd_last": lambda m, x, y: pgd(m, x, y, 8 / 255, 2 / 255, 3, keep_best=False),
    "spec_pgd5x2": lambda m, x, y: parse_attack("pgd5x2")(m, x, y, 8 / 255),
    "spec_fgsm_rs": lambda m, x, y: parse_attack("fgsm_rs")(m, x, y, 8 / 255),
}


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_leaves_no_gradients_and_keeps_mode(name, training):
    model = bn_model().train(training)
    x = images_with_extremes(8)
    x_before = x.clone()
    y = torch.arange(8) % 10
    x_adv = ATTACKS[name](model, x, y)
    assert x_adv.requires_grad is False and x_adv.grad_fn is None
    assert torch.equal(x, x_before), "the attack modified its input in place"
    for p in model.parameters():
        assert p.grad is None
        assert p.requires_grad
    assert all(m.training is training for m in model.modules())


def test_attack_does_not_touch_existing_parameter_gradients():
    model = bn_model().eval()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    x = images_with_extremes(8)
    y = torch.arange(8) % 10
    pgd(model, x, y, 8 / 255, 2 / 255, 3)
    fgsm_rs(model, x, y, 8 / 255)
    for p in model.parameters():
        assert torch.equal(p.grad, torch.full_like(p, 0.5))


# --- 5. parse_attack ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,steps,restarts", [("pgd20", 20, 1), ("pgd7", 7, 1), ("pgd50x10", 50, 10),
                                                 ("pgd1x3", 1, 3)])
def test_parse_attack_pgd(spec, steps, restarts):
    a = parse_attack(spec)
    assert isinstance(a, AttackSpec)
    assert (a.name, a.kind, a.steps, a.restarts) == (spec, "pgd", steps, restarts)


def test_parse_attack_fgsm_rs_and_step_sizes():
    a = parse_attack("fgsm_rs")
    assert (a.name, a.kind) == ("fgsm_rs", "fgsm_rs")
    assert a.step_size(8 / 255, None) == pytest.approx(10 / 255)
    assert parse_attack("pgd20").step_size(8 / 255, None) == pytest.approx(2 / 255)
    assert parse_attack("pgd2").step_size(8 / 255, None) == pytest.approx(4 / 255)
    assert parse_attack("pgd20").step_size(8 / 255, 0.5 / 255) == 0.5 / 255


@pytest.mark.parametrize("spec", ["foo", "pgd0", "pgd0x3", "pgd", "pgd20x", "pgd-1", "fgsm", "PGD20", "pgd20 ",
                                  "", "pgd7x2x2", "pgd50x0"])
def test_parse_attack_rejects(spec):
    with pytest.raises(LambenchError):
        parse_attack(spec)


def test_fast_at_protocol_pgd50x10_step_2_255(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10)).eval()
    x, y = torch.rand(2, 3, 4, 4), torch.tensor([0, 1])
    attack = parse_attack("pgd50x10")
    x_adv = attack(model, x, y, eps=8 / 255, step=2 / 255)
    assert_in_budget(x_adv, x, 8 / 255)
    assert (x_adv - x).abs().max().item() > 4 / 255

    seen = {}

    def spy(forward, x, y, eps, alpha, steps, restarts=1, random_start=True, keep_best=True, generator=None):
        seen.update(eps=eps, alpha=alpha, steps=steps, restarts=restarts, random_start=random_start,
                    keep_best=keep_best)
        return x

    monkeypatch.setattr(attacks, "pgd", spy)
    attack(model, x, y, eps=8 / 255, step=2 / 255)
    assert seen == dict(eps=8 / 255, alpha=2 / 255, steps=50, restarts=10, random_start=True, keep_best=True)


# --- 6. sanity: an undefended model is not robust at a large eps -------------------------------------------------
def test_undefended_model_loses_accuracy_under_pgd():
    g = torch.Generator().manual_seed(0)
    n, d = 400, 20
    y = torch.arange(n) % 2
    x = (0.35 + 0.3 * y.float()[:, None] + 0.05 * torch.randn(n, d, generator=g)).clamp(0, 1).view(n, 1, 4, 5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)

    def acc(xx):
        with torch.no_grad():
            return (model(xx).argmax(1) == y).float().mean().item()

    clean = acc(x)
    torch.manual_seed(0)
    small = acc(parse_attack("pgd10")(model, x, y, eps=1 / 255))
    torch.manual_seed(0)
    large = acc(parse_attack("pgd10")(model, x, y, eps=0.3))
    assert clean >= 0.97
    assert small >= 0.9            # a tiny budget cannot flip well-separated data
    assert large <= 0.1 and large < clean - 0.5


def test_frozen_weights_come_back_with_their_own_flags_even_after_an_error():
    net = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    net[1].bias.requires_grad_(False)
    with pytest.raises(RuntimeError, match="inside"):
        with attacks.frozen(net.parameters()):
            assert not any(p.requires_grad for p in net.parameters())
            raise RuntimeError("inside")
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, False]


def test_the_training_attack_runs_on_frozen_weights_and_leaves_them_trainable():
    """What keeps a compiled attack from computing every weight's gradient (see ``attacks.frozen``)."""
    from harness.config import TrainConfig
    from harness.data import DatasetInfo
    from methods import get_method
    info = DatasetInfo("c", 10, 3, 8, (0.5,) * 3, (0.25,) * 3, 8 / 255, 0, False)
    method = get_method("pgd_at")(TrainConfig(train_attack="pgd2"), 8 / 255)
    model = method.build_model("small_cnn", info).train()
    seen = []
    model.register_forward_pre_hook(lambda m, _: seen.append((m.training, any(p.requires_grad for p in m.parameters()))))
    loss, _, _ = method.train_step(model, torch.rand(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    assert seen == [(False, False)] * 2 + [(True, True)]  # two attack steps in eval mode, then training
    assert loss.requires_grad and all(p.requires_grad for p in model.parameters())
