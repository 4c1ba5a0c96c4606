"""Training-throughput benchmark: images/s of the real training loop (not a timed test).

  python -m harness.bench --methods pgd_at --arch resnet34 --batch-size 128          # PGD-7, the issue's setting
  python -m harness.bench --methods pgd_at,oat,float --compile reduce-overhead       # with CUDA graphs
  python -m harness.bench --methods oat,float --compile cudagraphs                    # CUDA graphs, no inductor
  python -m harness.bench --methods pgd_at,fast_at --arch preact_resnet18 --batch-size 512
  python -m harness.bench --methods pgd_at,oat,float --ops                            # kernels per step (any device)
  python -m harness.bench --methods pgd_at,oat,float --flops                          # FLOPs per image (any device)
  python -m harness.bench --compile default --backend inductor --device cpu           # compiled, on a CPU

Runs one warm-up epoch and then times whole epochs of ``harness.train``'s loop on CIFAR-shaped uint8 data kept
on the device (content does not change the speed of a dense network). Prints device, precision, torch version,
images/s and CUDA peak memory, so every figure names its hardware.

``--ops`` instead counts the operators one training step (forward, attack and backward) dispatches, views
left out: on a GPU each launches at least one kernel, and at small batches the step is bound by those
launches, so the count is a proxy for speed that any machine, a CPU one included, can measure.
``--flops`` counts the arithmetic instead (FLOPs per training image, elementwise work left out): the guide
where the device is busy computing, at large batches or with CUDA graphs.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import math
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from methods import get_method

from .banks import weights_fixed
from .config import COMPILE_MODES, TrainConfig
from .data import DatasetInfo, DeviceLoader
from .errors import LambenchError
from .device import device_name, resolve_device
from .train import _epoch, compiled, optimizer_for, precision_of

#: operators that only make views or allocate (no kernel of their own), left out of ``--ops``
VIEWS = {"alias", "as_strided", "chunk", "detach", "empty", "empty_like", "empty_strided", "expand",
         "new_empty_strided", "permute", "select", "slice", "split", "split_with_sizes", "squeeze", "t",
         "transpose", "unbind", "unsqueeze", "view", "_reshape_alias", "_unsafe_view", "lift_fresh"}


def synthetic(size: int) -> DatasetInfo:
    """CIFAR-shaped data: 10 classes, 3 channels, ``size`` pixels square, eps 8/255, pad 4 and flips."""
    return DatasetInfo("synthetic", 10, 3, size, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), 8 / 255, 4, True)


class OpCounter(TorchDispatchMode):
    """Counts the operators dispatched while active, by name (``aten.`` dropped), views left out."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in VIEWS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def _method(method_name: str, info: DatasetInfo, attack: str | None, **fields):
    """``method_name`` configured by its defaults, then ``fields``, then ``attack`` (the training attack, if
    given)."""
    cls = get_method(method_name)
    fields = {**cls.defaults, **fields} | ({"train_attack": attack} if attack else {})
    return cls(TrainConfig(**fields), info.eps)


def _one_step(method_name: str, arch: str, device: torch.device, batch_size: int, size: int, mode,
              attack: str | None = None):
    """Run one training step of ``method_name`` (forward, attack and backward, after one untimed step)
    inside the dispatch mode ``mode`` and return the mode. ``attack``: the training attack, if not the
    method's."""
    torch.manual_seed(0)
    info = synthetic(size)
    method = _method(method_name, info, attack, batch_size=batch_size)
    model = method.build_model(arch, info).to(device).train()
    x, y = torch.rand(batch_size, 3, size, size, device=device), torch.randint(0, 10, (batch_size,), device=device)
    for counting in (False, True):
        model.zero_grad(set_to_none=True)  # as the loop does before every backward
        with mode if counting else contextlib.nullcontext():
            with weights_fixed(model):  # as the training loop runs a step
                loss, _, _ = method.train_step(model, x, y)
            loss.backward()
    return mode


def count_ops(method_name: str, arch: str, device: torch.device, batch_size: int = 8, size: int = 32,
              attack: str | None = None) -> collections.Counter:
    """Operators dispatched by one training step of ``method_name``, views left out. The count does not
    depend on the batch size."""
    return _one_step(method_name, arch, device, batch_size, size, OpCounter(), attack).counts


def flops_per_image(method_name: str, arch: str, device: torch.device, batch_size: int = 128, size: int = 32,
                    attack: str | None = None) -> float:
    """Floating-point operations of one training step of ``method_name`` per training image, counted by
    ``torch.utils.flop_counter``: convolutions and matrix products, forward and backward, as dispatched (the
    attack's backward passes compute no weight gradients); elementwise work (normalisation, FiLM's
    multiply-add, the weight noise) is not counted. Where a device is bound by arithmetic rather than by
    kernel launches, two methods' speeds relate about as the inverse of their counts."""
    mode = _one_step(method_name, arch, device, batch_size, size, FlopCounterMode(display=False), attack)
    return mode.get_total_flops() / batch_size


def bench(method_name: str, arch: str, batch_size: int, iters: int, device: torch.device, attack: str | None,
          precision: str = "auto", size: int = 32, seed: int = 0, compile: str = "off",
          backend: str | None = None) -> dict:
    torch.manual_seed(seed)
    info = synthetic(size)
    n = batch_size * iters
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    method = _method(method_name, info, attack, batch_size=batch_size, epochs=2, precision=precision,
                     log_every=10**9, compile=compile)
    cfg = method.cfg
    model = method.build_model(arch, info).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    loader = DeviceLoader(x, y, batch_size, train=True, pad=4, flip=True)
    opt, sched = optimizer_for(model, cfg, cfg.epochs * len(loader))
    prec = precision_of(cfg, device)
    step = lambda x, y: method.train_step(model, x, y)  # noqa: E731  (one process: no DDP wrapper)
    with compiled(model, compile, device, backend):
        # warm-up epoch: cudnn autotuning, the allocator, and with --compile the compilation and graph capture
        warm = _epoch(method, model, step, loader, opt, sched, cfg, device, prec, 0, False)
        rec = _epoch(method, model, step, loader, opt, sched, cfg, device, prec, 1, False)
    # CUDA graphs allocate their memory while being captured (in the warm-up epoch), so the peak is the larger
    peak = max(warm["peak_mem_mb"], rec["peak_mem_mb"])
    return {"method": method_name, "arch": arch, "batch_size": batch_size, "train_attack": cfg.train_attack,
            "compile": compile, "images_per_s": rec["images_per_s"], "seconds": rec["seconds"], "iters": iters,
            "peak_mem_mb": peak, "precision": prec, "torch": torch.__version__,
            "device": device_name(device)}


def _mib(mb: float) -> str:
    return "memory not measured (CUDA only)" if math.isnan(mb) else f"{mb:.0f} MiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="pgd_at", help="comma list (default pgd_at)")
    p.add_argument("--arch", default="resnet34")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--iters", type=int, default=50, help="timed iterations (one extra epoch of warm-up)")
    p.add_argument("--attack", help="training attack (default: the method's, pgd7 for pgd_at)")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--compile", default="off", choices=COMPILE_MODES,
                   help="CUDA (any device with --backend): torch.compile the forward (reduce-overhead: inductor "
                        "with CUDA graphs; cudagraphs: CUDA graphs of the eager kernels, traced in seconds); "
                        "default off")
    p.add_argument("--backend", help="with --compile: the torch.compile backend (e.g. inductor, aot_eager), which "
                                     "then compiles on any device, the CPU included")
    p.add_argument("--device", default="auto")
    p.add_argument("--ops", action="store_true", help="count the operators of one training step instead")
    p.add_argument("--flops", action="store_true",
                   help="count the FLOPs of one training step per image instead (at --batch-size)")
    args = p.parse_args(argv)
    if args.backend and args.compile in ("off", "cudagraphs"):
        p.error("--backend needs --compile default or reduce-overhead (cudagraphs is a backend of its own)")
    if args.ops and args.flops:
        p.error("--ops and --flops count different things; give one")
    if (args.ops or args.flops) and (args.compile != "off" or args.precision != "auto"):
        p.error("--ops and --flops count the plain fp32 step; leave out --compile and --precision")
    try:
        device = resolve_device(args.device)
        torch.backends.cudnn.benchmark = True
        for name in args.methods.split(","):
            if args.ops:
                counts = count_ops(name, args.arch, device, attack=args.attack)
                top = ", ".join(f"{op} {n}" for op, n in counts.most_common(8))
                print(f"{name:8s} {args.arch}: {sum(counts.values())} operators per training step ({top}, ...)")
                continue
            if args.flops:
                f = flops_per_image(name, args.arch, device, args.batch_size, attack=args.attack)
                print(f"{name:8s} {args.arch} bs={args.batch_size}: {f / 1e9:.2f} GFLOP per training image "
                      f"(forward, attack and backward; torch.utils.flop_counter)")
                continue
            r = bench(name, args.arch, args.batch_size, args.iters, device, args.attack, args.precision,
                      compile=args.compile, backend=args.backend)
            how = f"{r['compile']}/{args.backend}" if args.backend else r["compile"]
            print(f"{r['method']:8s} {r['arch']} bs={r['batch_size']} {r['train_attack']} compile={how}: "
                  f"{r['images_per_s']:.1f} images/s ({r['iters']} iters, {r['seconds']:.2f}s) "
                  f"peak {_mib(r['peak_mem_mb'])} | {r['device']}, {r['precision']}, torch {r['torch']}")
    except LambenchError as exc:
        print(f"lambench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
