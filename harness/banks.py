"""Per-pass batching for the conditioned layers: what every FiLM or every noisy convolution of a model
computes once per forward pass, computed for all of them together.

At small batches a GPU step is bound by kernel launches, not arithmetic, and the once-for-all methods add
many small kernels per layer (an MLP per FiLM; std, randn, two products and a sum per noisy convolution).
Each bank replaces those per-layer kernels by a few per group of equally sized layers. Same parameters,
same state dict, same numbers (FiLM up to the order of float additions; the noise from the same
distribution, drawn in one call). ``ConditionedLayers.attach`` installs them as hooks on the model; a
layer used outside a model's forward pass computes its own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _groups(keys: list) -> dict:
    """Indices of equal keys, by key, in first-seen order: the layers one batched kernel can serve."""
    return {k: [i for i, v in enumerate(keys) if v == k] for k in dict.fromkeys(keys)}


class FiLMBank:
    """Every FiLM of one model computed together, once per forward pass, from the shared encoding: one
    matrix product for all first layers, one batched product per group of equally wide second layers.
    A network with 33 FiLM sites (ResNet-34) then launches a few dozen small kernels per forward pass, not
    hundreds. A forward pre-hook of the model; it leaves ``cond.film`` = [(scale, shift)] per FiLM."""

    def __init__(self, films: list, cond):
        self.films, self.cond = films, cond
        for i, f in enumerate(films):
            f.slot = i
        self.widths = [f.mlp[2].out_features for f in films]
        self.groups = _groups(self.widths)

    def __call__(self, module, inputs) -> None:
        films, enc = self.films, self.cond.enc
        if enc is None:
            self.cond.film = None
            return
        first = [f.mlp[0] for f in films]
        hidden = F.leaky_relu(F.linear(enc, torch.cat([m.weight for m in first]), torch.cat([m.bias for m in first])))
        parts = hidden.split(self.widths, dim=1)
        out: list = [None] * len(films)
        for idx in self.groups.values():
            second = [films[i].mlp[2] for i in idx]
            y = torch.baddbmm(torch.stack([m.bias for m in second])[:, None, :], torch.stack([parts[i] for i in idx]),
                              torch.stack([m.weight for m in second]).transpose(1, 2))
            for i, yi in zip(idx, F.leaky_relu(y)):
                out[i] = yi.chunk(2, dim=1)
        self.cond.film = out


def _dense(t: torch.Tensor) -> bool:
    """Whether ``t``'s elements fill its memory without gaps in some dimension order (then a flat view and
    a view with its strides both exist)."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _flat(t: torch.Tensor) -> torch.Tensor:
    """All of ``t``'s elements as one vector, in memory order (a view when ``t`` is dense)."""
    return t.as_strided((t.numel(),), (1,)) if _dense(t) else t.reshape(-1)


def _shaped_like(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The vector ``v`` (no gradient) viewed with ``t``'s shape and memory layout, e.g. channels_last."""
    return v.as_strided(t.shape, t.stride()) if _dense(t) else v.view(t.shape)


def noise_groups(convs: list) -> dict:
    """Noisy convolutions grouped by weight size and whether their noise is masked."""
    return _groups([(c.weight.numel(), bool(c.paths) and c.mask_noise) for c in convs])


def noisy_weights(convs: list, noise: float, path: str | None = None, groups: dict | None = None) -> list:
    """The weight of each of ``convs`` for one pass, W~ = W' + alpha * noise * std(W') * eta, W' the weight
    masked for ``path`` (``CondConv2d.masked_weight``), eta ~ N(0, 1), times the noise mask where there is
    one; std and eta carry no gradient. One ``randn`` for all, one stacked ``std`` and product per group of
    ``groups`` (``noise_groups(convs)``), one fused multiply-add per convolution, so alpha gets its gradient."""
    groups = noise_groups(convs) if groups is None else groups
    bases = [c.masked_weight(path) for c in convs]
    ref = bases[0]
    eta = torch.randn(sum(b.numel() for b in bases), device=ref.device, dtype=ref.dtype)
    out: list = [None] * len(convs)
    offset = 0
    for (n, _), idx in groups.items():
        block = eta[offset:offset + n * len(idx)].view(len(idx), n)
        offset += n * len(idx)
        std = torch.stack([_flat(bases[i].detach()) for i in idx]).std(dim=1, keepdim=True)
        block = block * std
        masks = [convs[i].noise_mask(path) for i in idx]
        if masks[0] is not None:
            block = block * torch.stack([_flat(m) for m in masks])
        alphas = (torch.stack([convs[i].alpha for i in idx]) * noise).unbind()  # one backward node, not G
        for i, eta_i, a in zip(idx, block.unbind(), alphas):
            out[i] = torch.addcmul(bases[i], _shaped_like(eta_i, bases[i]), a)
    return out


class NoiseBank:
    """The noisy weights of every noisy ``CondConv2d`` of one model, drawn together once per forward pass:
    ``noisy_weights`` over all of them, where a convolution on its own (``CondConv2d.effective_weight``)
    calls it for itself alone.

    Installed as a forward pre-hook and a forward hook of the model: a pass opens the bank, the first noisy
    convolution that runs draws every convolution's weight (inside its own forward, so the complexity
    counter counts the noise where it is drawn), the others take theirs, and the end of the pass drops
    them. A noisy pass whose rows are split over SMART's two mask paths falls back to each convolution."""

    def __init__(self, convs: list):
        self.convs = convs
        self.active, self.weights = False, None
        for i, c in enumerate(convs):
            c.slot, c.bank = i, self
        self.groups = noise_groups(convs)

    def open(self, module, inputs) -> None:
        self.active, self.weights = True, None

    def close(self, module, inputs, output) -> None:
        self.active, self.weights = False, None

    def weight(self, conv) -> torch.Tensor:
        """``conv``'s noisy weight for this pass (all of them drawn at the first call)."""
        if self.weights is None:
            self.weights = noisy_weights(self.convs, conv.cond.noise, groups=self.groups)
        return self.weights[conv.slot]


def attach_banks(model: nn.Module, films: list, noisy_convs: list, cond) -> nn.Module:
    """Give ``model`` a ``FiLMBank`` for ``films`` and a ``NoiseBank`` for ``noisy_convs`` (where any)."""
    if films:
        model.register_forward_pre_hook(FiLMBank(films, cond))
    if noisy_convs:
        bank = NoiseBank(noisy_convs)
        model.register_forward_pre_hook(bank.open)
        model.register_forward_hook(bank.close)
    return model
