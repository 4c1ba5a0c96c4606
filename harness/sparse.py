"""Binary masks for the sparse methods: initialisation, and FLOATS's prune-and-regrow.

Masks live as buffers of ``CondConv2d`` (see conditioned.py), so they are saved with the model. Everything
here draws from torch's global generator, which the runner seeds per job.

Prune and regrow (sparse momentum, Dettmers & Zettlemoyer 2019, as FLOATS uses it), at the end of an epoch:
1. each layer loses the fraction ``rate`` of its non-zeros with the smallest |W|;
2. as many weights regrow in total, shared between layers in proportion to the mean |momentum| of each
   layer's active weights (``redistribute=True``; otherwise each layer regrows what it lost, so every
   layer keeps its density exactly), at the zero positions with the largest |momentum|.
The total number of non-zeros is kept exactly either way. The forward pass lets gradients reach pruned
weights (``CondConv2d.dense_grad``), so their momentum is there to score them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .conditioned import CondConv2d


def random_mask(like: torch.Tensor, density: float) -> torch.Tensor:
    """Exactly round(density * numel) ones at uniformly random positions."""
    flat = torch.zeros(like.numel(), device=like.device)
    flat[torch.randperm(like.numel(), device=like.device)[: round(density * like.numel())]] = 1
    return flat.view_as(like)


def top_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """Ones at the ``k`` largest entries of ``score``."""
    flat = torch.zeros(score.numel(), device=score.device)
    if k > 0:
        flat[score.flatten().topk(k).indices] = 1
    return flat.view_as(score)


def prune_rate_at(initial: float, epoch: int, epochs: int) -> float:
    """The prune fraction after epoch ``epoch`` (0-based) of ``epochs``: linear from ``initial`` after the
    first epoch to 0 after the last (FLOATS, and SMART with ``sparse=on``)."""
    last = epochs - 1
    return initial * (1 - epoch / last) if last > 0 else 0.0


def masked_convs(model: nn.Module) -> list[CondConv2d]:
    return [m for m in model.modules() if isinstance(m, CondConv2d) and m.paths]


def apply_masks(model: nn.Module) -> None:
    """W <- W * M for single-mask (FLOATS) layers: pruned weights are exactly zero after every step."""
    with torch.no_grad():
        for conv in masked_convs(model):
            if conv.paths == ("",):
                conv.weight.mul_(conv.mask)


def density(model: nn.Module) -> float:
    """Fraction of the masked layers' weights that are in their (single) mask."""
    convs = [c for c in masked_convs(model) if c.paths == ("",)]
    return sum(c.mask.sum().item() for c in convs) / max(1, sum(c.mask.numel() for c in convs))


def _allocate(total: int, shares: list[float], capacity: list[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``shares`` (largest remainder), none above its
    ``capacity``; what a full layer cannot take goes to the others."""
    alloc, remaining = [0] * len(shares), total
    while remaining > 0:
        open_ = [i for i in range(len(shares)) if alloc[i] < capacity[i]]
        if not open_:
            break
        s = [max(shares[i], 0.0) for i in open_]
        if sum(s) <= 0:
            s = [1.0] * len(open_)
        want = [remaining * si / sum(s) for si in s]
        give = [math.floor(w) for w in want]
        for j in sorted(range(len(open_)), key=lambda j: want[j] - give[j], reverse=True)[: remaining - sum(give)]:
            give[j] += 1
        for j, i in enumerate(open_):
            g = min(give[j], capacity[i] - alloc[i])
            alloc[i] += g
            remaining -= g
    return alloc


def prune_and_regrow(model: nn.Module, optimizer: torch.optim.Optimizer, rate: float,
                     redistribute: bool = True) -> dict:
    """One prune/regrow round over the single-mask layers; returns counts for the epoch log."""
    convs = [c for c in masked_convs(model) if c.paths == ("",)]
    if rate <= 0 or not convs:
        return {}
    momenta = [optimizer.state.get(c.weight, {}).get("momentum_buffer") for c in convs]
    momenta = [torch.zeros_like(c.weight) if m is None else m for c, m in zip(convs, momenta)]
    with torch.no_grad():
        kept, removed, shares = [], [], []
        for conv, mom in zip(convs, momenta):
            active = conv.mask.bool()
            n_active = int(active.sum())
            n_remove = math.ceil(rate * n_active)
            score = conv.weight.abs().masked_fill(~active, float("inf"))
            keep = conv.mask - top_mask(-score, n_remove)  # drop the n_remove smallest |W| among the active
            kept.append(keep)
            removed.append(n_remove)
            shares.append(mom.abs()[active].mean().item() if n_active else 0.0)
        if redistribute:
            capacity = [int(k.numel() - k.sum()) for k in kept]
            grow = _allocate(sum(removed), shares, capacity)
        else:
            grow = removed
        regrown = 0
        for conv, mom, keep, n_grow, n_removed in zip(convs, momenta, kept, grow, removed):
            pruned = conv.mask.bool() & ~keep.bool()
            score = mom.abs().masked_fill(keep.bool(), -1.0)
            new = keep + top_mask(score, n_grow)
            regrow_pos = new.bool() & ~keep.bool()
            mom.masked_fill_(pruned & ~regrow_pos, 0.0)   # a pruned weight starts over if it ever regrows
            conv.weight.masked_fill_(~new.bool(), 0.0)
            conv.weight.masked_fill_(regrow_pos, 0.0)      # regrown weights start at zero
            conv.mask.copy_(new)
            regrown += int(regrow_pos.sum())
    return {"pruned": sum(removed), "regrown": regrown, "density": density(model)}


def epoch_prune(model: nn.Module, optimizer, rate: float, redistribute: bool) -> dict:
    """The end-of-epoch round of the sparse methods: ``prune_and_regrow`` at ``rate``, with the epoch log's
    entries (the rate, the density after it, the counts)."""
    stats = prune_and_regrow(model, optimizer, rate, redistribute)
    return {"prune_rate": rate, "density": density(model), **stats}
