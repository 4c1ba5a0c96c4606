"""Model complexity at one lambda: parameters used, MACs of one inference, latency, throughput, memory.

All functions run inside ``method.configure(model, lam)`` and read the conditioned layers' shared ``cond``,
so they count what the configured forward pass really uses; they know the layer classes
(``CondConv2d``, ``DualBN``, ``FiLM``), not the methods.

Parameters (``nn.Parameter`` entries; buffers such as BN running statistics, masks and the input
normalisation are not counted, as in published parameter counts):
- ``params``: every parameter entry of the model, shared tensors once.
- ``nonzero_params`` at a lambda: entries the configured forward uses and that are non-zero, observed
  during one forward pass (forward pre-hooks): a module that runs uses its own parameters, one that does not
  run uses none. A ``CondConv2d`` weight counts where ``weight * current_mask()`` is non-zero (the mask the
  condition selects: ``mask`` for FLOATS, ``mask_clean``/``mask_adv`` for SMART); its noise scale ``alpha``
  counts only when the convolution is noisy and ``cond.noise != 0``. A ``DualBN`` thus counts only the
  branch(es) the condition routes rows to (``n_clean == ALL``: ``bn_clean``; ``0``: ``bn_adv``), and a
  forward that runs several paths (SMART's mixed logits) counts each entry once.
- ``stored_params``: what a deployment must store to serve the whole lambda grid: the union over lambdas
  of the entries used (per-parameter boolean masks OR-ed), shared weights once, zero or not: an entry a mask
  drops is not stored, but a dense tensor is stored whole, exact zeros too (a BN bias of a dead channel), as
  a dedicated model's ``params`` counts it.

MACs (``macs``): ``torch.utils.flop_counter.FlopCounterMode`` on one input image, MACs = FLOPs / 2. Its
default formulas count convolutions and matrix products (2 FLOPs per multiply-accumulate; biases, BN, ReLU,
pooling and the input normalisation are not counted). Added through its ``custom_mapping``: the elementwise
multiplies, adds and subtractions executed inside every ``FiLM`` and inside every ``CondConv2d`` that draws
weight noise at this lambda, one FLOP per output element: FiLM's ``h * scale + shift`` (one fused
``addcmul``: one MAC per activation; FiLM's MLP, which the model's ``FiLMBank`` computes for every FiLM at
once, is counted by the default formulas) and building the noisy weight
``W + (alpha * lambda * std(W)) * eta``, one fused multiply-add per weight (with the mask products ``W * M``,
``eta * M`` of a masked noisy convolution; a model's ``NoiseBank`` draws every convolution's noise inside the first noisy
convolution's forward, so all of it is counted there). Not counted: drawing the random numbers, ``std``, the
LeakyReLU, and the mask product of a convolution without noise (a deployment stores ``W * M``). Noise and
the FiLM MLP are per forward pass, so at batch 1 one image pays all of it. Masked convolutions are counted dense (the counter
sees a dense kernel); ``nonzero_params`` shows the sparsity.

Timing: latency at batch 1 and throughput at batch 256 (the test images, repeated if fewer), after
warm-up, each the median of its timed calls (at least 50 and 0.5 s at batch 1, 10 and 0.5 s at batch 256
with CUDA events on a GPU; at least 5 and 3 calls, and 0.1 s of calls for each figure, with
``time.perf_counter`` on the CPU).
Peak memory: what one inference at batch 256 needs on the GPU: the model's parameters and buffers, the
input batch, and the most the pass allocates on top of what was allocated before it (``max_memory_allocated``
less ``memory_allocated``); whatever else the process holds on the device (the data set the harness keeps
there, other models) is left out. NaN on CPU.
All in fp32, the precision evaluation runs in.
"""
from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .conditioned import CondConv2d, FiLM

_ELEMENTWISE = (torch.ops.aten.mul, torch.ops.aten.add, torch.ops.aten.sub)
_FUSED = (torch.ops.aten.addcmul,)  # a multiply and an add per element


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def used_masks(forward, model: nn.Module, x1: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per parameter (by name, shared tensors once): a boolean tensor of the entries that ``forward(x1)``
    uses, whatever their values (``nonzero`` keeps the non-zero ones), observed with forward pre-hooks on
    every module of ``model``.

    A module that runs uses its own parameters, except: a ``CondConv2d`` uses its weight through the mask
    the condition selects (both of SMART's when rows are split) and its ``alpha`` only when it is noisy and
    ``cond.noise != 0``. A module that never runs uses nothing, so a ``DualBN`` counts just the branch(es)
    the condition routes rows to, and a forward that runs several paths (e.g. SMART's mixed logits) counts
    each path once. A layer with ``used_entries(input)`` (slimmable layers) names the entries it uses itself."""
    names = {id(p): n for n, p in model.named_parameters()}
    used = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters()}

    def mark(p, entries=None):
        if p is not None and id(p) in names:
            name = names[id(p)]
            used[name] |= True if entries is None else entries

    def hook(module, inputs):
        if hasattr(module, "used_entries"):  # slimmable layers: the slice the current width uses
            for p, entries in module.used_entries(inputs[0]).items():
                mark(p, entries)
            return
        if isinstance(module, FiLM):  # its MLP runs in the model's FiLMBank, not as its own modules
            for p in module.parameters():
                mark(p)
            return
        if isinstance(module, CondConv2d):
            x = inputs[0]
            k = min(module.cond.n_clean, len(x))
            if len(module.paths) == 2 and 0 < k < len(x):
                mask = torch.maximum(*module.masks().values())
            else:
                mask = module.current_mask()
            mark(module.weight, None if mask is None else mask != 0)
            mark(module.bias)
            if module.noisy and module.cond.noise:
                mark(module.alpha)
            return
        for p in module.parameters(recurse=False):
            mark(p)

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            forward(x1)
    finally:
        for h in hooks:
            h.remove()
    return used


def nonzero(used: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """The entries of ``used`` (``used_masks``) whose values in ``model`` are non-zero."""
    values = dict(model.named_parameters())
    return {n: u & (values[n].detach() != 0) for n, u in used.items()}


def count(masks: dict[str, torch.Tensor]) -> int:
    return int(sum(m.sum().item() for m in masks.values()))


def union(a: dict[str, torch.Tensor] | None, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Entries used at some lambda so far (``a`` None: nothing yet)."""
    return dict(b) if a is None else {k: a[k] | b[k] for k in b}


def macs(forward, model: nn.Module, x1: torch.Tensor) -> float:
    """Multiply-accumulates of ``forward`` on the single input ``x1`` [1, C, H, W] (see the module doc)."""
    depth, stack = [0], []

    def enter(module, _):
        counted = isinstance(module, FiLM) or bool(module.noisy and module.cond.noise)
        stack.append(counted)
        depth[0] += counted

    def leave(*_):
        depth[0] -= stack.pop()

    def elementwise(*args, out_shape=None, **kwargs):
        return math.prod(out_shape) if depth[0] > 0 and out_shape is not None else 0

    def fused(*args, out_shape=None, **kwargs):
        return 2 * elementwise(out_shape=out_shape)

    hooks = []
    for m in model.modules():
        if isinstance(m, (FiLM, CondConv2d)):
            hooks += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        mapping = {op: elementwise for op in _ELEMENTWISE} | {op: fused for op in _FUSED}
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as fc:
            forward(x1)
    finally:
        for h in hooks:
            h.remove()
    return fc.get_total_flops() / 2


def _batch(x: torch.Tensor, n: int) -> torch.Tensor:
    reps = -(-n // len(x))
    return x.repeat(reps, *[1] * (x.dim() - 1))[:n].contiguous()


def _time(forward, x, device, warmup: int, iters: int, min_s: float) -> float:
    """Seconds per call of ``forward(x)``: the median of at least ``iters`` timed calls, more until they
    took ``min_s`` seconds in all (a stray stall, e.g. another process's on the CPU, moves a median little;
    one call per figure made throughputs of identical passes differ tenfold on a 2-core CPU)."""
    cuda = device.type == "cuda"
    with torch.no_grad():
        for _ in range(warmup):
            forward(x)
        if cuda:
            torch.cuda.synchronize(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times: list[float] = []
        while len(times) < iters or sum(times) < min_s:
            if cuda:
                start.record()
                forward(x)
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end) / 1000)
            else:
                t0 = time.perf_counter()
                forward(x)
                times.append(time.perf_counter() - t0)
    return statistics.median(times)


def resident_bytes(model: nn.Module) -> int:
    """Bytes of ``model``'s parameters and buffers (masks, BN statistics), each storage once."""
    seen = {}
    for t in [*model.parameters(), *model.buffers()]:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def inference_cost(forward, x: torch.Tensor, batch: int = 256, model: nn.Module | None = None) -> dict[str, float]:
    """``infer_latency_ms`` (batch 1), ``infer_throughput`` (images/s at ``batch``), ``infer_peak_mem_mb``
    (``model``'s parameters and buffers, the input batch and the pass's peak on top of what was allocated
    before it; see the module doc)."""
    device = x.device
    cuda = device.type == "cuda"
    x1, xb = _batch(x[:1], 1).float(), _batch(x, batch).float()
    if cuda:
        x1, xb = x1.contiguous(memory_format=torch.channels_last), xb.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, enabled=False):
        latency = _time(forward, x1, device, warmup=10 if cuda else 2, iters=50 if cuda else 5,
                        min_s=0.5 if cuda else 0.1)
        if cuda:  # one untimed pass first: cuDNN's autotuning (benchmark mode) and its workspaces stay outside
            with torch.no_grad():
                forward(xb)
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        per_batch = _time(forward, xb, device, warmup=3 if cuda else 1, iters=10 if cuda else 3,
                          min_s=0.5 if cuda else 0.1)
        if cuda:
            pass_peak = torch.cuda.max_memory_allocated(device) - before
            held = (resident_bytes(model) if model is not None else 0) + xb.untyped_storage().nbytes()
            peak = (held + pass_peak) / 2**20
        else:
            peak = float("nan")
    return {"infer_latency_ms": latency * 1000, "infer_throughput": batch / per_batch, "infer_peak_mem_mb": peak}
