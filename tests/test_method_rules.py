"""Rules of the once-for-all methods the audit found untested: OAT's loss, routing, attack step and saved
encoding table; FLOAT's training step; FiLM's outer leaky ReLU (layer, bank, slimmable); the noise scales'
weight decay."""
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from harness import attacks
from harness.conditioned import CondConv2d, Condition, DualBN, FiLM
from harness.config import TrainConfig
from harness.data import Dataset
from harness.slimmable import SlimFiLM
from harness.store import load_checkpoint, save_checkpoint
from harness.train import optimizer_for, train
from methods import get_method
from methods.oat import DIM, LAMBDAS, zeros_in

POS = torch.tensor([0, 0, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5])  # batch 12: ceil(12/6) = 2 zeros first, every lambda


def _method(name, attack="pgd1", **cfg):
    return get_method(name)(TrainConfig(train_attack=attack, **cfg), 0.1)


def _batch(digits, n=12):
    return digits.x_train[:n].float() / 255, digits.y_train[:n]


def _leaky(v):
    return torch.where(v > 0, v, 0.01 * v)


def _phases(model, x, monkeypatch):
    """A list whose first entry names the pass under way: "attack" inside the training PGD, else "clean" for
    the model called on ``x`` itself and "adv" for any other input; ``crafted`` holds (input, output) of
    each attack and ``rng`` the generator state at the start of each pass."""
    phase, crafted, rng = [None], [], {}
    pgd = attacks.pgd

    def attacking(forward, xs, *args, **kwargs):
        phase[0] = "attack"
        try:
            crafted.append((xs, pgd(forward, xs, *args, **kwargs)))
            return crafted[-1][1]
        finally:
            phase[0] = None

    def start(module, inputs):
        if phase[0] != "attack":
            phase[0] = "clean" if inputs[0] is x else "adv"
            rng[phase[0]] = torch.get_rng_state()

    monkeypatch.setattr(attacks, "pgd", attacking)
    return phase, crafted, rng, [model.register_forward_pre_hook(start)]


def _distinct_bns(model):
    """Different affine parameters for each dual BN's two branches, so a row's route shows in the outputs."""
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, DualBN)):
            bn.bn_clean.weight.uniform_(0.5, 1.5)
            bn.bn_adv.bias.uniform_(-0.5, 0.5)
    return model


def _record_bns(model, phase, seen, handles):
    for bn in (m for m in model.modules() if isinstance(m, DualBN)):
        for name in ("bn_clean", "bn_adv"):
            handles.append(getattr(bn, name).register_forward_hook(
                lambda mod, inp, out, name=name: seen.append((phase[0], name, len(inp[0]), mod.training))))


def test_oat_loss_is_the_lambda_weighted_mean_of_clean_and_adversarial_ce(digits, monkeypatch):
    """OAT's loss is the mean over samples of (1 - lam_i) CE(clean_i) + lam_i CE(adv_i), the adversarial term
    only for lam_i > 0: recomputed from the model's outputs on the examples its attack crafted."""
    torch.manual_seed(0)
    oat = _method("oat")
    model = _distinct_bns(oat.build_model("small_cnn", digits.info).train())
    x, y = _batch(digits)
    _, crafted, _, _ = _phases(model, x, monkeypatch)
    loss, _, _ = oat.oat_loss(model, x, y, POS)
    n0, lam, enc, cond = zeros_in(len(x)), torch.tensor(LAMBDAS)[POS], oat.table[POS], oat.factory.cond
    with torch.no_grad():
        cond.set(clean=False, enc=enc[n0:])
        ce_adv = F.cross_entropy(model(crafted[0][1]), y[n0:], reduction="none")
        cond.set(clean=False, enc=enc, n_clean=n0)
        ce_clean = F.cross_entropy(model(x), y, reduction="none")
    assert (ce_adv - ce_clean[n0:]).abs().max() > 1e-3, "the attack must change the loss for the test to see it"
    expected = ((1 - lam) * ce_clean + lam * torch.cat([torch.zeros(n0), ce_adv])).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_oat_routes_lambda_zero_rows_to_bn_clean_and_attacks_through_bn_adv_in_eval_mode(digits, monkeypatch):
    """In OAT's clean pass the ceil(B/6) lambda = 0 rows go through bn_clean and the rest through bn_adv; the
    attack runs in eval mode, through bn_adv only, on the other rows, each with its own lambda's encoding."""
    torch.manual_seed(0)
    oat = _method("oat", attack="pgd2")
    model = oat.build_model("small_cnn", digits.info).train()
    x, y = _batch(digits)
    n0, cond = zeros_in(len(x)), oat.factory.cond
    phase, crafted, _, handles = _phases(model, x, monkeypatch)
    seen, encs = [], []
    _record_bns(model, phase, seen, handles)
    for film in (m for m in model.modules() if isinstance(m, FiLM)):
        film.register_forward_pre_hook(lambda mod, inp: encs.append((phase[0], cond.enc.clone(), mod.training)))
    oat.oat_loss(model, x, y, POS)
    assert model.training
    assert torch.equal(crafted[0][0], x[n0:])
    by_phase = {p: sorted({s[1:] for s in seen if s[0] == p}) for p in ("attack", "adv", "clean")}
    assert by_phase == {"attack": [("bn_adv", len(x) - n0, False)], "adv": [("bn_adv", len(x) - n0, True)],
                        "clean": [("bn_adv", len(x) - n0, True), ("bn_clean", n0, True)]}
    assert sum(s[0] == "attack" for s in seen) == 2 * 3, "two PGD steps through each of the three dual BNs"
    attack = [(e, training) for p, e, training in encs if p == "attack"]
    assert attack and all(torch.equal(e, oat.table[POS[n0:]]) and not training for e, training in attack)
    clean = [e for p, e, _ in encs if p == "clean"]
    assert clean and all(torch.equal(e, oat.table[POS]) for e in clean)


@pytest.mark.parametrize("attack, eps, given, step", [
    ("pgd7", 8 / 255, None, (10 / 255) / 7), ("pgd2", 0.1, None, 1.25 * 0.1 / 2), ("pgd2", 0.1, 0.01, 0.01)])
def test_oat_attack_step_is_five_quarters_eps_over_steps_unless_given(attack, eps, given, step, digits, monkeypatch):
    """OAT's training PGD steps 1.25 eps / steps ((10/255)/7 at eps = 8/255 with PGD-7), or ``attack_step``
    where it is given."""
    oat = get_method("oat")(TrainConfig(train_attack=attack, attack_step=given), eps)
    alphas = []
    monkeypatch.setattr(attacks, "pgd", lambda forward, x, y, eps, alpha, *a, **kw: alphas.append(alpha) or x)
    model = oat.build_model("small_cnn", digits.info).train()
    oat.train_step(model, *_batch(digits))
    assert alphas == [pytest.approx(step, rel=1e-9)]


def test_float_step_noise_routing_eval_attack_and_loss(digits, monkeypatch):
    """FLOAT's step: the attack on the second half in eval mode, noise at lambda = 1, through bn_adv; the clean
    pass without noise, first half through bn_clean, second through bn_adv; the adversarial pass with noise
    at lambda = 1 through bn_adv; loss 0.5 mean CE_clean (whole batch) + 0.5 mean CE_adv (second half),
    recomputed by hand (the adversarial pass's noise redrawn from the same generator state)."""
    torch.manual_seed(0)
    flt = _method("float")
    model = _distinct_bns(flt.build_model("small_cnn", digits.info).train())
    x, y = _batch(digits)
    h, cond = len(x) // 2, flt.factory.cond
    phase, crafted, rng, handles = _phases(model, x, monkeypatch)
    seen, noise = [], []
    _record_bns(model, phase, seen, handles)
    convs = [m for m in model.modules() if isinstance(m, CondConv2d) and m.noisy]
    assert len(convs) == 3
    handles += [c.register_forward_pre_hook(lambda mod, inp: noise.append((phase[0], mod.cond.noise, mod.training)))
                for c in convs]
    loss, _, _ = flt.train_step(model, x, y)
    for handle in handles:
        handle.remove()
    assert model.training
    assert torch.equal(crafted[0][0], x[h:])
    assert {p: sorted({n[1:] for n in noise if n[0] == p}) for p in ("attack", "clean", "adv")} == {
        "attack": [(1.0, False)], "clean": [(0.0, True)], "adv": [(1.0, True)]}
    assert {p: sorted({s[1:] for s in seen if s[0] == p}) for p in ("attack", "clean", "adv")} == {
        "attack": [("bn_adv", len(x) - h, False)], "clean": [("bn_adv", len(x) - h, True), ("bn_clean", h, True)],
        "adv": [("bn_adv", len(x) - h, True)]}
    with torch.no_grad():
        cond.set(clean=True)
        head = model(x[:h])
        cond.set(clean=False)
        clean = torch.cat([head, model(x[h:])])
        torch.set_rng_state(rng["adv"])
        cond.set(clean=False, noise=1.0)
        adv = model(crafted[0][1])
    expected = 0.5 * F.cross_entropy(clean, y) + 0.5 * F.cross_entropy(adv, y[h:])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


@contextmanager
def _recorded(modules):
    """(module, input, output) of each call (copies: the model's in-place ReLU overwrites FiLM's output)."""
    calls = []
    handles = [m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp[0].clone(), out.clone())))
               for m in modules]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


def _film_by_hand(film, enc, h):
    """scale * h + shift with (scale, shift) = leaky_relu(MLP(enc)) on h's C' channels (the MLP's rows of the
    first C' scales and shifts), and the MLP's output pre-activations."""
    first, last = film.mlp[0], film.mlp[2]
    c, k = last.out_features // 2, h.shape[1]
    rows = torch.cat([torch.arange(k), torch.arange(c, c + k)])
    hidden = _leaky(enc @ first.weight[rows].T + first.bias[rows])
    pre = hidden @ last.weight[rows][:, rows].T + last.bias[rows]
    scale, shift = _leaky(pre).chunk(2, dim=1)
    return scale[:, :, None, None] * h + shift[:, :, None, None], pre


@pytest.mark.parametrize("where", ["layer", "bank", "slim", "slim-half"])
def test_film_scale_and_shift_are_leaky_relu_of_the_mlp(where, digits):
    """(scale, shift) = leaky_relu(MLP(enc)), MLP d_in -> 2C -> 2C with a LeakyReLU between: for FiLM alone,
    through the model's FiLMBank, and for SlimFiLM at full and half width (pre-activations of both signs)."""
    torch.manual_seed(0)
    if where == "bank":
        oat = _method("oat")
        model = oat.build_model("small_cnn", digits.info).train()
        films = [m for m in model.modules() if isinstance(m, FiLM)]
        assert len(films) == 3 and all(f.bank is not None for f in films)
        oat.factory.cond.set(clean=False, enc=oat.table[POS], n_clean=2)
        enc, h = oat.table[POS], _batch(digits)[0]
    else:
        enc = torch.randn(3, 4)
        films = [(SlimFiLM if where.startswith("slim") else FiLM)(8, 4, Condition(enc=enc))]
        h = torch.randn(3, 4 if where == "slim-half" else 8, 5, 5)
    with torch.no_grad():
        for film in films:
            film.mlp[2].bias.copy_(0.5 * (-1) ** torch.arange(film.mlp[2].out_features))
        with _recorded(films) as calls:
            model(h) if where == "bank" else films[0](h)
    assert len(calls) == len(films)
    for film, inp, out in calls:
        expected, pre = _film_by_hand(film, enc, inp)
        assert (pre < 0).any() and (pre > 0).any()
        assert torch.allclose(out, expected, atol=1e-5), where


def test_noise_scales_are_trained_with_the_weights_weight_decay(digits):
    """optimizer_for puts every noisy convolution's alpha in the optimiser with cfg.weight_decay, so a step
    with zero gradient shrinks it by lr * weight_decay."""
    torch.manual_seed(0)
    flt = _method("float")
    model = flt.build_model("small_cnn", digits.info).train()
    cfg = TrainConfig(lr=0.1, weight_decay=5e-4)
    opt, _ = optimizer_for(model, cfg, 10)
    alphas = [m.alpha for m in model.modules() if isinstance(m, CondConv2d) and m.noisy]
    assert len(alphas) == 3 and cfg.weight_decay > 0
    decay = {id(p): group["weight_decay"] for group in opt.param_groups for p in group["params"]}
    assert [decay.get(id(a)) for a in alphas] == [cfg.weight_decay] * 3
    flt.factory.cond.set(clean=False, noise=1.0)
    (0 * model(_batch(digits)[0]).sum()).backward()
    assert all(a.grad is not None and a.grad.item() == 0 for a in alphas)
    opt.step()
    assert [a.item() for a in alphas] == pytest.approx([0.25 * (1 - cfg.lr * cfg.weight_decay)] * 3, rel=1e-7, abs=0)


def _other_table():
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=torch.Generator().manual_seed(1)))
    return q[: len(LAMBDAS)].contiguous()


def test_oat_state_dict_carries_the_encoding_table(tmp_path):
    """OAT's encoding table goes into ``method.state_dict()`` and survives a checkpoint; a method with another
    table (its per-device copies included) gets the saved one back from ``load_state_dict``."""
    trained = _method("oat")
    trained.table = _other_table()
    save_checkpoint(tmp_path / "checkpoint.pt", {"method": trained.state_dict()})
    saved = load_checkpoint(tmp_path / "checkpoint.pt")["method"]
    fresh = _method("oat")
    assert not torch.equal(fresh.table, trained.table)
    fresh.lookup(POS)
    fresh.load_state_dict(saved)
    assert torch.equal(fresh.table, trained.table)
    assert torch.equal(fresh.lookup(POS)[1], trained.table[POS])
    assert torch.equal(fresh.encode(torch.tensor(LAMBDAS)), trained.table)


def test_a_resumed_oat_job_uses_the_table_it_was_trained_with(digits, tmp_path):
    """harness.train saves the method's state with the checkpoint and loads it on resuming, so a job resumed
    or re-evaluated from its checkpoint uses the encoding table it was trained with."""
    torch.manual_seed(0)
    data = Dataset(digits.info, *(t[:12] for t in (digits.x_train, digits.y_train, digits.x_test, digits.y_test)))
    cfg = TrainConfig(epochs=1, batch_size=12, train_attack="pgd1")
    trained = get_method("oat")(cfg, 0.1)
    trained.table = _other_table()
    train(trained, trained.build_model("small_cnn", digits.info), data, cfg, tmp_path, torch.device("cpu"),
          progress=False, log=lambda *_: None)
    resumed = get_method("oat")(cfg, 0.1)
    train(resumed, resumed.build_model("small_cnn", digits.info), data, cfg, tmp_path, torch.device("cpu"),
          progress=False, log=lambda *_: None)
    assert torch.equal(resumed.table, trained.table)
