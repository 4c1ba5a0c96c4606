"""PGD-AT (Madry et al., 2018): one dedicated model per training lambda.

loss = (1 - lam) * CE(clean) + lam * CE(adv); PGD-7, eps 8/255, step 2/255 (eps/4), random start.
lam = 0 is standard training (no attack is crafted): the undefended reference.
"""
import torch.nn.functional as F

from .base import Method, register


@register("pgd_at")
class PGDAT(Method):
    defaults = {"train_attack": "pgd7"}
    train_lambdas = (1.0,)

    def train_step(self, model, x, y):
        lam = 1.0 if self.train_lambda is None else self.train_lambda
        if lam == 0:
            logits = model(x)
            return F.cross_entropy(logits, y), logits, y
        x_adv = self.craft(model, model, x, y)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, y)
        if lam < 1:  # clean and adversarial batches go through separately, so BN statistics are not mixed
            loss = (1 - lam) * F.cross_entropy(model(x), y) + lam * loss
        return loss, logits, y
