"""One job across several processes (``torchrun --nproc-per-node N run_all.py ...``, or a Slurm job with
several tasks): the process group, data sharding, synchronised batch norm, the DDP-wrapped training step,
state broadcast from rank 0 and gathered evaluation. With one process every function here is a no-op, so
the single-process path is unchanged.

- Process group: joined when ``WORLD_SIZE`` > 1 in the environment (torchrun sets RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR/PORT); ``nccl`` on CUDA with device ``cuda:LOCAL_RANK``, ``gloo`` on CPU.
- Data: every rank holds an equal share of a seeded permutation of the training set (the remainder, fewer
  than N examples, is left out) and batches of ``batch_size / N`` from it; the test set is held whole and
  each rank evaluates a contiguous slice, gathered in order (``split`` / ``gather``).
- Batch norm: every ``BatchNorm2d`` becomes synchronised (the statistics of the global batch), each one
  separately, so dual BN's ``bn_clean`` and ``bn_adv`` keep their statistics apart. CUDA uses
  ``nn.SyncBatchNorm``; on CPU, where ``nn.SyncBatchNorm`` refuses to run, ``AllReduceBatchNorm`` does the
  same with differentiable all-reduces. State-dict keys are unchanged, so checkpoints move between world sizes.
- Training step: the method's whole ``train_step`` runs inside one DDP forward (``_Step``), so methods keep
  calling the bare model (several forward passes, attacks crafted in eval mode with input gradients) and DDP
  sees one forward and one backward per iteration; ``find_unused_parameters`` lets a step leave parameters
  unused (e.g. FLOAT's noise scales in a clean pass). Gradients are averaged across ranks.
- Rank 0 decides and writes: after every ``end_epoch`` (FLOATS prune/regrow, Fast-AT's rollback) its
  parameters, buffers (masks, BN statistics) and momentum are broadcast to the others.
"""
from __future__ import annotations

import inspect
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from .errors import LambenchError

_BN_GROUP = None  # a separate gloo group for the CPU batch-norm all-reduces (kept apart from DDP's)


# --- the process group ---------------------------------------------------------------------------------------
def launched() -> bool:
    """Whether this process was started as one of several (torchrun, or a multi-task Slurm job)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init(device: str = "auto", timeout_min: float = 30.0) -> torch.device | None:
    """Join the process group if this process was launched as one of several; return its device
    (``cuda:LOCAL_RANK`` on CUDA), or None when running alone."""
    global _BN_GROUP
    if not launched():
        return None
    if active():
        return _device(device)
    dev = _device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(minutes=timeout_min),
                            **({"device_id": dev} if dev.type == "cuda" else {}))
    if dev.type != "cuda":
        _BN_GROUP = dist.new_group(backend="gloo")
    return dev


def _device(name: str) -> torch.device:
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LambenchError(f"--device {name} asked for, but CUDA is not available; use --device cpu")
        count = torch.cuda.device_count()
        if count == 1:  # each process was given its own GPU (CUDA_VISIBLE_DEVICES set per task)
            return torch.device("cuda", 0)
        if local >= count:
            raise LambenchError(f"local rank {local} has no GPU ({count} visible); start at most {count} "
                                f"processes per node")
        return torch.device("cuda", local)
    return torch.device(name)


def shutdown() -> None:
    global _BN_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _BN_GROUP = None


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum over ranks of ``t`` (a new tensor)."""
    t = t.clone()
    if active():
        dist.all_reduce(t)
    return t


# --- data ----------------------------------------------------------------------------------------------------
def shard_train(data, seed: int = 0):
    """This rank's equal share of a seeded permutation of the training set (the test set stays whole)."""
    if not active():
        return data
    n, w = len(data.x_train), world_size()
    per = n // w
    if per == 0:
        raise LambenchError(f"{n} training examples cannot be shared by {w} processes")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[rank() * per:(rank() + 1) * per]
    order = order.sort().values.to(data.x_train.device)
    return type(data)(data.info, data.x_train[order], data.y_train[order], data.x_test, data.y_test)


def per_rank_batch(batch_size: int, world: int | None = None) -> int:
    """Each of the ``world`` (this run's) processes' share of a batch; one that does not divide is an error."""
    w = world_size() if world is None else world
    if batch_size % w:
        raise LambenchError(f"--batch-size {batch_size} is not divisible by the {w} processes; pick a multiple of {w}")
    return batch_size // w


def split(n: int) -> slice:
    """This rank's contiguous slice of ``n`` examples (ceil(n / world) each; the last ones may be short)."""
    per = -(-n // world_size())
    return slice(min(n, rank() * per), min(n, (rank() + 1) * per))


def gather(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate every rank's ``split(n)`` part of a per-example tensor, in rank order."""
    if not active():
        return local
    per = -(-n // world_size())
    dtype = local.dtype
    buf = torch.zeros((per, *local.shape[1:]), dtype=torch.uint8 if dtype == torch.bool else dtype,
                      device=local.device)
    buf[:len(local)] = local
    parts = [torch.empty_like(buf) for _ in range(world_size())]
    dist.all_gather(parts, buf)
    return torch.cat(parts)[:n].to(dtype)


# --- batch norm ----------------------------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the backward pass sums the gradients over ranks too."""

    @staticmethod
    def forward(ctx, t, group):
        ctx.group = group
        t = t.clone()
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class AllReduceBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the global batch over all ranks, differentiable
    (the gradient flows through the reduction, as in ``nn.SyncBatchNorm``); eval mode is plain BN. The
    CPU/gloo counterpart of ``nn.SyncBatchNorm``, with the same running-statistics update. One all-reduce
    per call: each rank's count, count * mean and count * (var + mean^2) (its own, centred, statistics),
    combined in float64 so that E[x^2] - mean^2 loses nothing to cancellation."""

    def forward(self, x):
        if not (self.training and active()):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, c) + (1,) * (x.dim() - 2)
        x32 = x.float()
        n_local = x.numel() // c
        var_local, mean_local = torch.var_mean(x32, dims, correction=0)
        m, v = mean_local.double(), var_local.double()
        local = torch.cat([m * n_local, (v + m * m) * n_local, m.new_full((1,), float(n_local))])
        sums = _AllReduceSum.apply(local, _BN_GROUP)
        n = sums[-1]
        mean = sums[:c] / n
        var = (sums[c:2 * c] / n - mean * mean).clamp(min=0)
        y = (x32 - mean.float().view(shape)) * torch.rsqrt(var.float() + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.float(), f)
                self.running_var.lerp_((var * n / (n - 1).clamp(min=1)).float(), f)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Make every BatchNorm2d of ``model`` synchronised across ranks, each layer separately (in place)."""
    if not active():
        return model
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                new = AllReduceBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                         child.track_running_stats).to(device)
                new.load_state_dict(child.state_dict())
                new.train(child.training)
                setattr(parent, name, new)
    return model


# --- training ------------------------------------------------------------------------------------------------
class _Step(nn.Module):
    """The method's training step as one module forward, so DDP sees one forward per backward."""

    def __init__(self, method, model):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, x, y):
        return self.method.train_step(self.model, x, y)


def training_step(method, model: nn.Module, device: torch.device):
    """``step(x, y) -> (loss, logits, targets)``: the method's step, DDP-wrapped on several processes."""
    if not active():
        return lambda x, y: method.train_step(model, x, y)
    ddp = nn.parallel.DistributedDataParallel
    # buffers (BN statistics: synchronised; masks: broadcast after each end of epoch) are synced once, at
    # construction, not at every forward; the flag's name changed in torch 2.14
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                      else {"broadcast_buffers": False})
    return ddp(_Step(method, model), device_ids=[device.index] if device.type == "cuda" else None,
               find_unused_parameters=True,  # a step may leave parameters unused (noise scales, a BN branch)
               **no_buffer_sync)


def broadcast_state(model: nn.Module, optimizer=None) -> None:
    """Rank 0's parameters, buffers (masks, BN statistics) and optimiser momentum on every rank."""
    if not active():
        return
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(t.data, src=0)
        if optimizer is not None:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    buf = optimizer.state.get(p, {}).get("momentum_buffer")
                    if buf is not None:
                        dist.broadcast(buf, src=0)


def seed_rank(seed: int) -> None:
    """Give ranks other than 0 their own random stream (augmentation, attack starts, weight noise)."""
    if rank() > 0:
        torch.manual_seed(seed * 1_000_003 + rank())


def rng_states() -> list | None:
    """Every rank's CPU (and CUDA) generator state, on rank 0 (None with one process)."""
    if not active():
        return None
    mine = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mine["cuda"] = torch.cuda.get_rng_state()
    return gather_objects(mine)
