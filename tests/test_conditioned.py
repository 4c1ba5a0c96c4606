"""The rules of the once-for-all building blocks (issue 3): dual BN, FiLM, noisy/masked conv, OAT, FLOAT."""
import io
import math

import pytest
import torch

from harness.conditioned import ALL, CondConv2d, Condition, DualBN, FiLM
from harness.config import TrainConfig
from harness.data import DatasetInfo
from harness.errors import LambenchError
from harness.models import build_model
from methods import get_method
from methods.oat import LAMBDAS, sample_lambdas

CIFAR = DatasetInfo("c", 10, 3, 32, (0.5,) * 3, (0.25,) * 3, 8 / 255, 4, True)


@pytest.mark.parametrize("batch", [1, 5, 6, 7, 64, 128])
def test_oat_sampler_zero_count_and_placement(batch):
    torch.manual_seed(0)
    lam = sample_lambdas(batch)
    n0 = math.ceil(batch / 6)
    assert (lam[:n0] == 0).all() and (lam[n0:] > 0).all()
    assert torch.isin(lam[n0:], torch.tensor(LAMBDAS[1:])).all()


@pytest.mark.parametrize("batch,world", [(64, 2), (128, 8), (120, 8), (512, 4), (6, 6), (64, 16)])
def test_oat_zero_count_is_that_of_the_global_batch_under_ddp(batch, world, monkeypatch):
    """Under torchrun each process samples its own share (``batch // world`` rows): the λ = 0 rows of all of
    them add up to ceil(B/6) of the global batch, as on one process (each taking ceil of its own share gave
    12 of 64 on 2 processes, 24 of 128 on 8), and no process has none."""
    from harness import distributed
    from methods.oat import zeros_in
    share = batch // world
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    counts = []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        counts.append(int((sample_lambdas(share) == 0).sum()))
        assert counts[-1] == zeros_in(share)
    # ceil(B/6), or one per process where fewer (each runs both BN branches, their statistics synchronised)
    assert sum(counts) == max(math.ceil(batch / 6), world)
    assert max(counts) - min(counts) <= 1 and min(counts) >= 1


def test_oat_sampler_is_uniform_over_nonzero():
    torch.manual_seed(0)
    lam = sample_lambdas(60000)
    counts = torch.stack([(lam == v).sum() for v in torch.tensor(LAMBDAS[1:])]).float()
    assert (counts / counts.sum() - 0.2).abs().max() < 0.01


def test_film_shapes_and_per_sample_lambda():
    torch.manual_seed(0)
    cond = Condition()
    film = FiLM(8, 4, cond)
    h = torch.randn(3, 8, 5, 5)
    cond.enc = torch.eye(4)[[0, 1, 0]]
    out = film(h)
    assert out.shape == h.shape
    cond.enc = torch.eye(4)[[0]]
    # (up to float rounding: the MLP's matrix product may take another kernel at another batch size)
    assert torch.allclose(film(h[:1]), out[:1], atol=1e-6), "a sample's output depends only on its own lambda"
    cond.enc = torch.eye(4)[[0, 1, 0]]
    assert not torch.allclose(out[0] / h[0], out[1] / h[1]), "different lambdas must modulate differently"
    cond.enc = torch.eye(4)[[0]]  # one encoding row broadcasts over the batch
    same = film(h)
    assert torch.allclose(same[0], out[0], atol=1e-6) and torch.allclose(same[2], out[2], atol=1e-6)
    assert film.mlp[0].in_features == 4 and film.mlp[0].out_features == 16 and film.mlp[2].out_features == 16


def test_dual_bn_routes_rows():
    torch.manual_seed(0)
    cond = Condition()
    bn = DualBN(4, cond).train()
    x = torch.randn(8, 4, 3, 3)
    cond.n_clean = 3
    bn(x)
    # the clean BN saw exactly the first 3 rows, the adversarial BN the other 5
    m = 0.1
    assert torch.allclose(bn.bn_clean.running_mean, m * x[:3].mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(bn.bn_adv.running_mean, m * x[3:].mean((0, 2, 3)), atol=1e-6)
    before = bn.bn_adv.running_mean.clone()
    cond.n_clean = ALL
    bn(x)  # lambda = 0 rows only: bn_adv untouched
    assert torch.equal(bn.bn_adv.running_mean, before)


def _noisy(cond, **kw):
    torch.manual_seed(0)
    return CondConv2d(16, 32, 3, padding=1, bias=False, cond=cond, noisy=True, **kw)


def test_noisy_conv_statistics_and_zero_noise():
    cond = Condition()
    conv = _noisy(cond)
    assert conv.alpha.item() == pytest.approx(0.25)
    w = conv.weight.detach()
    cond.noise = 0.0
    assert torch.equal(conv.effective_weight(), conv.weight)
    cond.noise = 0.6
    diffs = torch.stack([(conv.effective_weight() - w).detach() for _ in range(20)])
    expected_std = 0.25 * 0.6 * w.std()
    assert diffs.mean().abs() < 0.02 * expected_std * 10
    assert diffs.std().item() == pytest.approx(expected_std.item(), rel=0.05)
    assert not torch.equal(diffs[0], diffs[1]), "noise must be drawn afresh at every forward pass"


def test_noise_alpha_gets_gradient_and_std_does_not():
    cond = Condition(noise=1.0)
    conv = _noisy(cond)
    conv(torch.randn(2, 16, 6, 6)).square().sum().backward()
    assert conv.alpha.grad is not None and conv.alpha.grad.abs() > 0
    assert conv.weight.grad is not None


def test_masks_survive_save_and_load():
    cond = Condition()
    conv = CondConv2d(4, 4, 3, padding=1, cond=cond, paths=("clean", "adv"))
    conv.mask_clean.bernoulli_(0.5)
    conv.mask_adv.copy_(1 - conv.mask_clean)
    buf = io.BytesIO()
    torch.save(conv.state_dict(), buf)
    other = CondConv2d(4, 4, 3, padding=1, cond=cond, paths=("clean", "adv"))
    other.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    assert torch.equal(other.mask_clean, conv.mask_clean) and torch.equal(other.mask_adv, conv.mask_adv)
    cond.path = "clean"
    assert torch.equal(other.effective_weight(), other.weight * conv.mask_clean)
    cond.noise = 1.0  # masked noise keeps zeros at zero
    noisy = _noisy(cond, paths=("",))
    noisy.mask.bernoulli_(0.5)
    assert (noisy.effective_weight()[noisy.mask == 0] == 0).all()


def _count(arch, layers=None):
    return sum(p.numel() for p in build_model(arch, CIFAR, layers).parameters())


@pytest.mark.parametrize("arch, oat, float_, ratio", [("resnet34", 33.36e6, 21.30e6, 1.57), ("wrn16_8", 16.23e6, 10.97e6, 1.48)])
def test_parameter_counts_match_published(arch, oat, float_, ratio):
    n_oat = _count(arch, get_method("oat")(TrainConfig(), 8 / 255).layers())
    n_float = _count(arch, get_method("float")(TrainConfig(), 8 / 255).layers())
    assert n_oat == pytest.approx(oat, rel=0.002) and n_float == pytest.approx(float_, rel=0.002)
    assert n_oat / n_float == pytest.approx(ratio, abs=0.01)


def test_oat_encodings_and_unknown_lambda():
    for kind, dim in (("rand", 128), ("onehot", 6), ("dct", 128), ("scalar", 1)):
        m = get_method("oat")(TrainConfig(options={"encoding": kind}), 8 / 255)
        enc = m.encode(torch.tensor(LAMBDAS))
        assert enc.shape == (6, dim)
        if kind != "scalar":
            assert torch.linalg.matrix_rank(enc) == 6, "each training lambda needs its own code"
    rand = get_method("oat")(TrainConfig(), 8 / 255)
    assert torch.allclose(rand.table @ rand.table.T, torch.eye(6), atol=1e-5)  # orthogonal rows
    with pytest.raises(LambenchError, match="encoding=scalar"):
        rand.encode(torch.tensor([0.25]))
    with pytest.raises(LambenchError, match="no option"):
        get_method("oat")(TrainConfig(options={"width": "2"}), 8 / 255)
    with pytest.raises(LambenchError, match="not one of"):
        get_method("oat")(TrainConfig(options={"encoding": "fourier"}), 8 / 255)


@pytest.mark.parametrize("name", ["oat", "float"])
def test_configure_sets_branch_and_noise(name, digits):
    m = get_method(name)(TrainConfig(), 0.1)
    model = build_model("small_cnn", digits.info, m.layers())
    for lam in m.lambda_grid():
        with m.configure(model, lam):
            cond = m.factory.cond
            assert not model.training
            assert (cond.n_clean == ALL) == (lam < 0.1 if name == "float" else lam == 0)
            if name == "float":
                assert cond.noise == (0.0 if lam < 0.1 else lam) and m.is_random(lam) == (lam >= 0.1)


@pytest.mark.parametrize("name", ["oat", "float"])
def test_train_step_backpropagates(name, digits):
    torch.manual_seed(0)
    m = get_method(name)(TrainConfig(), 0.1)
    model = build_model("small_cnn", digits.info, m.layers()).train()
    x, y = digits.x_train[:24].float() / 255, digits.y_train[:24]
    loss, logits, targets = m.train_step(model, x, y)
    assert loss.ndim == 0 and math.isfinite(loss.item()) and len(logits) == len(targets)
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "bn_" not in n)
    assert model.training


def test_film_bank_gives_each_film_its_own_numbers_and_gradients():
    """The model's FiLMBank (all FiLM MLPs at once, grouped by width) equals every FiLM computing its own:
    same logits, same gradients on every parameter, per-sample lambdas included."""
    torch.manual_seed(0)
    oat = get_method("oat")(TrainConfig(), 8 / 255)
    model = oat.build_model("resnet34", CIFAR).train()
    films = [m for m in model.modules() if isinstance(m, FiLM)]
    assert len(films) == 33 and all(f.bank is not None for f in films)
    x = torch.rand(6, 3, 32, 32)
    lam = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 1.0])

    def run():
        model.zero_grad()
        oat.factory.cond.set(clean=False, enc=oat.encode(lam), n_clean=1)
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    banked, banked_grads = run()
    for f in films:
        f.bank = None  # each FiLM on its own
    alone, alone_grads = run()
    assert torch.allclose(banked, alone, atol=1e-5, rtol=1e-4)
    assert banked_grads.keys() == alone_grads.keys()
    assert any("mlp" in n for n in banked_grads)
    for n in banked_grads:
        assert torch.allclose(banked_grads[n], alone_grads[n], atol=1e-4, rtol=1e-3), n
