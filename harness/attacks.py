"""L-inf attacks as plain functions on a ``forward(x) -> logits`` callable (inputs in [0, 1]).

They never touch the model's mode (the caller configures the model and puts it in eval mode, see
``methods.base.Method.configure``) and never leave gradients on parameters: gradients are taken with
``torch.autograd.grad`` with respect to the perturbation only. Every returned input satisfies
``|x_adv - x| <= eps`` and ``0 <= x_adv <= 1``.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from .errors import LambenchError

Forward = Callable[[torch.Tensor], torch.Tensor]


@contextmanager
def frozen(params: Iterable[torch.nn.Parameter]):
    """``params`` stop requiring gradients for the duration, then get their own flags back. An attack
    differentiates with respect to its input only: eager autograd computes just that anyway, but a
    ``torch.compile``d forward's backward returns every trainable input's gradient (on a 2-core CPU a compiled
    PGD step on ResNet-18 took 1.8x as long with trainable weights), and AutoAttack's FAB calls ``backward``,
    which would compute and leave gradients on the weights."""
    flags = [(p, p.requires_grad) for p in params]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _project(x, delta, eps):
    """Clip ``delta`` into the eps-ball and keep ``x + delta`` inside [0, 1]."""
    delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(0, 1) - x


def _random_delta(x, eps, generator=None):
    u = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    return _project(x, (2 * u - 1) * eps, eps)


def _loss_and_grad(forward, x, delta, y):
    delta = delta.detach().requires_grad_(True)
    logits = forward(x + delta)
    loss = F.cross_entropy(logits.float(), y, reduction="none")
    (grad,) = torch.autograd.grad(loss.sum(), delta)
    return loss.detach(), logits.detach(), grad


def _loss_and_grad_eot(forward, x, delta, y, eot):
    """Expectation over transformation: the gradient averaged over ``eot`` forward passes (fresh noise
    each for random models); loss and logits are those of the last pass."""
    grad = torch.zeros_like(x)
    for _ in range(eot):
        loss, logits, g = _loss_and_grad(forward, x, delta, y)
        grad += g
    return loss, logits, grad / eot


def fgsm_rs(forward: Forward, x, y, eps: float, alpha: float | None = None, generator=None):
    """FGSM with random start (Wong et al., 2020): delta0 ~ U[-eps, eps], one signed step of ``alpha``
    (default 1.25 eps), projected back into the eps-ball."""
    alpha = 1.25 * eps if alpha is None else alpha
    delta = _random_delta(x, eps, generator)
    _, _, grad = _loss_and_grad(forward, x, delta, y)
    return (x + _project(x, delta + alpha * grad.sign(), eps)).detach()


def _better(loss, wrong, best_loss, best_wrong):
    """An iterate beats the best so far if it fools the model where the best did not, or, with the same
    outcome, has a higher loss."""
    return (wrong & ~best_wrong) | ((wrong == best_wrong) & (loss > best_loss))


def pgd(forward: Forward, x, y, eps: float, alpha: float, steps: int, restarts: int = 1,
        random_start: bool = True, keep_best: bool = True, generator=None, eot: int = 1):
    """PGD-``steps`` with ``restarts`` random restarts.

    ``keep_best=True`` (evaluation) returns, per example, the strongest iterate seen over all steps and
    restarts: one that is misclassified if any was, else the one of highest cross-entropy. So more steps
    from the same start never weaken the attack. ``keep_best=False`` (training) returns the last iterate of
    the last restart and costs no extra forward pass. ``eot > 1`` averages each step's gradient over
    that many forward passes (for models whose forward is random).
    """
    if steps < 1 or restarts < 1:
        raise ValueError(f"pgd needs steps >= 1 and restarts >= 1, got {steps} and {restarts}")
    best_x = x.detach().clone()
    best_loss = torch.full(y.shape, -float("inf"), device=x.device)
    best_wrong = torch.zeros(y.shape, dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        delta = _random_delta(x, eps, generator) if random_start else torch.zeros_like(x)
        for _ in range(steps):
            loss, logits, grad = (_loss_and_grad(forward, x, delta, y) if eot == 1
                                  else _loss_and_grad_eot(forward, x, delta, y, eot))
            if keep_best:
                best_x, best_loss, best_wrong = _merge(x + delta, loss, logits, y, best_x, best_loss, best_wrong)
            delta = _project(x, delta + alpha * grad.sign(), eps)
        if keep_best:
            with torch.no_grad():
                logits = forward(x + delta)
                loss = F.cross_entropy(logits.float(), y, reduction="none")
            best_x, best_loss, best_wrong = _merge(x + delta, loss, logits, y, best_x, best_loss, best_wrong)
        else:
            best_x = x + delta
    return best_x.detach()


def _merge(x_new, loss, logits, y, best_x, best_loss, best_wrong):
    wrong = logits.argmax(1) != y
    take = _better(loss, wrong, best_loss, best_wrong)
    best_x = torch.where(take.view(-1, *[1] * (x_new.dim() - 1)), x_new.detach(), best_x)
    return best_x, torch.where(take, loss, best_loss), torch.where(take, wrong, best_wrong)


@dataclass(frozen=True)
class AttackSpec:
    """A named attack: ``fgsm_rs``, ``pgdK`` or ``pgdKxR`` (K steps, R restarts); ``eot`` forward passes
    averaged per gradient (set directly, e.g. by the sanity checks)."""

    name: str
    kind: str
    steps: int = 1
    restarts: int = 1
    eot: int = 1

    def step_size(self, eps: float, step: float | None) -> float:
        if step is not None:
            return step
        if self.kind == "fgsm_rs":
            return 1.25 * eps
        return max(eps / 4, eps / self.steps)  # 2/255 at eps 8/255; enough steps to reach the boundary

    def __call__(self, forward: Forward, x, y, eps: float, step: float | None = None, keep_best: bool = True):
        alpha = self.step_size(eps, step)
        if self.kind == "fgsm_rs":
            return fgsm_rs(forward, x, y, eps, alpha)
        if self.eot > 1:
            return pgd(forward, x, y, eps, alpha, self.steps, self.restarts, keep_best=keep_best, eot=self.eot)
        return pgd(forward, x, y, eps, alpha, self.steps, self.restarts, keep_best=keep_best)


def parse_attack(spec: str) -> AttackSpec:
    if spec == "fgsm_rs":
        return AttackSpec(spec, "fgsm_rs")
    m = re.fullmatch(r"pgd(\d+)(?:x(\d+))?", spec)
    if not m or int(m.group(1)) < 1 or int(m.group(2) or 1) < 1:
        raise LambenchError(f"unknown attack {spec!r}; use fgsm_rs, pgdK (e.g. pgd7, pgd20) or pgdKxR (e.g. pgd50x10)")
    return AttackSpec(spec, "pgd", int(m.group(1)), int(m.group(2) or 1))
