"""The one training loop every method uses; the method supplies its training step.

SGD with momentum and weight decay; cosine, cyclic or multistep schedules stepped per iteration; bf16
autocast and channels_last on CUDA, fp32 on CPU; an atomic checkpoint at the end of every epoch, resumed
from automatically. The loop syncs with the host only every ``log_every`` iterations (progress bar, NaN check).

Under torchrun (see distributed.py) the same loop runs on every rank: batches of ``batch_size / N`` from the
rank's shard, batch norm synchronised, the step DDP-wrapped, the epoch's totals summed over ranks, rank 0's
end-of-epoch state (masks, rollback, stop) broadcast, and checkpoints and epochs.csv written by rank 0 only.
"""
from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import distributed
from .banks import weights_fixed
from .config import COMPILE_MODES, TrainConfig
from .data import Dataset, DeviceLoader
from .device import device_name
from .errors import CheckpointError, LambenchError, TrainingDiverged
from .store import load_checkpoint, save_checkpoint, write_csv


def lr_factor(schedule: str, total: int, warmup_frac: float = 0.4):
    """Learning-rate multiplier as a function of the iteration (LambdaLR, stepped every iteration)."""
    if schedule == "cosine":
        return lambda it: 0.5 * (1 + math.cos(math.pi * min(it, total) / total))
    if schedule == "cyclic":  # Fast-AT: linear 0 -> peak over warmup_frac of training, then linear -> 0
        peak = max(1, int(warmup_frac * total))
        return lambda it: it / peak if it < peak else max(0.0, (total - it) / max(1, total - peak))
    if schedule == "multistep":  # x0.1 at 50% and 75% (epochs 100 and 150 of 200, as the OAT/FLOAT papers)
        return lambda it: 0.1 ** ((it >= total // 2) + (it >= 3 * total // 4))
    raise LambenchError(f"unknown schedule {schedule!r}; choose cosine, cyclic or multistep")


def optimizer_for(model, cfg: TrainConfig, total_iters: int):
    """SGD with momentum and weight decay, and the schedule as a per-iteration LambdaLR."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg.schedule, total_iters, cfg.warmup_frac))


def precision_of(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.precision


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def compiled(model, mode: str, device: torch.device, backend: str | None = None):
    """While training, ``model``'s forward compiled by ``torch.compile`` (``reduce-overhead``: with CUDA graphs,
    which remove the kernel-launch overhead that bounds small batches; ``cudagraphs``: CUDA graphs of the eager
    kernels, without inductor's code generation, so it traces in seconds). CUDA only; on other devices, and for
    evaluation afterwards, the model runs its plain forward, so scores never depend on this setting.
    ``backend`` (tests: ``"eager"``; ``harness.bench --backend``) names the compiler (``mode`` applies to
    inductor only) and then compiles on any device."""
    if mode not in COMPILE_MODES:
        raise LambenchError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if mode == "off" or (device.type != "cuda" and backend is None):
        yield model
        return
    # dynamic=False: one static graph per batch shape. The conditioned methods run several shapes per step
    # (FLOAT: half and whole batches); by default the second shape would recompile the graph with a symbolic
    # batch size, which CUDA graphs re-record per shape anyway. On a 2-core CPU (inductor, ResNet-34) this
    # cut FLOAT's first-step compilation from 330 s to 267 s.
    if mode == "cudagraphs":  # torch.compile's cudagraphs backend: AOTAutograd's graphs replayed as CUDA graphs
        if backend not in (None, "cudagraphs"):
            raise LambenchError(f"compile mode cudagraphs is a backend of its own; leave out --backend {backend}")
        how = {"backend": "cudagraphs"}
    elif backend:  # the mode is inductor's
        how = {"backend": backend, **({"mode": None if mode == "default" else mode} if backend == "inductor" else {})}
    else:
        how = {"mode": None if mode == "default" else mode}
    model.forward = torch.compile(model.forward, dynamic=False, **how)
    # OATS compiles one set of graphs per width (nine at three widths); dynamo's default limit of eight per
    # function would silently run the rest uncompiled
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    try:
        with config.patch({limit: max(getattr(config, limit), 32)}):
            yield model
    finally:
        del model.forward  # the class's own forward again


def train(method, model, data: Dataset, cfg: TrainConfig, job_dir: Path, device: torch.device,
          progress: bool = True, log=print) -> list[dict]:
    """Train ``model`` in place with ``method``; resume from ``job_dir/checkpoint.pt`` if present.
    Returns the per-epoch history."""
    ckpt = Path(job_dir) / "checkpoint.pt"
    precision = precision_of(cfg, device)
    loader = DeviceLoader(data.x_train, data.y_train, distributed.per_rank_batch(cfg.batch_size), train=True,
                          pad=data.info.pad, flip=data.info.flip)
    if len(loader) == 0:
        raise LambenchError(f"batch size {cfg.batch_size} exceeds the {len(data.x_train) * distributed.world_size()} "
                            f"training examples; lower --batch-size")
    distributed.sync_batchnorm(model, device)  # before the optimiser: it swaps BN modules (same state keys)
    opt, sched = optimizer_for(model, cfg, cfg.epochs * len(loader))
    history, start = [], 0
    if ckpt.exists():
        state = load_checkpoint(ckpt, map_location=device)
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            method.load_state_dict(state["method"])
            _restore_rng(state["rng"], device)
            history, start = state["history"], state["epoch"]
        except torch.OutOfMemoryError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {ckpt} does not fit this job ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:120]}); delete it (rerunning the command then "
                                  f"retrains that job alone)") from None
        if state.get("finished"):
            return history
        log(f"resuming {job_dir.name} from epoch {start}/{cfg.epochs}")
    else:
        distributed.seed_rank(torch.initial_seed())
    distributed.broadcast_state(model, opt)  # every rank starts from rank 0's weights, masks and momentum
    step = distributed.training_step(method, model, device)
    progress = progress and distributed.is_main()

    with compiled(model, cfg.compile, device):
        for epoch in range(start, cfg.epochs):
            record = _epoch(method, model, step, loader, opt, sched, cfg, device, precision, epoch, progress)
            history.append(record)
            finished = bool(record.pop("stop", False)) or epoch + 1 == cfg.epochs
            if record.get("note"):
                log(f"{job_dir.name}: {record['note']}")
            rng = {"cpu": torch.get_rng_state()}
            if device.type == "cuda":
                rng["cuda"] = torch.cuda.get_rng_state(device)
            ranks = distributed.rng_states()
            if ranks is not None:
                rng["ranks"] = ranks
            if distributed.is_main():
                save_checkpoint(ckpt, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                       "scheduler": sched.state_dict(), "method": method.state_dict(), "rng": rng,
                                       "epoch": epoch + 1, "history": history, "finished": finished})
                write_csv(Path(job_dir) / "epochs.csv", pd.DataFrame(history))
            if finished:
                break
    return history


def _restore_rng(rng: dict, device: torch.device) -> None:
    """The generator states saved with the checkpoint: this rank's own when it was saved by as many ranks."""
    ranks = rng.get("ranks")
    mine = ranks[distributed.rank()] if ranks and len(ranks) == distributed.world_size() else rng
    # generator states are CPU byte tensors, whatever device the checkpoint was loaded onto
    torch.set_rng_state(mine["cpu"].cpu())
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(mine["cuda"].cpu(), device)
    if mine is rng and distributed.rank() > 0:  # saved with another number of ranks: derive a stream
        distributed.seed_rank(int(torch.randint(2**31, (1,))))


def _epoch(method, model, step, loader, opt, sched, cfg, device, precision, epoch, progress) -> dict:
    model.train()
    method.begin_epoch(model, epoch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen, scored, first_batch = 0, 0, None
    bar = tqdm(loader, desc=f"{method.name} epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not progress,
               dynamic_ncols=True)
    for i, (x, y) in enumerate(bar):
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        if first_batch is None:
            first_batch = (x, y)
        with autocast(precision, device), weights_fixed(model):  # the weights change at opt.step() only
            loss, logits, targets = step(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        method.after_step(model, opt)
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.detach().argmax(1) == targets).sum()
        seen += len(y)
        scored += len(targets)
        if (i + 1) % cfg.log_every == 0 or i + 1 == len(loader):
            totals = _totals(loss_sum, correct, seen, scored)  # the only host sync (summed over ranks)
            mean_loss = totals[0] / totals[2]
            if not math.isfinite(mean_loss):
                raise TrainingDiverged(f"{method.name}: loss became {mean_loss} in epoch {epoch + 1}; "
                                       f"lower --lr (now {cfg.lr})"
                                       + ("" if precision == "fp32" else " or use --precision fp32"))
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{totals[1] / totals[3]:.3f}",
                            img_s=f"{totals[2] / (time.perf_counter() - t0):.0f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    loss_total, correct_total, seen, scored = _totals(loss_sum, correct, seen, scored)
    record = {"epoch": epoch + 1, "loss": loss_total / seen, "train_acc": correct_total / scored,
              "lr": opt.param_groups[0]["lr"], "seconds": seconds, "images_per_s": seen / seconds,
              "peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan"),
              # a resumed run may train elsewhere, or on another number of processes
              "device": device_name(device, distributed.world_size()), "precision": precision}
    # every rank runs the method's end of epoch (its own state stays consistent); rank 0's outcome and model
    # state (FLOATS masks, Fast-AT's rollback and stop) are then everyone's
    record.update(distributed.broadcast_object(method.end_epoch(model, epoch, first_batch, opt)))
    distributed.broadcast_state(model, opt)
    return record


def _totals(loss_sum, correct, seen: int, scored: int) -> list[float]:
    """(loss sum, correct, seen, scored) over all ranks, as floats."""
    t = torch.stack([loss_sum.float(), correct.float(), torch.tensor(float(seen), device=loss_sum.device),
                     torch.tensor(float(scored), device=loss_sum.device)])
    return distributed.all_sum(t).tolist()
