"""Fast-AT (Wong et al., 2020): FGSM with random init, cyclic learning rate, early stop on catastrophic overfitting.

Defaults follow the paper: alpha = 1.25 eps (10/255 at 8/255), cyclic lr peaking at 0.2, 15 epochs.
Guard: after each epoch, PGD-5 on that epoch's first batch; if robust accuracy drops by more than 20 points
from the previous epoch's, training stops and the previous epoch's weights are kept.
"""
import copy

import torch
import torch.nn.functional as F

from harness import distributed
from harness.attacks import parse_attack

from .base import Method, eval_mode, register

GUARD_ATTACK = parse_attack("pgd5")
GUARD_DROP = 0.20


@register("fast_at")
class FastAT(Method):
    defaults = {"train_attack": "fgsm_rs", "schedule": "cyclic", "lr": 0.2, "epochs": 15}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.prev_acc: float | None = None
        self.snapshot = None

    def train_step(self, model, x, y):
        x_adv = self.craft(model, model, x, y)
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits, y

    def begin_epoch(self, model, epoch):
        self.snapshot = copy.deepcopy(model.state_dict())  # the previous epoch's weights

    def end_epoch(self, model, epoch, first_batch, optimizer=None):
        x, y = first_batch
        with eval_mode(model):
            x_adv = GUARD_ATTACK(model, x, y, self.eps)
            with torch.no_grad():  # the global first batch: every process's share of it (all run this)
                correct = (model(x_adv).argmax(1) == y).sum().float()
        hits, seen = distributed.all_sum(torch.stack([correct, correct.new_tensor(float(len(y)))])).tolist()
        acc = hits / seen
        out = {"guard_pgd5_acc": acc}
        if self.prev_acc is not None and self.prev_acc - acc > GUARD_DROP:
            model.load_state_dict(self.snapshot)
            out["stop"] = True
            out["note"] = (f"catastrophic overfitting: PGD-5 accuracy on the first batch fell from "
                           f"{self.prev_acc:.3f} to {acc:.3f} in epoch {epoch + 1}; stopped with the weights of epoch {epoch}")
        else:
            self.prev_acc = acc
        return out

    def state_dict(self):
        return {"prev_acc": self.prev_acc}

    def load_state_dict(self, state):
        self.prev_acc = state.get("prev_acc")
