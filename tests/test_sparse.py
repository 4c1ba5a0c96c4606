"""The sparse once-for-all methods (issue 3): FLOATS's masks, prune and regrow; SMART's two mask paths."""
import io
import math

import pytest
import torch
import torch.nn.functional as F

from harness.conditioned import CondConv2d
from harness.config import TrainConfig
from harness.data import DatasetInfo
from harness.errors import LambenchError
from harness.sparse import _allocate, apply_masks, density, masked_convs, prune_and_regrow, random_mask
from harness.train import optimizer_for
from methods import get_method

DIGITS = DatasetInfo("d", 10, 1, 8, (0.5,), (0.25,), 0.1, 1, False)
CIFAR = DatasetInfo("c", 10, 3, 32, (0.5,) * 3, (0.25,) * 3, 8 / 255, 4, True)


def _method(name, epochs=4, **options):
    cfg = TrainConfig(epochs=epochs, train_attack="pgd2", options={k: str(v) for k, v in options.items()})
    return get_method(name)(cfg, 0.1)


def _floats_model(seed=0, **options):
    torch.manual_seed(seed)
    method = _method("floats", **options)
    return method, method.build_model("small_cnn", DIGITS)


def _train_steps(method, model, steps=2, batch=8):
    opt, _ = optimizer_for(model, TrainConfig(lr=0.05), 10)
    model.train()
    for _ in range(steps):
        x, y = torch.rand(batch, 1, 8, 8), torch.randint(0, 10, (batch,))
        loss, _, _ = method.train_step(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(model, opt)
    return opt


def test_random_mask_has_exact_density():
    torch.manual_seed(0)
    m = random_mask(torch.empty(64, 32, 3, 3), 0.3)
    assert m.sum().item() == round(0.3 * m.numel()) and set(m.unique().tolist()) == {0.0, 1.0}


def test_floats_masks_every_conv_at_the_density_and_not_the_classifier():
    method, model = _floats_model(density=0.25)
    convs = masked_convs(model)
    assert len(convs) == 3 and all(c.paths == ("",) for c in convs)
    for conv in convs:
        assert conv.mask.mean().item() == pytest.approx(0.25, abs=1 / conv.mask.numel())
        assert (conv.weight[conv.mask == 0] == 0).all()
    assert not isinstance(model[1][-1], CondConv2d) and (model[1][-1].weight != 0).all()


def test_floats_weights_stay_zero_outside_the_mask_but_momentum_reaches_them():
    method, model = _floats_model()
    opt = _train_steps(method, model)
    for conv in masked_convs(model):
        assert (conv.weight[conv.mask == 0] == 0).all(), "W <- W*M after every step"
        mom = opt.state[conv.weight]["momentum_buffer"]
        assert mom[conv.mask == 0].abs().sum() > 0, "pruned weights need momentum to be scored for regrowth"


@pytest.mark.parametrize("redistribution", ["none", "momentum"])
def test_prune_and_regrow_keeps_density(redistribution):
    method, model = _floats_model(redistribution=redistribution)
    opt = _train_steps(method, model)
    convs = masked_convs(model)
    before = [c.mask.clone() for c in convs]
    stats = prune_and_regrow(model, opt, 0.5, redistribute=redistribution == "momentum")
    after = [c.mask for c in convs]
    assert stats["pruned"] == stats["regrown"] > 0
    assert sum(a.sum() for a in after) == sum(b.sum() for b in before), "total non-zeros kept exactly"
    if redistribution == "none":
        for a, b in zip(after, before):
            assert a.sum() == b.sum(), "each layer keeps its density"
    assert any((a != b).any() for a, b in zip(after, before)), "the masks must actually change"
    for conv in convs:
        assert set(conv.mask.unique().tolist()) <= {0.0, 1.0}
        assert (conv.weight[conv.mask == 0] == 0).all()


def test_prune_removes_the_smallest_magnitudes_and_regrows_the_largest_momentum():
    torch.manual_seed(0)
    method, model = _floats_model(density=0.5)
    conv = masked_convs(model)[0]
    with torch.no_grad():
        conv.weight.copy_(torch.arange(1, conv.weight.numel() + 1, dtype=torch.float).view_as(conv.weight))
        conv.mask.zero_().view(-1)[: conv.mask.numel() // 2] = 1
        apply_masks(model)
    opt, _ = optimizer_for(model, TrainConfig(), 10)
    for c in masked_convs(model):
        opt.state[c.weight]["momentum_buffer"] = torch.zeros_like(c.weight)
    mom = opt.state[conv.weight]["momentum_buffer"].view(-1)
    n = conv.mask.numel()
    mom[-4:] = torch.tensor([1.0, 2.0, 3.0, 4.0])  # the four zero positions with the largest momentum
    prune_and_regrow(model, opt, 4 / (n // 2), redistribute=False)
    flat = conv.mask.view(-1)
    assert flat[:4].sum() == 0 and flat[4: n // 2].all(), "the four smallest |W| are pruned"
    assert flat[-4:].all(), "regrown where the momentum is largest"
    assert (conv.weight.view(-1)[-4:] == 0).all(), "regrown weights start at zero"


def test_momentum_redistribution_keeps_the_total_and_moves_density_between_layers():
    """With the default redistribution=momentum, every epoch's prune and regrow keeps the model's number of
    non-zeros (so its density) exactly, while the layers' own densities move."""
    method, model = _floats_model()
    assert method.opts["redistribution"] == "momentum"
    convs = masked_convs(model)
    start = [int(c.mask.sum()) for c in convs]
    for epoch in range(3):  # prune rates 0.5, 1/3, 1/6 of 4 epochs
        opt = _train_steps(method, model, steps=1)
        stats = method.end_epoch(model, epoch, None, opt)
        counts = [int(c.mask.sum()) for c in convs]
        assert stats["pruned"] == stats["regrown"] > 0
        assert sum(counts) == sum(start), "total non-zeros kept exactly"
        assert density(model) == stats["density"] == 0.5
        for conv in convs:
            assert (conv.weight[conv.mask == 0] == 0).all()
        assert sum(int((c.weight != 0).sum()) for c in convs) <= sum(counts)
        if epoch == 0:
            assert counts != start, "momentum moves density between layers"


@pytest.mark.parametrize("active, inactive, regrow", [
    # layer 0 (288 weights) wants 5/9 but has only 288 - 72 = 216 free positions; the other 22896 split 1 : 3
    ((5.0, 1.0, 3.0), (0.0, 9.0, 0.0), [216, 5724, 17172]),
    # a layer without momentum regrows nothing; the 23112 split 1 : 3
    ((0.0, 1.0, 3.0), (10.0, 9.0, 0.0), [0, 5778, 17334]),
])
def test_regrowth_is_shared_by_the_layers_mean_momentum_magnitude(active, inactive, regrow):
    """The weights pruned from all layers (half of each layer's 144, 9216, 36864 active ones: 23112) regrow
    across layers in proportion to each layer's mean |momentum| over its active weights (signs do not count,
    nor does the momentum at masked-off positions, which here would reverse the order), no layer beyond full."""
    method, model = _floats_model(density=0.5)
    convs = masked_convs(model)
    opt, _ = optimizer_for(model, TrainConfig(), 10)
    for conv, a, b in zip(convs, active, inactive):
        sign = torch.ones(conv.weight.numel())
        sign[1::2] = -1
        mom = torch.where(conv.mask.view(-1).bool(), a, b) * sign
        opt.state[conv.weight]["momentum_buffer"] = mom.view_as(conv.weight).clone()
    before = [int(c.mask.sum()) for c in convs]
    assert before == [144, 9216, 36864]
    removed = [math.ceil(0.5 * n) for n in before]
    stats = prune_and_regrow(model, opt, 0.5, redistribute=True)
    after = [int(c.mask.sum()) for c in convs]
    assert [n - (b - r) for n, b, r in zip(after, before, removed)] == regrow
    assert stats["pruned"] == stats["regrown"] == sum(removed) == sum(regrow)


def test_allocate_respects_capacity_and_total():
    assert _allocate(10, [1.0, 1.0], [100, 100]) == [5, 5]
    assert _allocate(10, [3.0, 1.0], [2, 100]) == [2, 8]
    assert sum(_allocate(7, [0.2, 0.3, 0.5], [3, 3, 3])) == 7
    assert _allocate(5, [0.0, 0.0], [10, 10]) in ([3, 2], [2, 3])


def test_floats_prune_rate_decays_linearly_to_zero():
    method = _method("floats", epochs=5)
    assert [method.prune_rate_at(e) for e in range(5)] == pytest.approx([0.5, 0.375, 0.25, 0.125, 0.0])


def test_floats_noise_is_masked_unless_turned_off():
    for flag, expect_sparse in (("on", True), ("off", False)):
        method, model = _floats_model(mask_noise=flag)
        conv = masked_convs(model)[1]
        method.factory.cond.set(clean=False, noise=1.0)
        w = conv.effective_weight()
        assert ((w[conv.mask == 0] == 0).all()) == expect_sparse


def test_floats_masks_survive_save_and_load():
    """A model built at another seed draws other masks; loading the saved state gives it the saved ones."""
    method, model = _floats_model()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    _, other = _floats_model(seed=1)
    pairs = list(zip(masked_convs(model), masked_convs(other)))
    assert all(not torch.equal(a.mask, b.mask) for a, b in pairs), "another seed must draw other masks"
    other.load_state_dict(torch.load(buf, weights_only=True))
    for a, b in pairs:
        assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)


def test_floats_options_are_checked():
    with pytest.raises(LambenchError, match="density"):
        _method("floats", density=1.5)
    with pytest.raises(LambenchError, match="not a float"):
        _method("floats", density="half")


def _smart_model(**options):
    torch.manual_seed(0)
    method = _method("smart", **options)
    return method, method.build_model("resnet34", CIFAR)


def test_smart_masks_are_complementary_on_the_last_two_stages_only():
    method, model = _smart_model()
    net = model[1]
    for name, module in net.named_modules():
        if isinstance(module, CondConv2d) and module.paths:
            assert name.startswith(("stages.2", "stages.3")), name
            assert torch.equal(module.mask_clean + module.mask_adv, torch.ones_like(module.weight))
            assert module.mask_clean.mean().item() == pytest.approx(0.5, abs=1e-3)
            assert not module.noisy, "the expert paths carry no noise"
        elif isinstance(module, CondConv2d):
            assert name.startswith(("stem", "stages.0", "stages.1")) and module.noisy
    assert sum(len(c.paths) for c in masked_convs(model)) == 2 * 20  # (6 + 3 blocks) x 2 convs + 2 shortcuts, 2 paths each


def test_smart_options_change_the_masks():
    torch.manual_seed(0)
    method = _method("smart", masks="overlap", density=0.3, adv_density=0.6, stages="all")
    model = method.build_model("small_cnn", DIGITS)
    convs = masked_convs(model)
    assert len(convs) == 3 and all(not c.noisy for c in convs), "stages=all masks every conv, so no noise"
    clean = sum(c.mask_clean.sum() for c in convs) / sum(c.weight.numel() for c in convs)
    adv = sum(c.mask_adv.sum() for c in convs) / sum(c.weight.numel() for c in convs)
    assert clean == pytest.approx(0.3, abs=1e-3) and adv == pytest.approx(0.6, abs=1e-3)
    model = _method("smart", masks="magnitude").build_model("small_cnn", DIGITS)
    conv = masked_convs(model)[0]
    assert conv.weight.abs()[conv.mask_clean == 1].min() >= conv.weight.abs()[conv.mask_adv == 1].max()


def test_smart_routes_rows_through_their_path():
    torch.manual_seed(0)
    method = _method("smart")
    model = method.build_model("small_cnn", DIGITS).eval()
    cond = method.factory.cond
    x = torch.rand(6, 1, 8, 8)
    cond.set(clean=True)
    clean = model(x)
    cond.set(clean=False)
    adv = model(x)
    cond.set(clean=False, n_clean=2)
    split = model(x)
    assert torch.allclose(split[:2], clean[:2], atol=1e-5) and torch.allclose(split[2:], adv[2:], atol=1e-5)
    assert not torch.allclose(clean, adv)


def test_smart_clean_path_gradient_touches_only_its_mask():
    torch.manual_seed(0)
    method = _method("smart")
    model = method.build_model("small_cnn", DIGITS).eval()
    method.factory.cond.set(clean=True)
    F.cross_entropy(model(torch.rand(4, 1, 8, 8)), torch.arange(4)).backward()
    for conv in masked_convs(model):
        assert (conv.weight.grad[conv.mask_clean == 0] == 0).all()


def test_smart_mix_paths_interpolates_the_logits():
    torch.manual_seed(0)
    method = _method("smart", mix="paths", stages="all")  # no noise anywhere: deterministic
    model = method.build_model("small_cnn", DIGITS)
    x = torch.rand(4, 1, 8, 8)
    with method.configure(model, 0.0) as f:
        clean = f(x)
    with method.configure(model, 1.0) as f:
        adv = f(x)
    with method.configure(model, 0.3) as f:
        mid = f(x)
    assert torch.allclose(mid, 0.7 * clean + 0.3 * adv, atol=1e-5)
    assert not method.is_random(0.5)


def test_smart_sparse_masks_the_shared_stages_as_floats_does():
    """sparse=on: every shared convolution gets one mask at sparse_density (noise masked, dense gradient),
    the expert paths keep their two masks and their own gradients."""
    method, model = _smart_model(sparse="on", sparse_density=0.25)
    single = [c for c in masked_convs(model) if c.paths == ("",)]
    paths = [c for c in masked_convs(model) if len(c.paths) == 2]
    assert len(paths) == 20 and len(single) == 1 + 2 * (3 + 4) + 1  # stem, stages 0-1's convs, one shortcut
    for conv in single:
        assert conv.noisy and conv.mask_noise and conv.dense_grad
        assert conv.mask.mean().item() == pytest.approx(0.25, abs=1 / conv.mask.numel())
        assert (conv.weight[conv.mask == 0] == 0).all()
    assert all(not c.dense_grad and not c.noisy for c in paths)
    method.factory.cond.set(clean=False, noise=1.0)
    conv = single[1]
    assert (conv.effective_weight()[conv.mask == 0] == 0).all(), "the noise is masked: sparse at every lambda"
    _, dense = _smart_model(sparse="off")  # the same seed draws the same expert masks, on or off
    for a, b in zip(paths, [c for c in masked_convs(dense) if len(c.paths) == 2]):
        assert torch.equal(a.mask_clean, b.mask_clean) and torch.equal(a.mask_adv, b.mask_adv)


def test_smart_sparse_prunes_and_regrows_the_shared_masks_only():
    torch.manual_seed(0)
    method = _method("smart", sparse="on", stages="last2")
    model = method.build_model("preact_resnet18", CIFAR)
    paths_before = [(c.mask_clean.clone(), c.mask_adv.clone()) for c in masked_convs(model) if len(c.paths) == 2]
    opt, _ = optimizer_for(model, TrainConfig(lr=0.05), 10)
    model.train()
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    loss, _, _ = method.train_step(model, x, y)
    loss.backward()
    opt.step()
    method.after_step(model, opt)
    single = [c for c in masked_convs(model) if c.paths == ("",)]
    assert all((c.weight[c.mask == 0] == 0).all() for c in single), "W <- W*M after every step"
    before = [c.mask.clone() for c in single]
    stats = method.end_epoch(model, 0, None, opt)
    assert stats["prune_rate"] == 0.5 and stats["pruned"] == stats["regrown"] > 0
    assert stats["density"] == pytest.approx(0.5, abs=1e-3)
    assert any((c.mask != b).any() for c, b in zip(single, before))
    for (clean, adv), conv in zip(paths_before, [c for c in masked_convs(model) if len(c.paths) == 2]):
        assert torch.equal(clean, conv.mask_clean) and torch.equal(adv, conv.mask_adv)
    assert method.end_epoch(model, 3, None, opt)["prune_rate"] == 0.0


def test_smart_sparse_uses_fewer_weights_at_every_lambda():
    """At every lambda the forward leaves out exactly the shared convolutions' masked-off weights."""
    from harness.complexity import count, used_masks
    counts, saved = {}, 0
    for sparse in ("off", "on"):
        method, model = _smart_model(sparse=sparse)
        x1 = torch.rand(1, 3, 32, 32)
        counts[sparse] = []
        for lam in (0.0, 0.5, 1.0):
            with method.configure(model, lam) as forward:
                counts[sparse].append(count(used_masks(forward, model, x1)))
    saved = sum(int((c.mask == 0).sum()) for c in masked_convs(model) if c.paths == ("",))
    assert saved > 600_000  # half of ResNet-34's stem and first two stages (1.34M weights)
    assert [d - s for d, s in zip(counts["off"], counts["on"])] == [saved] * 3
    assert _method("smart").sparse is False


def test_smart_sparse_options_are_checked():
    with pytest.raises(LambenchError, match="stages=last2"):
        _method("smart", sparse="on", stages="all")
    with pytest.raises(LambenchError, match="sparse_density"):
        _method("smart", sparse="on", sparse_density=0)
