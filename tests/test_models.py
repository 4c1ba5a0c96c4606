"""Tests for harness.models and harness.layers: parameter counts of the published architectures, forward
shapes, the layer factory being the only source of layers, timm models, and the Normalize input layer."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.data import DatasetInfo
from harness.errors import LambenchError
from harness.layers import LayerFactory, Normalize
from harness.models import build_model, model_names

ARCHS = ["small_cnn", "preact_resnet18", "wrn16_8", "resnet34"]
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


def make_info(channels=3, size=32, num_classes=10, mean=None, std=None):
    return DatasetInfo(name="test", num_classes=num_classes, channels=channels, size=size,
                       mean=mean or (0.5,) * channels, std=std or (0.25,) * channels,
                       eps=8 / 255, pad=4, flip=True)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(scope="module")
def plain_models():
    torch.manual_seed(0)
    return {arch: build_model(arch, make_info()).eval() for arch in ARCHS}


# --- 1. parameter counts --------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,published", [
    ("resnet34", 21_282_122),          # CIFAR ResNet-34 (OAT/FLOAT)
    ("wrn16_8", 10_961_706),           # WideResNet-16-8
    ("preact_resnet18", 11_171_146),   # PreActResNet-18
])
def test_parameter_counts_match_published(plain_models, arch, published):
    model = plain_models[arch]
    assert n_params(model[0]) == 0                     # Normalize holds buffers only
    count = n_params(model)
    assert count == n_params(model[1])
    assert abs(count - published) / published < 0.005, f"{arch}: {count:,} vs published {published:,}"


def test_small_cnn_is_small(plain_models):
    assert 50_000 < n_params(plain_models["small_cnn"]) < 200_000


# --- 2. forward shapes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shape(plain_models, arch):
    model = plain_models[arch]
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])          # depends on its input


def test_small_cnn_on_digits_shape():
    model = build_model("small_cnn", make_info(channels=1, size=8)).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(RuntimeError):                  # built for 1 channel: 3 channels must not silently work
        model(torch.rand(2, 3, 8, 8))
    model5 = build_model("small_cnn", make_info(channels=1, size=8, num_classes=5)).eval()
    with torch.no_grad():
        assert model5(torch.rand(3, 1, 8, 8)).shape == (3, 5)


# --- 3. the layer factory is really used -------------------------------------------------------------------------
class MarkedConv(nn.Conv2d):
    pass


class MarkedLinear(nn.Linear):
    pass


class MarkedReLU(nn.ReLU):
    pass


class RecordingFactory(LayerFactory):
    """Group norm instead of batch norm, marked conv/linear/act, and a log of every call with its stage."""

    def __init__(self):
        super().__init__()
        self.stages, self.calls = [], []

    def begin_stage(self, index, num_stages):
        super().begin_stage(index, num_stages)
        self.stages.append((index, num_stages))

    def conv(self, cin, cout, kernel, stride=1, padding=None, bias=False):
        self.calls.append(("conv", self.stage, cout))
        pad = kernel // 2 if padding is None else padding
        return MarkedConv(cin, cout, kernel, stride=stride, padding=pad, bias=bias)

    def norm(self, channels, shortcut=False, head=False):
        self.calls.append(("norm_shortcut" if shortcut else "norm_head" if head else "norm", self.stage, channels))
        return nn.GroupNorm(1, channels)

    def act(self):
        self.calls.append(("act", self.stage, None))
        return MarkedReLU(inplace=True)

    def linear(self, fin, fout):
        self.calls.append(("linear", self.stage, fout))
        return MarkedLinear(fin, fout)


STAGE_WIDTHS = {  # stage index -> conv output width (stage 0 = stem)
    "resnet34": {0: 64, 1: 64, 2: 128, 3: 256, 4: 512},
    "preact_resnet18": {0: 64, 1: 64, 2: 128, 3: 256, 4: 512},
    "wrn16_8": {0: 16, 1: 128, 2: 256, 3: 512},
    "small_cnn": {0: 32, 1: 64, 2: 128},
}


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_factory_builds_every_layer(arch):
    L = RecordingFactory()
    model = build_model(arch, make_info(), L).eval()
    modules = list(model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in modules)
    assert any(isinstance(m, nn.GroupNorm) for m in modules)
    convs = [m for m in modules if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is MarkedConv for m in convs)
    assert all(type(m) is MarkedLinear for m in modules if isinstance(m, nn.Linear))
    assert all(type(m) is MarkedReLU for m in modules if isinstance(m, nn.ReLU))
    assert sum(c[0] == "conv" for c in L.calls) == len(convs)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)

    # the factory is told which stage is being built, and the stages are the network's stages
    widths = STAGE_WIDTHS[arch]
    n = len(widths)
    assert sorted({i for i, _ in L.stages}) == list(range(n))
    assert all(num == n for _, num in L.stages)
    assert [i for i, _ in L.stages][:n] == list(range(n))   # in order
    for kind, stage, cout in L.calls:
        if kind == "conv":
            assert cout == widths[stage], f"{arch}: a {cout}-channel conv was built during stage {stage}"
    assert L.calls[-1] == ("linear", n - 1, 10)


def test_resnet34_stages_and_projection_shortcuts():
    L = RecordingFactory()
    build_model("resnet34", make_info(), L)
    assert {i for i, _ in L.stages} == {0, 1, 2, 3, 4}
    assert L.stages[0] == (0, 5)
    # three downsampling stages, each with a 1x1 projection shortcut whose norm is flagged
    assert [c for c in L.calls if c[0] == "norm_shortcut"] == [("norm_shortcut", 2, 128), ("norm_shortcut", 3, 256),
                                                               ("norm_shortcut", 4, 512)]
    assert sum(c[0] == "conv" for c in L.calls) == 1 + 2 * (3 + 4 + 6 + 3) + 3


def test_plain_factory_gives_batch_norm(plain_models):
    for arch in ARCHS:
        assert any(isinstance(m, nn.BatchNorm2d) for m in plain_models[arch].modules())


# --- 4. timm and errors -----------------------------------------------------------------------------------------
def test_timm_model_builds_and_forwards():
    pytest.importorskip("timm")
    model = build_model("timm:resnet18", make_info()).eval()
    assert isinstance(model[0], Normalize)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    grey = build_model("timm:resnet18", make_info(channels=1, num_classes=7)).eval()
    first_conv = next(m for m in grey.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    with torch.no_grad():
        assert grey(torch.rand(2, 1, 32, 32)).shape == (2, 7)


def test_timm_rejects_conditioned_factory():
    with pytest.raises(LambenchError, match="timm:resnet18"):
        build_model("timm:resnet18", make_info(), RecordingFactory())


def test_unknown_arch_raises():
    with pytest.raises(LambenchError) as exc:
        build_model("resnet9000", make_info())
    msg = str(exc.value)
    assert "resnet9000" in msg and "\n" not in msg
    for name in ARCHS:
        assert name in msg
    assert set(ARCHS) <= set(model_names()) and "timm:<name>" in model_names()


# --- 5. Normalize -------------------------------------------------------------------------------------------------
def test_normalize_is_first_and_maps_mean_to_zero():
    model = build_model("small_cnn", make_info(mean=MEAN, std=STD)).eval()
    norm = model[0]
    assert isinstance(norm, Normalize)
    assert next(iter(model.modules())) is model and list(model.children())[0] is norm
    mean = torch.tensor(MEAN).view(1, 3, 1, 1).expand(2, 3, 5, 5)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(norm(mean), torch.zeros(2, 3, 5, 5))
    torch.testing.assert_close(norm(mean + std), torch.ones(2, 3, 5, 5))
    x = torch.rand(2, 3, 5, 5)
    torch.testing.assert_close(norm(x), (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / std)
    # buffers, not parameters: saved with the model, never trained
    assert n_params(norm) == 0
    state = model.state_dict()
    assert torch.equal(state["0.mean"].flatten(), torch.tensor(MEAN))
    assert torch.equal(state["0.std"].flatten(), torch.tensor(STD))


def test_normalize_is_applied_in_the_model():
    torch.manual_seed(0)
    model = build_model("small_cnn", make_info(mean=MEAN, std=STD)).eval()
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model[1](model[0](x)))
        assert not torch.allclose(model(x), model[1](x))


@pytest.mark.parametrize("arch, said", [("timm:resnet18.bogus_tag", "Invalid pretrained tag"),
                                        ("timm:resnet9000", "Unknown model"), ("resnet9000", "resnet9000")])
def test_a_run_with_an_unknown_architecture_is_refused_before_any_job(arch, said):
    """expand_jobs checks every --arch (timm's names and pretrained tags included) before any job runs, so a
    bad one among good ones does not stop the run halfway."""
    pytest.importorskip("timm")
    from harness.config import RunConfig
    from harness.jobs import expand_jobs
    with pytest.raises(LambenchError, match=said) as exc:
        expand_jobs(RunConfig(methods=("pgd_at",), archs=("small_cnn", arch)))
    assert "\n" not in str(exc.value)
    assert len(expand_jobs(RunConfig(methods=("pgd_at",), archs=("small_cnn", "timm:resnet18.a1_in1k")))) == 2
