"""Per-pass batching for the conditioned layers: what every FiLM or every noisy convolution of a model
computes once per forward pass, computed for all of them together.

At small batches a GPU step is bound by kernel launches, not arithmetic, and the once-for-all methods add
many small kernels per layer (an MLP per FiLM; std, randn, two products and a sum per noisy convolution).
Each bank replaces those per-layer kernels by a few per group of equally sized layers. Same parameters,
same state dict, same numbers (FiLM up to the order of float additions; the noise from the same
distribution, drawn in one call). ``ConditionedLayers.attach`` installs them as hooks on the model; a
layer used outside a model's forward pass computes its own. Inside ``weights_fixed`` (a training step, one
lambda's evaluation: spans in which no weight changes) the banks also keep what does not change from pass
to pass: each weight's std, and FiLM's values for the passes without gradients (attack steps, on frozen weights).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def _groups(keys: list) -> dict:
    """Indices of equal keys, by key, in first-seen order: the layers one batched kernel can serve."""
    return {k: [i for i, v in enumerate(keys) if v == k] for k in dict.fromkeys(keys)}


class _PassBank:
    """What both banks share. ``layers`` (each told its ``bank`` and ``slot``) are served per forward pass:
    hooks on the model open the bank before the pass and close it after; the first layer to ask computes
    every layer's values (``_pass``, inside its own forward, so a compiled forward computes them in its
    graph and the complexity counter counts them there), the others take theirs, and closing drops them.
    ``kept`` is the dict ``weights_fixed`` lends while no weight changes (None otherwise)."""

    def __init__(self, layers: list):
        for i, layer in enumerate(layers):
            layer.slot, layer.bank = i, self
        self.active, self.current = False, None
        self.kept: dict | None = None

    def open(self, module, inputs) -> None:
        self.active, self.current = True, None

    def close(self, module, inputs, output) -> None:
        self.active, self.current = False, None

    def get(self, layer):
        """``layer``'s values for this pass (every layer's computed at the first call)."""
        if self.current is None:
            # in a compiled graph nothing is kept: a kept tensor would become a graph constant
            self.current = self._pass(None if torch.compiler.is_compiling() else self.kept)
        return self.current[layer.slot]

    def _pass(self, kept: dict | None) -> list:
        raise NotImplementedError

    def install(self, model: nn.Module) -> None:
        if self in getattr(model, "banks", ()):
            return  # installed already: a second pair of hooks would open and close each pass twice
        model.banks = [*getattr(model, "banks", ()), self]  # for ``weights_fixed`` (not in the state dict)
        model.register_forward_pre_hook(self.open)
        model.register_forward_hook(self.close, always_call=True)  # a pass that raised keeps nothing either


class FiLMBank(_PassBank):
    """Every FiLM of one model computed together, once per forward pass, from the shared encoding: one
    matrix product for all first layers, one batched product per group of equally wide second layers.
    A network with 33 FiLM sites (ResNet-34) then launches a few dozen small kernels per forward pass, not
    hundreds. Each FiLM's values are its (scale, shift). Inside ``weights_fixed`` a pass without gradients
    (the attacks' on frozen weights, clean evaluation's) reuses the values of the last such pass with the
    very same encoding tensor."""

    def __init__(self, films: list, cond):
        super().__init__(films)
        self.films, self.cond = films, cond
        self.widths = [f.mlp[2].out_features for f in films]
        self.groups = _groups(self.widths)

    def _pass(self, kept: dict | None) -> list:
        enc = self.cond.enc
        grad = torch.is_grad_enabled() and (enc.requires_grad or self.films[0].mlp[0].weight.requires_grad)
        if kept is None or grad:  # values with a gradient path serve their own pass only
            return self.compute(enc)
        kind = enc.device.type  # the values' dtype follows this device's autocast
        autocast = (torch.is_autocast_enabled(kind), torch.get_autocast_dtype(kind))
        if kept.get("enc") is not enc or kept.get("autocast") != autocast:
            kept.update(enc=enc, autocast=autocast, out=self.compute(enc))
        return kept["out"]

    def compute(self, enc: torch.Tensor) -> list:
        films = self.films
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
        return out


def _flat(t: torch.Tensor) -> torch.Tensor:
    """All of ``t``'s elements as one vector, in memory order for contiguous and channels_last tensors, by
    views only (so a gradient passes back cheaply; ``as_strided``'s backward would fill a buffer of the whole
    storage); a copy in ``t``'s logical order for any other layout. Weights, masks and noise all use it, so
    their entries line up."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1)  # memory order: a view
    return t.reshape(-1)


def _unflat(v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The vector ``v`` (``_flat(t)``'s order) as a tensor of ``t``'s shape and memory layout."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        o, i, h, w = t.shape
        return v.view(o, h, w, i).permute(0, 3, 1, 2)
    return v.view(t.shape)


def noise_groups(convs: list) -> dict:
    """Noisy convolutions grouped by weight size and whether their noise is masked."""
    return _groups([(c.weight.numel(), bool(c.paths) and c.mask_noise) for c in convs])


def noise_scales(bases: list, groups: dict, noise: float) -> torch.Tensor:
    """noise * std(W') of each weight in ``bases``, in the order of ``groups``' indices (no gradient):
    one stacked ``std`` per group."""
    stds = [torch.stack([_flat(bases[i].detach()) for i in idx]).std(dim=1) for idx in groups.values()]
    return (stds[0] if len(stds) == 1 else torch.cat(stds)) * noise


def noisy_weights(convs: list, noise: float, path: str | None = None, groups: dict | None = None,
                  kept: dict | None = None) -> list:
    """The weight of each of ``convs`` for one pass, W~ = W' + alpha * noise * std(W') * eta, W' the weight
    masked for ``path`` (``CondConv2d.masked_weight``), eta ~ N(0, 1), times the noise mask where there is
    one; std and eta carry no gradient. All of it on one vector of every W', in the order of ``groups``
    (``noise_groups(convs)``): one ``randn``, one stacked ``std`` per group, one product for all alphas, and
    one fused multiply-add per group (its weights as the rows of a block, each row scaled by its own
    alpha * noise * std), unbound into views, so alpha and W get their gradients. ``kept``: where the
    weights and masks cannot change between calls (``weights_fixed``), a dict that keeps the
    ``noise_scales`` and the flat noise mask from the first call for the next ones."""
    groups = noise_groups(convs) if groups is None else groups
    order = [i for idx in groups.values() for i in idx]
    by_conv = [c.masked_weight(path) for c in convs]
    bases = [by_conv[i] for i in order]
    key = (noise, path or convs[0].cond.path)
    scales = None if kept is None else kept.get(key)
    if scales is None:
        scales = noise_scales(by_conv, groups, noise)
        if kept is not None:
            kept[key] = scales
    ref, sizes = bases[0], [b.numel() for b in bases]
    mask = None if kept is None else kept.get(("mask", *key))
    if mask is None:
        masks = [convs[i].noise_mask(path) for i in order]
        if any(m is not None for m in masks):
            mask = torch.cat([torch.ones(n, device=ref.device, dtype=ref.dtype) if m is None else _flat(m)
                              for m, n in zip(masks, sizes)])
            if kept is not None:
                kept[("mask", *key)] = mask
    eta = torch.randn(sum(sizes), device=ref.device, dtype=ref.dtype)
    if mask is not None:
        eta = eta * mask
    scale = torch.stack([convs[i].alpha for i in order]) * scales  # alpha * noise * std(W'), one per weight
    counts = [len(idx) for idx in groups.values()]
    lengths = [k * n for k, (n, _) in zip(counts, groups)]
    flat, parts = torch.cat([_flat(b) for b in bases]), []
    # one multiply-add per group of equally sized weights, on [k, n] blocks; split, not sliced: a slice's
    # backward fills a zero tensor of the whole vector, a split's is one concatenation for all
    for k, w, e, s in zip(counts, flat.split(lengths), eta.split(lengths), scale.split(counts)):
        parts += torch.addcmul(w.view(k, -1), e.view(k, -1), s[:, None]).unbind()
    out: list = [None] * len(convs)
    for i, piece, base in zip(order, parts, bases):
        out[i] = _unflat(piece, base)
    return out


class NoiseBank(_PassBank):
    """The noisy weights of every noisy ``CondConv2d`` of one model, drawn together once per forward pass:
    ``noisy_weights`` over all of them, where a convolution on its own (``CondConv2d.effective_weight``)
    calls it for itself alone. Each convolution's values are its weight for the pass; ``kept`` keeps the
    ``noise_scales``. A noisy pass whose rows are split over SMART's two mask paths falls back to each
    convolution."""

    def __init__(self, convs: list):
        super().__init__(convs)
        self.convs = convs
        self.groups = noise_groups(convs)

    def _pass(self, kept: dict | None) -> list:
        # the noise of the layers' own Condition (one per model), which follows a layer pointed at another
        return noisy_weights(self.convs, self.convs[0].cond.noise, groups=self.groups, kept=kept)


@contextmanager
def weights_fixed(model: nn.Module):
    """Declare that ``model``'s weights and masks do not change inside (one training step's passes, attack
    and training; one lambda's accuracy and attacks): its noise bank then takes each convolution's std once,
    not at every pass (std(W) carries no gradient, so the kept values serve passes with gradients too), and
    its FiLM bank reuses (scale, shift) across passes without gradients on the same encoding. On leaving,
    the kept values are dropped. Does nothing to a model without banks."""
    banks = getattr(model, "banks", ())
    before = [b.kept for b in banks]
    for bank in banks:
        bank.kept = {} if bank.kept is None else bank.kept  # an enclosing scope's values stay valid
    try:
        yield model
    finally:
        for bank, kept in zip(banks, before):
            bank.kept = kept


def attach_banks(model: nn.Module, films: list, noisy_convs: list, cond) -> nn.Module:
    """Give ``model`` a ``FiLMBank`` for ``films`` and a ``NoiseBank`` for ``noisy_convs`` (where any)."""
    if films:
        FiLMBank(films, cond).install(model)
    if noisy_convs:
        NoiseBank(noisy_convs).install(model)
    return model
