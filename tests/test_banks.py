"""The model's NoiseBank (harness/banks.py): every noisy convolution's weight drawn in one go per forward
pass, with the distribution, masks and gradients each convolution gives its own (issue 3's noise rules)."""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from harness.conditioned import CondConv2d
from harness.config import TrainConfig
from harness.data import DatasetInfo
from methods import get_method

CIFAR = DatasetInfo("c", 10, 3, 32, (0.5,) * 3, (0.25,) * 3, 8 / 255, 4, True)


def _model(name="float", arch="resnet34"):
    torch.manual_seed(0)
    method = get_method(name)(TrainConfig(), 8 / 255)
    model = method.build_model(arch, CIFAR).eval()
    convs = [m for m in model.modules() if isinstance(m, CondConv2d) and m.noisy]
    with torch.no_grad():
        for i, c in enumerate(convs):
            c.alpha.fill_(0.1 + 0.02 * i)  # each its own alpha, so a mix-up would show
    return method, model, convs


def _capture(convs):
    """Per convolution, the weight its forward pass used (with its autograd history)."""
    used = {}
    for c in convs:
        def conv_forward(x, w, b, c=c):
            used[c] = w
            return type(c)._conv_forward(c, x, w, b)
        c._conv_forward = conv_forward
    return used


def test_bank_draws_each_weight_from_its_own_distribution():
    method, model, convs = _model()
    assert all(c.bank is not None for c in convs) and len(convs) == 36
    used, lam = _capture(convs), 0.7
    method.factory.cond.set(clean=False, noise=lam)
    draws = collections.defaultdict(list)
    with torch.no_grad():
        for _ in range(5):
            model(torch.rand(1, 3, 32, 32))
            for c in convs:
                draws[c].append((used[c] - c.weight) / (c.alpha * lam))
    for c in convs:
        d, std = torch.stack(draws[c]), c.weight.std()
        assert d.mean().abs() < 0.05 * std, "noise is centred"
        assert d.std().item() == pytest.approx(std.item(), rel=0.05), "eta ~ N(0, std(W)^2), times alpha * lambda"
        assert not torch.equal(d[0], d[1]), "noise is drawn afresh at every forward pass"
    same = [c for c in convs if c.weight.shape == convs[3].weight.shape]
    a, b = draws[same[0]][0].flatten(), draws[same[1]][0].flatten()
    assert len(same) > 1 and torch.corrcoef(torch.stack([a, b]))[0, 1].abs() < 0.05, "independent per layer"


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_bank_gradients_reach_weights_and_each_alpha(layout):
    """dW~/dW = 1 (std and eta carry no gradient) and d loss / d alpha = sum(d loss / d W~ * lambda std(W) eta),
    also for weights in channels_last (as on CUDA), whose flat order is their memory order."""
    method, model, convs = _model()
    model.to(memory_format=layout)
    used, grads = _capture(convs), {}
    lam = 0.8
    method.factory.cond.set(clean=False, noise=lam)
    model.train()
    out = model(torch.rand(2, 3, 32, 32))
    for c in convs:
        used[c].register_hook(lambda g, c=c: grads.__setitem__(c, g))
    out.square().sum().backward()
    for c in convs:
        noise = ((used[c] - c.weight) / c.alpha).detach()  # lambda * std(W) * eta
        assert torch.allclose(c.weight.grad, grads[c])
        assert c.alpha.grad.item() == pytest.approx((grads[c] * noise).sum().item(), rel=1e-3, abs=1e-5)
        assert c.alpha.grad.abs() > 0


def test_masked_noise_keeps_the_model_sparse():
    method, model, convs = _model("floats", "small_cnn")
    used = _capture(convs)
    for c in convs:
        c.mask.bernoulli_(0.5)
    method.factory.cond.set(clean=False, noise=1.0)
    with torch.no_grad():
        model(torch.rand(2, 3, 32, 32))
    for c in convs:
        assert (used[c][c.mask == 0] == 0).all() and (used[c][c.mask == 1] != c.weight[c.mask == 1]).any()


def test_no_noise_means_the_plain_weights_and_a_conv_alone_draws_its_own():
    method, model, convs = _model()
    used = _capture(convs)
    method.factory.cond.set(clean=True)
    with torch.no_grad():
        model(torch.rand(1, 3, 32, 32))
    assert all(used[c] is c.weight for c in convs)
    method.factory.cond.set(clean=False, noise=1.0)
    c = convs[1]
    with torch.no_grad():  # called outside a model pass: the bank is closed, the conv draws its own
        c(torch.rand(1, c.in_channels, 8, 8))
    assert not c.bank.active and c.bank.current is None
    assert not torch.equal(used[c], c.weight)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def test_one_noisy_pass_draws_once_and_takes_one_std_per_size():
    """What makes the bank worth having on a GPU at small batches: one ``randn`` per pass, one ``std`` and
    one multiply-add per group of equally sized weights (11 in ResNet-34), not one of each per convolution
    (36)."""
    method, model, convs = _model()
    method.factory.cond.set(clean=False, noise=1.0)
    with torch.no_grad(), _Ops() as ops:
        model(torch.rand(1, 3, 32, 32))
    sizes = {c.weight.numel() for c in convs}
    assert len(sizes) == 11
    assert ops.calls["aten.randn"] == 1 and ops.calls["aten.randn_like"] == 0
    assert ops.calls["aten.std"] == len(sizes)
    assert ops.calls["aten.addcmul"] == len(sizes) and ops.calls["aten.mul"] == 2  # alphas*scales; std*lambda
    assert ops.calls["aten._local_scalar_dense"] == 0 and ops.calls["aten._to_copy"] == 0, "nothing waits"


def test_a_noisy_backward_copies_no_whole_weight_vector_per_group():
    """The training pass's backward through the bank: the gradient of the concatenated weights comes back
    as one concatenation, not as a zero-filled copy of the whole vector per group (a slice's backward)."""
    method, model, convs = _model()
    method.factory.cond.set(clean=False, noise=1.0)
    model.train()
    out = model(torch.rand(2, 3, 32, 32))
    with _Ops() as ops:
        out.square().sum().backward()
    assert ops.calls["aten.slice_backward"] == 0 and ops.calls["aten.zeros"] == 0, ops.calls
    assert all(c.alpha.grad.abs() > 0 for c in convs)


def test_fixed_weights_take_std_once_and_the_next_weights_their_own():
    """Inside ``weights_fixed`` (one training step, one lambda's evaluation) the std of each weight is taken at
    the first pass only; the noise is still drawn afresh, alpha still gets its gradient in a later pass with
    gradients (after passes without, as the frozen attack runs), and weights changed after the scope get
    noise from their own std."""
    from methods.base import eval_mode
    from harness.attacks import frozen
    from harness.banks import weights_fixed
    method, model, convs = _model()
    used, grads = _capture(convs), {}
    method.factory.cond.set(clean=False, noise=1.0)
    model.train()
    x = torch.rand(2, 3, 32, 32)
    with weights_fixed(model), _Ops() as ops:
        with eval_mode(model), frozen(model.parameters()):
            model(x)
            first = {c: used[c].detach() for c in convs}
            model(x)
        out = model(x)
    assert ops.calls["aten.std"] == 11 and ops.calls["aten.randn"] == 3
    assert all(not torch.equal(first[c], used[c]) for c in convs), "fresh noise at every pass"
    for c in convs:
        used[c].register_hook(lambda g, c=c: grads.__setitem__(c, g))
    out.square().sum().backward()
    for c in convs:
        noise = ((used[c] - c.weight) / c.alpha).detach()
        assert c.alpha.grad.item() == pytest.approx((grads[c] * noise).sum().item(), rel=1e-3, abs=1e-5)
    assert convs[0].bank.kept is None, "nothing kept after the scope"
    c = convs[5]
    with torch.no_grad():
        c.weight.mul_(100)
        with weights_fixed(model):
            draws = [((model(x), used[c])[1] - c.weight) / c.alpha for _ in range(3)]
    assert torch.stack(draws).std().item() == pytest.approx(c.weight.std().item(), rel=0.05)


@pytest.mark.parametrize("name", ["oat", "float", "floats", "smart"])
def test_a_training_step_with_fixed_weights_gives_the_same_loss_and_gradients(name):
    """What the training loop's ``weights_fixed`` keeps between passes (std for the noise; FiLM's values in
    the attack) changes no number: the step's loss and every parameter's gradient are those of a step that
    computes everything at every pass (same random draws)."""
    import contextlib
    import copy
    from harness.banks import weights_fixed
    torch.manual_seed(0)
    method = get_method(name)(TrainConfig(train_attack="pgd3"), 8 / 255)
    model = method.build_model("small_cnn", CIFAR).train()
    x, y = torch.rand(12, 3, 32, 32), torch.randint(0, 10, (12,))
    out, state = [], copy.deepcopy(model.state_dict())
    for scope in (contextlib.nullcontext(), weights_fixed(model)):
        model.load_state_dict(state)  # the first step moved the BN statistics the attack uses
        torch.manual_seed(1)
        model.zero_grad(set_to_none=True)
        with scope:
            loss, _, _ = method.train_step(model, x, y)
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss0, g0), (loss1, g1) = out
    assert loss1 == pytest.approx(loss0, rel=1e-6) and g0.keys() == g1.keys()
    assert any("mlp" in n for n in g0) == (name == "oat") and any("alpha" in n for n in g0) == (name != "oat")
    for n in g0:
        assert torch.allclose(g0[n], g1[n], rtol=1e-4, atol=1e-6), n


def test_fixed_weights_compute_film_once_for_passes_without_gradients():
    """An attack's steps on frozen weights share one encoding: FiLM's MLP runs at the first step only, and
    again once the encoding (or autocast) changes or the weights need their gradient."""
    from harness.attacks import frozen
    from harness.banks import weights_fixed
    torch.manual_seed(0)
    oat = get_method("oat")(TrainConfig(), 8 / 255)
    model = oat.build_model("resnet34", CIFAR).eval()
    x = torch.rand(2, 3, 32, 32)
    oat.factory.cond.set(clean=False, enc=oat.encode(torch.tensor([0.4, 1.0])))
    with weights_fixed(model), _Ops() as ops:
        with frozen(model.parameters()):
            for _ in range(3):
                model(x)
            first = ops.calls["aten.baddbmm"]
            oat.factory.cond.set(clean=False, enc=oat.encode(torch.tensor([0.2, 0.3])))
            model(x)
            model(x)
        model(x)  # trainable weights: computed for this pass
    groups = len(model.banks[0].groups)  # one batched product per group of equally wide FiLMs
    assert groups == 4 and first == groups and ops.calls["aten.baddbmm"] == 3 * groups


def test_a_pass_that_raises_leaves_no_values_and_installing_twice_adds_nothing():
    method, model, _ = _model("oat", "small_cnn")
    bank = model.banks[0]
    bank.install(model)
    assert len(model.banks) == 1 and len(model._forward_hooks) == 1

    def fail(*_):
        raise RuntimeError("after the FiLMs")
    handle = list(model.modules())[-1].register_forward_hook(fail)  # the classifier, after every FiLM
    with method.configure(model, 0.4) as forward:
        with pytest.raises(RuntimeError, match="after the FiLMs"):
            forward(torch.rand(2, 3, 32, 32))
        assert not bank.active and bank.current is None
        handle.remove()
        assert forward(torch.rand(2, 3, 32, 32)).shape == (2, 10)
