"""Model families, all built through one ``LayerFactory`` (see layers.py), plus any timm model by name.

- ``preact_resnet18``: PreActResNet-18 (Fast-AT's CIFAR model).
- ``resnet34``: the CIFAR ResNet-34 of the OAT/FLOAT papers (3x3 stem, BasicBlocks [3, 4, 6, 3], 21.28M params).
- ``wrn16_8``: WideResNet-16-8 (10.96M params at 10 classes).
- ``small_cnn``: a small CNN for the embedded digits and CI; works at any input size.
- ``timm:<name>``: any timm model (unconditioned methods only).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import LambenchError
from .layers import LayerFactory, Normalize

_MODELS: dict[str, Callable] = {}


def register_model(name: str):
    def deco(fn):
        _MODELS[name] = fn
        return fn
    return deco


def model_names() -> list[str]:
    return sorted(_MODELS) + ["timm:<name>"]


def check_arch(arch: str, layers: LayerFactory) -> None:
    """A one-line error naming the fix if ``arch`` cannot be built with ``layers`` (before any work)."""
    if arch.startswith("timm:"):
        if type(layers) is not LayerFactory:
            raise LambenchError(f"{arch} cannot take conditioned layers; use preact_resnet18, resnet34, wrn16_8 or small_cnn")
        import timm
        try:  # on the meta device: the name (and any pretrained tag) checked in a moment, nothing allocated
            with torch.device("meta"):
                timm.create_model(arch[5:], pretrained=False)
        except Exception as exc:  # noqa: BLE001 - timm's own words, on one line
            why = " ".join(str(exc).split())[:200]
            raise LambenchError(f"timm cannot build {arch[5:]!r} ({why}); see timm.list_models() for the "
                                f"names") from None
    elif arch not in _MODELS:
        raise LambenchError(f"unknown architecture {arch!r}; choose one of: {', '.join(model_names())}")


def build_model(arch: str, info, layers: LayerFactory | None = None) -> nn.Module:
    """Build ``arch`` for dataset ``info`` (classes, channels, mean/std) with ``layers`` (default: plain)."""
    layers = layers or LayerFactory()
    check_arch(arch, layers)
    if arch.startswith("timm:"):
        import timm
        net = timm.create_model(arch[5:], pretrained=False, num_classes=info.num_classes, in_chans=info.channels)
    else:
        net = _MODELS[arch](info.num_classes, info.channels, layers)
    return nn.Sequential(Normalize(info.mean, info.std), net)


class BasicBlock(nn.Module):
    """Post-activation residual block (ResNet-34)."""

    def __init__(self, L: LayerFactory, cin, cout, stride):
        super().__init__()
        self.conv1, self.bn1, self.act1 = L.conv(cin, cout, 3, stride), L.norm(cout), L.act()
        self.conv2, self.bn2, self.act2 = L.conv(cout, cout, 3), L.norm(cout), L.act()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(L.conv(cin, cout, 1, stride, padding=0), L.norm(cout, shortcut=True))

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block (PreActResNet, WideResNet); dropout-free."""

    def __init__(self, L: LayerFactory, cin, cout, stride):
        super().__init__()
        self.bn1, self.act1, self.conv1 = L.norm(cin), L.act(), L.conv(cin, cout, 3, stride)
        self.bn2, self.act2, self.conv2 = L.norm(cout), L.act(), L.conv(cout, cout, 3)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = L.conv(cin, cout, 1, stride, padding=0)

    def forward(self, x):
        out = self.act1(self.bn1(x))
        short = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.act2(self.bn2(out)))
        return out + short


class ResNet(nn.Module):
    def __init__(self, L: LayerFactory, block, depths, widths, num_classes, in_ch, stem_width, preact):
        super().__init__()
        n = len(depths) + 1
        L.begin_stage(0, n)
        self.stem = nn.Sequential(L.conv(in_ch, stem_width, 3)) if preact else \
            nn.Sequential(L.conv(in_ch, stem_width, 3), L.norm(stem_width), L.act())
        stages, cin = [], stem_width
        for i, (depth, width) in enumerate(zip(depths, widths)):
            L.begin_stage(i + 1, n)
            blocks = []
            for j in range(depth):
                blocks.append(block(L, cin, width, (1 if i == 0 else 2) if j == 0 else 1))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        L.begin_stage(n - 1, n)
        self.head_norm = nn.Sequential(L.norm(cin, head=True), L.act()) if preact else nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = L.linear(cin, num_classes)

    def forward(self, x):
        x = self.head_norm(self.stages(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


@register_model("resnet34")
def resnet34(num_classes, in_ch, L):
    return ResNet(L, BasicBlock, [3, 4, 6, 3], [64, 128, 256, 512], num_classes, in_ch, 64, preact=False)


@register_model("preact_resnet18")
def preact_resnet18(num_classes, in_ch, L):
    return ResNet(L, PreActBlock, [2, 2, 2, 2], [64, 128, 256, 512], num_classes, in_ch, 64, preact=True)


@register_model("wrn16_8")
def wrn16_8(num_classes, in_ch, L):
    return ResNet(L, PreActBlock, [2, 2, 2], [128, 256, 512], num_classes, in_ch, 16, preact=True)


@register_model("small_cnn")
def small_cnn(num_classes, in_ch, L):
    """Three conv-BN-ReLU stages (32, 64, 128 channels) and a linear head; ~0.1M params."""
    layers, cin = [], in_ch
    for i, (cout, stride) in enumerate([(32, 1), (64, 2), (128, 2)]):
        L.begin_stage(i, 3)
        layers += [L.conv(cin, cout, 3, stride), L.norm(cout), L.act()]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), L.linear(cin, num_classes))
