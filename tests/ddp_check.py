"""Run under ``torchrun --standalone --nproc-per-node 2 tests/ddp_check.py [RUN_ALL ARGS]`` (test_distributed.py does).

One DDP training step on 2 gloo processes, each with half of a 32-example batch, against the same step on
one process with the whole batch, on a FLOAT network (dual BN, noisy convolutions): the step makes three
forward passes (an FGSM attack crafted in eval mode with input gradients, a clean pass split across
``bn_clean``/``bn_adv``, an adversarial pass with the noise off so the noise scales go unused). Rank 0
prints one JSON line: the largest differences of gradients, updated weights and BN running statistics,
and whether masks broadcast from rank 0 arrived. With arguments, it then runs ``run_all.main(ARGS)`` in the
same processes, as ``torchrun run_all.py ARGS`` would (one launch instead of two).
"""
import copy
import json
import sys

import torch
import torch.nn.functional as F

from harness import distributed
from harness.config import TrainConfig
from harness.data import load_dataset
from methods.base import eval_mode
from methods.floats import FLOATS


class DeterministicFLOATS(FLOATS):
    """FLOATS's layers, a deterministic step (no random start, no noise)."""

    def train_step(self, model, x, y):
        cond, h = self.factory.cond, len(x) // 2
        cond.set(clean=False)
        with eval_mode(model):
            delta = torch.zeros_like(x[h:], requires_grad=True)
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x[h:] + delta), y[h:]), delta)
        x_adv = (x[h:] + self.eps * grad.sign()).clamp(0, 1).detach()
        cond.set(clean=False, n_clean=h)
        logits_clean = model(x)
        cond.set(clean=False)
        logits_adv = model(x_adv)
        loss = 0.5 * F.cross_entropy(logits_clean, y) + 0.5 * F.cross_entropy(logits_adv, y[h:])
        return loss, logits_adv, y[h:]


def main():
    distributed.init("cpu")
    rank, world = distributed.rank(), distributed.world_size()
    data = load_dataset("digits")
    x, y = data.x_train[:32].float() / 255, data.y_train[:32]
    torch.manual_seed(0)
    method = DeterministicFLOATS(TrainConfig(), 0.1)
    ref = method.build_model("small_cnn", data.info)
    model = copy.deepcopy(ref)
    # deepcopy duplicated the Condition: point the copy's layers at the method's
    cond = next(m.cond for m in ref.modules() if hasattr(m, "cond"))
    for m in model.modules():
        if hasattr(m, "cond"):
            m.cond = cond
    method.factory.cond = cond

    distributed.sync_batchnorm(model, torch.device("cpu"))
    step = distributed.training_step(method, model, torch.device("cpu"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    per = len(x) // world
    xs, ys = x[rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
    model.train()
    loss, _, _ = step(xs, ys)
    opt.zero_grad()
    loss.backward()
    grads = {n: p.grad.clone() if p.grad is not None else None for n, p in model.named_parameters()}
    opt.step()

    # the same step on one process: the global batch arranged so that the clean rows of every rank come
    # first (the 1-process run routes its first half to bn_clean)
    half = per // 2
    order = [i for r in range(world) for i in range(r * per, r * per + half)] + \
            [i for r in range(world) for i in range(r * per + half, (r + 1) * per)]
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    ref.train()
    ref_loss, _, _ = method.train_step(ref, x[order], y[order])
    ref_opt.zero_grad()
    ref_loss.backward()
    ref_grads = {n: p.grad.clone() if p.grad is not None else None for n, p in ref.named_parameters()}
    ref_opt.step()

    def diff(a, b):
        if a is None or b is None:
            return 0.0 if (a is None or not a.any()) and (b is None or not b.any()) else float("inf")
        return (a - b).abs().max().item()

    grad_diff = max(diff(grads[n], ref_grads[n]) for n in ref_grads)
    weights = dict(model.named_parameters())
    weight_diff = max(diff(weights[n].detach(), p.detach()) for n, p in ref.named_parameters())
    stats = {n: b for n, b in model.named_buffers() if "running" in n}
    stats_diff = max(diff(stats[n], b) for n, b in ref.named_buffers() if "running" in n)
    clean_adv_apart = max(diff(stats[n], stats[n.replace("bn_clean", "bn_adv")]) for n in stats if "bn_clean" in n)
    unused = [n for n, g in grads.items() if g is None or not g.any()]

    # masks: rank 1 scrambles its masks, a broadcast from rank 0 restores them
    masks = [m.mask for m in model.modules() if hasattr(m, "paths") and m.paths]
    before = [mk.clone() for mk in masks]
    if rank == 1:
        for mk in masks:
            mk.copy_(torch.bernoulli(torch.full_like(mk, 0.5)))
    distributed.broadcast_state(model, opt)
    masks_equal = all(torch.equal(a, b) for a, b in zip(masks, before))
    gathered = distributed.all_sum(torch.tensor([float(masks_equal)]))
    mean_loss = distributed.all_sum(loss.detach()).item() / world
    if rank == 0:
        print(json.dumps({"world": world, "loss": mean_loss, "ref_loss": ref_loss.item(), "grad_diff": grad_diff,
                          "weight_diff": weight_diff, "bn_stats_diff": stats_diff,
                          "clean_vs_adv_stats": clean_adv_apart, "unused_params": unused,
                          "masks_equal_on_ranks": int(gathered.item())}), flush=True)


if __name__ == "__main__":
    main()
    code = 0
    if len(sys.argv) > 1:
        import run_all
        code = run_all.main(sys.argv[1:])
    distributed.shutdown()
    sys.exit(code)
