"""FLOAT: dual BN and noisy convolutions, no FiLM (one extra scalar per convolution).

Training step: the first half of the batch is clean through ``bn_clean`` without noise; the second half
gives CE(clean, ``bn_adv``, no noise) and CE(adv, ``bn_adv``, noise at lambda = 1); loss =
0.5 * mean CE_clean over the whole batch + 0.5 * mean CE_adv over the second half. The attack is crafted in
eval mode on the noisy lambda = 1 model. Evaluation: lambda in 0, 0.1, ..., 1; lambda < 0.1 means ``bn_clean``
and no noise, otherwise ``bn_adv`` with noise alpha * lambda * eta.
"""
from contextlib import contextmanager

import torch.nn.functional as F

from harness.conditioned import ConditionedLayers

from .base import Method, eval_mode, register

CLEAN_BELOW = 0.1


@register("float")
class FLOAT(Method):
    defaults = {"train_attack": "pgd7"}
    train_lambdas = None
    once_for_all = True

    def layers(self):
        self.factory = ConditionedLayers(noisy=True)
        return self.factory

    def train_step(self, model, x, y):
        cond, h = self.factory.cond, len(x) // 2
        cond.set(clean=False, noise=1.0)
        x_adv = self.craft(model, model, x[h:], y[h:])
        cond.set(clean=False, n_clean=h)  # rows [:h] -> bn_clean, rows [h:] -> bn_adv, no noise
        logits_clean = model(x)
        cond.set(clean=False, noise=1.0)
        logits_adv = model(x_adv)
        loss = 0.5 * F.cross_entropy(logits_clean, y) + 0.5 * F.cross_entropy(logits_adv, y[h:])
        return loss, logits_adv, y[h:]

    def lambda_grid(self):
        return [i / 10 for i in range(11)]

    def is_random(self, lam):
        return lam >= CLEAN_BELOW

    @contextmanager
    def configure(self, model, lam):
        with eval_mode(model):
            clean = lam < CLEAN_BELOW
            self.factory.cond.set(clean=clean, noise=0.0 if clean else lam)
            yield model
