"""Slimmable layers (Yu et al., 2019) for OATS: one set of weights run at several widths.

At width w a layer keeps the first ``channels(C, w)`` of its C output channels (the classifier keeps all
its outputs) and reads as many input channels as its input has, so the network at width w is the leading
slice of the full one. Batch norm is not shared across widths: each width has its own dual BN
(``SwitchableDualBN``), as slimmable networks require; FiLM's MLP is sliced like the convolutions
(``SlimFiLM``), its scale and shift halves each cut to the active channels. The width in use is
``cond.width``, set by the method like the rest of the ``Condition``. Each slimmable layer tells the
complexity counter which entries it uses (``used_entries``), so parameters are counted per width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .conditioned import Condition, DualBN, FiLM


def channels(c: int, width: float) -> int:
    """Channels kept of ``c`` at ``width`` (at least one)."""
    return max(1, int(round(c * width)))


def _lead(p: torch.Tensor, *sizes: int) -> torch.Tensor:
    """Boolean mask of the leading ``sizes`` block of ``p`` (the rest of its dimensions whole)."""
    used = torch.zeros_like(p, dtype=torch.bool)
    used[tuple(slice(0, s) for s in sizes)] = True
    return used


class SlimConv2d(nn.Conv2d):
    """A convolution whose output channels shrink with ``cond.width`` and whose input channels follow
    the input's."""

    def __init__(self, *args, cond: Condition, **kwargs):
        super().__init__(*args, **kwargs)
        self.cond = cond

    def _sizes(self, cin: int) -> tuple[int, int]:
        return channels(self.out_channels, self.cond.width), cin

    def forward(self, x):
        cout, cin = self._sizes(x.shape[1])
        bias = None if self.bias is None else self.bias[:cout]
        return self._conv_forward(x, self.weight[:cout, :cin], bias)

    def used_entries(self, x) -> dict:
        cout, cin = self._sizes(x.shape[1])
        return {self.weight: _lead(self.weight, cout, cin), self.bias: None if self.bias is None else _lead(self.bias, cout)}


class SlimLinear(nn.Linear):
    """The classifier: every output, the input's leading features."""

    def forward(self, x):
        return F.linear(x, self.weight[:, : x.shape[1]], self.bias)

    def used_entries(self, x) -> dict:
        return {self.weight: _lead(self.weight, self.out_features, x.shape[1]), self.bias: None}


class SwitchableDualBN(nn.Module):
    """One ``DualBN`` per width, over that width's channels; ``cond.width`` picks it."""

    def __init__(self, c: int, widths: tuple[float, ...], cond: Condition):
        super().__init__()
        self.widths, self.cond = widths, cond
        self.bns = nn.ModuleList(DualBN(channels(c, w), cond) for w in widths)

    def forward(self, x):
        return self.bns[self.widths.index(self.cond.width)](x)


class SlimFiLM(FiLM):
    """FiLM whose MLP (d_in -> 2C -> 2C) is sliced to the active C' channels: hidden 2C', and of the output
    the first C' scales and the first C' shifts (at full width exactly ``FiLM``)."""

    def _rows(self, c: int, k: int) -> torch.Tensor:
        """Indices of the first k of each of the two C-long halves of a 2C-long axis."""
        device = self.mlp[0].weight.device
        return torch.cat([torch.arange(k, device=device), torch.arange(c, c + k, device=device)])

    def scale_shift(self, h):
        first, last = self.mlp[0], self.mlp[2]
        rows = self._rows(last.out_features // 2, h.shape[1])
        hidden = F.leaky_relu(F.linear(self.cond.enc.to(h.dtype), first.weight[rows], first.bias[rows]))
        return F.leaky_relu(F.linear(hidden, last.weight[rows][:, rows], last.bias[rows])).chunk(2, dim=1)

    def used_entries(self, h) -> dict:
        first, last = self.mlp[0], self.mlp[2]
        rows = self._rows(last.out_features // 2, h.shape[1])
        u1 = torch.zeros_like(first.weight, dtype=torch.bool)
        u1[rows] = True
        u2 = torch.zeros_like(last.weight, dtype=torch.bool)
        u2[rows[:, None], rows[None, :]] = True
        b = torch.zeros_like(first.bias, dtype=torch.bool)
        b[rows] = True
        return {first.weight: u1, first.bias: b, last.weight: u2, last.bias: b.clone()}
