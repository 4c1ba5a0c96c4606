"""The one layer factory every model family builds through.

Models never call ``nn.Conv2d``/``nn.BatchNorm2d`` directly: they ask a ``LayerFactory``. Once-for-all methods
pass a subclass that returns conditioned layers (dual BN, FiLM, noisy or masked convolutions), so no model
file is ever copied per method. The factory also knows which stage of the network is being built, so a
method can condition only some stages (SMART's masks on the last two).
"""
from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """Per-channel standardisation as the model's first layer: inputs stay in [0, 1] for attacks."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class LayerFactory:
    """Plain layers. Override a method to condition every model family at once."""

    def __init__(self):
        self.stage = 0          # index of the stage being built (0 = stem), set by the model
        self.num_stages = 1

    def begin_stage(self, index: int, num_stages: int) -> None:
        self.stage, self.num_stages = index, num_stages

    def attach(self, model: nn.Module) -> nn.Module:
        """Called with the finished model (a factory may install per-model hooks); plain layers need none."""
        return model

    def conv(self, cin: int, cout: int, kernel: int, stride: int = 1, padding: int | None = None,
             bias: bool = False) -> nn.Module:
        pad = kernel // 2 if padding is None else padding
        return nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, bias=bias)

    def norm(self, channels: int, shortcut: bool = False, head: bool = False) -> nn.Module:
        """Normalisation layer; ``shortcut`` marks a projection shortcut's BN, ``head`` the BN before the
        classifier of pre-activation networks (FiLM conditions neither)."""
        return nn.BatchNorm2d(channels)

    def act(self) -> nn.Module:
        return nn.ReLU(inplace=True)

    def linear(self, fin: int, fout: int) -> nn.Module:
        return nn.Linear(fin, fout)
