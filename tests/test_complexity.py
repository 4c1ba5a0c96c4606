"""Complexity: torch's FLOP counter on the published ResNet34, FiLM's cost, parameters used per lambda."""
import math

import pytest
import torch

from harness import complexity
from harness.conditioned import CondConv2d, DualBN, FiLM
from harness.config import TrainConfig
from harness.data import DatasetInfo
from harness.models import build_model
from methods import get_method

CIFAR = DatasetInfo("c", 10, 3, 32, (0.5,) * 3, (0.25,) * 3, 8 / 255, 4, True)
DIGITS = DatasetInfo("d", 10, 1, 8, (0.5,), (0.25,), 0.1, 1, False)


def _method(name, **options):
    return get_method(name)(TrainConfig(options={k: str(v) for k, v in options.items()}), 8 / 255)


def _dense(model):
    """Every parameter non-zero (fresh BN biases are zeros, which non-zero counts rightly skip)."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.5)
    return model


def _macs_at(method, model, lam, x1):
    with method.configure(model, lam) as forward:
        return complexity.macs(forward, model, x1)


def _at(method, model, lam, x1):
    with method.configure(model, lam) as forward:
        return (complexity.macs(forward, model, x1), complexity.used_masks(forward, model, x1))


def test_resnet34_macs_match_published():
    """Plain CIFAR ResNet-34 at 32x32: ~1.16 GMACs (convolutions and the classifier)."""
    with torch.device("meta"):  # the counter needs shapes only: no memory, no initialisation
        model = build_model("resnet34", CIFAR).eval()
        macs = complexity.macs(model, model, torch.rand(1, 3, 32, 32))
    assert macs == pytest.approx(1.16e9, rel=0.02)
    assert complexity.params(model) == 21_282_122


def test_oat_exceeds_float_by_film_cost():
    """At lambda 0 FLOAT has no noise, so OAT - FLOAT is exactly FiLM: its MLP on the lambda encoding plus
    one multiply-add per activation for scale and shift."""
    oat, fl = _method("oat"), _method("float")
    with torch.device("meta"):
        x1 = torch.rand(1, 3, 32, 32)
        oat_model, float_model = oat.build_model("resnet34", CIFAR), fl.build_model("resnet34", CIFAR)
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m, o.shape)))
             for m in oat_model.modules() if isinstance(m, FiLM)]
    oat_macs = _macs_at(oat, oat_model, 0.0, x1)
    for h in hooks:
        h.remove()
    float_macs = _macs_at(fl, float_model, 0.0, x1)
    mlp = sum(lin.in_features * lin.out_features for m, _ in shapes for lin in m.mlp if isinstance(lin, torch.nn.Linear))
    scale_shift = sum(math.prod(shape) for _, shape in shapes)  # 2 FLOPs = 1 MAC per activation
    assert len(shapes) == 33  # stem + 2 per block of [3, 4, 6, 3]
    assert oat_macs > float_macs
    assert oat_macs - float_macs == pytest.approx(mlp + scale_shift)
    # FLOAT's noise is counted where it is drawn: W + alpha*lambda*eta costs a few FLOPs per weight
    float_noisy = _macs_at(fl, float_model, 1.0, x1)
    conv_weights = sum(m.weight.numel() for m in float_model.modules() if isinstance(m, CondConv2d))
    assert 1 * conv_weights <= 2 * (float_noisy - float_macs) <= 4 * conv_weights


def test_masks_reduce_nonzero_params_and_stored_covers_every_lambda():
    torch.manual_seed(0)
    method = _method("float")
    model = _dense(method.build_model("small_cnn", DIGITS))
    # a FLOAT model has no masks; give its convolutions some by hand (what the sparse methods do)
    convs = [m for m in model.modules() if isinstance(m, CondConv2d)]
    zeroed = 0
    for conv in convs:
        conv.paths = ("",)
        conv.register_buffer("mask", (torch.rand_like(conv.weight) < 0.3).float())
        zeroed += int((conv.mask == 0).sum())
    x1 = torch.rand(1, 1, 8, 8)
    grid = method.lambda_grid()
    used = {lam: _at(method, model, lam, x1)[1] for lam in grid}
    nonzero = {lam: complexity.count(complexity.nonzero(u, model)) for lam, u in used.items()}
    stored = None
    for u in used.values():
        stored = complexity.union(stored, u)
    total = complexity.params(model)
    assert all(n < total for n in nonzero.values())
    assert total - complexity.count(stored) == zeroed  # the masked-out weights are never stored
    assert all(complexity.count(stored) >= n for n in nonzero.values())
    # lambda >= 0.1: bn_adv and the noise scales alpha; lambda 0: bn_clean, no noise
    bn = sum(p.numel() for m in model.modules() if isinstance(m, DualBN) for p in m.bn_adv.parameters())
    assert nonzero[1.0] - nonzero[0.0] == len(convs)  # the alphas; the BN branches are the same size
    assert complexity.count(stored) == nonzero[0.0] + bn + len(convs)


def test_dual_bn_counts_only_the_routed_branch():
    """OAT at lambda 0 uses bn_clean, at 1 bn_adv; FiLM and everything else at both; the deployment
    stores both branches."""
    method = _method("oat")
    model = _dense(method.build_model("small_cnn", DIGITS))
    x1 = torch.rand(1, 1, 8, 8)
    u0, u1 = _at(method, model, 0.0, x1)[1], _at(method, model, 1.0, x1)[1]
    clean = {n for n in u0 if "bn_clean" in n}
    adv = {n for n in u0 if "bn_adv" in n}
    assert clean and adv
    assert all(u0[n].all() for n in clean) and not any(u0[n].any() for n in adv)
    assert all(u1[n].all() for n in adv) and not any(u1[n].any() for n in clean)
    branch = sum(int(u0[n].numel()) for n in adv)
    stored = complexity.union(u0, u1)
    assert complexity.count(stored) == complexity.params(model) == complexity.count(u0) + branch
    assert any("mlp" in n for n in u0) and all(u0[n].all() for n in u0 if "mlp" in n)


def test_exact_zeros_are_stored_but_not_counted_non_zero(digits):
    """A dense tensor's exact zeros (a dead channel's BN bias, a weight that trained to 0) are left out of
    nonzero_params, but a deployment stores the tensor whole: stored_params equals params, as a dedicated
    model's count has it (before, the zeros were dropped from both)."""
    from harness.config import EvalConfig
    from harness.evaluate import evaluate
    method = _method("float")
    model = _dense(method.build_model("small_cnn", digits.info))
    conv = next(m for m in model.modules() if isinstance(m, CondConv2d))
    bn = next(m for m in model.modules() if isinstance(m, DualBN))
    with torch.no_grad():
        conv.weight.view(-1)[:3] = 0
        bn.bn_clean.bias[:2] = 0
    fast = dict(attacks=(), n=8, batch_size=8, aa="off", checks=False, complexity=True)
    rows = evaluate(method, model, digits, EvalConfig(lambdas=(0.0, 1.0), **fast), eps=0.1, progress=False)
    value = {(r["metric"], r["lambda"]): r["value"] for r in rows}
    stored = next(r["value"] for r in rows if r["metric"] == "stored_params")
    assert stored == complexity.params(model)
    bn_size = sum(p.numel() for p in bn.bn_adv.parameters())
    alphas = sum(1 for m in model.modules() if isinstance(m, CondConv2d) and m.noisy)
    # lambda 0: everything but bn_adv (of every DualBN) and the alphas, less the five zeros
    clean_side = complexity.params(model) - alphas - sum(
        p.numel() for m in model.modules() if isinstance(m, DualBN) for p in m.bn_adv.parameters())
    assert value[("nonzero_params", 0.0)] == clean_side - 5
    assert value[("nonzero_params", 1.0)] == clean_side + alphas - 3  # bn_adv instead: only the weights' zeros
    assert bn_size > 2


def test_smart_mixed_paths_count_both_masks():
    """SMART's mix=paths runs the clean and the adversarial path in one forward: both masks count."""
    torch.manual_seed(0)
    method = _method("smart", mix="paths")
    model = _dense(method.build_model("small_cnn", DIGITS))
    x1 = torch.rand(1, 1, 8, 8)
    u_clean, u_mixed = _at(method, model, 0.0, x1)[1], _at(method, model, 0.5, x1)[1]
    assert complexity.count(u_mixed) > complexity.count(u_clean)
    masked = [n for n, m in model.named_modules() if isinstance(m, CondConv2d) and m.paths]
    assert all(u_mixed[f"{n}.weight"].all() for n in masked)  # complementary masks: every entry


def test_inference_cost_on_cpu():
    model = build_model("small_cnn", DIGITS).eval()
    cost = complexity.inference_cost(model, torch.rand(10, 1, 8, 8))
    assert cost["infer_latency_ms"] > 0 and cost["infer_throughput"] > 0
    assert math.isnan(cost["infer_peak_mem_mb"])  # CUDA only


def test_resident_bytes_count_parameters_and_buffers_once():
    """What a deployment holds in memory: every parameter and buffer (BN statistics, masks), a shared tensor
    once."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    model.append(model[0])  # the same convolution twice
    model[1].register_buffer("view", model[0].weight.detach()[1])  # a view into the convolution's weight
    expect = 4 * (4 * 9 + 4 + 4 + 4 + 4 + 4) + 8  # fp32 weight, bias, BN weight, bias, running stats; int64 count
    assert complexity.resident_bytes(model) == expect


@pytest.mark.parametrize("name", ["float", "smart"])
def test_stored_params_cover_the_whole_lambda_range_whatever_lambdas_are_scored(digits, name):
    """stored_params is what a deployment stores for the method's whole λ range: scoring only λ = 1
    (--lambdas 1) must not leave out FLOAT's bn_clean or SMART's clean path."""
    from harness.config import EvalConfig
    from harness.evaluate import evaluate
    torch.manual_seed(0)
    method = get_method(name)(TrainConfig(), 0.1)
    model = _dense(method.build_model("small_cnn", digits.info))
    fast = dict(attacks=(), n=8, batch_size=8, aa="off", checks=False, complexity=True)

    def stored(lambdas):
        rows = evaluate(method, model, digits, EvalConfig(lambdas=lambdas, **fast), eps=0.1, progress=False)
        return next(r["value"] for r in rows if r["metric"] == "stored_params")

    whole, one = stored(None), stored((1.0,))
    assert one == whole
    rows = evaluate(method, model, digits, EvalConfig(lambdas=(1.0,), **fast), eps=0.1, progress=False)
    assert [r["value"] for r in rows if r["metric"] == "grid_lambdas"] == [len(method.lambda_grid())], \
        "the grid's size, whatever --lambdas scored (the report's cost of the dial counts it)"
    with method.configure(model, 1.0) as forward:
        at_one = complexity.count(complexity.used_masks(forward, model, digits.x_test[:1].float() / 255))
    assert whole > at_one, "λ = 1 alone uses fewer entries than the whole range"
