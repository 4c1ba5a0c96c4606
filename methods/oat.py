"""OAT (Wang et al., 2020): FiLM after every BN plus dual BN, conditioned on a lambda encoding.

Training lambdas {0, 0.1, 0.2, 0.3, 0.4, 1}: per batch ceil(B/6) samples get lambda = 0 (placed first,
routed to ``bn_clean``), the rest draw uniformly from the non-zero values. Loss = mean over samples of
(1 - lam_i) CE(clean_i) + lam_i CE(adv_i), the adversarial term only where lam_i > 0; the attack (PGD-7, step
1.25 eps / 7, i.e. (10/255)/7 at 8/255) runs in eval mode through ``bn_adv`` at each sample's own lambda.
Encodings (``--opt encoding=``): rand (rows of a seeded 128x128 random orthogonal matrix, default), onehot,
dct (rows of the 128-point DCT-II basis), scalar (lambda itself: any lambda in [0, 1] at test time).
"""
import dataclasses
import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from harness import distributed
from harness.conditioned import ConditionedLayers
from harness.errors import LambenchError

from .base import Method, eval_mode, register

LAMBDAS = (0.0, 0.1, 0.2, 0.3, 0.4, 1.0)
DIM = 128
ENCODING_SEED = 0


def encoding_table(kind: str) -> torch.Tensor | None:
    """Rows indexed by the lambda's position in LAMBDAS (None for ``scalar``)."""
    if kind == "rand":
        g = torch.Generator().manual_seed(ENCODING_SEED)
        q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=g))
        return q[: len(LAMBDAS)].contiguous()
    if kind == "onehot":
        return torch.eye(len(LAMBDAS))
    if kind == "dct":
        n = torch.arange(DIM, dtype=torch.float32)
        k = torch.arange(len(LAMBDAS), dtype=torch.float32)[:, None]
        rows = torch.cos(math.pi / DIM * (n + 0.5) * k)
        return rows / rows.norm(dim=1, keepdim=True)
    return None


def zeros_in(batch: int) -> int:
    """How many samples of this process's ``batch`` get lambda = 0: ceil(B/6) of the global batch B (all
    processes' batches, ``batch`` each), shared out over the processes, the first ones taking one more where
    they do not divide; on one process, ceil(batch/6). At least one each, so that every process runs both BN
    branches, whose statistics are synchronised (one without would leave the others waiting): more than
    ceil(B/6) in all only where the processes' batches are so small that ceil(B/6) < their number."""
    world = distributed.world_size()
    total = math.ceil(batch * world / 6)
    return max(1, total // world + (distributed.rank() < total % world))


def sample_positions(batch: int, device=None, generator=None) -> torch.Tensor:
    """Per sample, the position of its lambda in LAMBDAS: ``zeros_in(batch)`` zeros (lambda = 0) first,
    then positions drawn uniformly from the non-zero lambdas. No host synchronisation."""
    n0 = zeros_in(batch)
    idx = torch.randint(len(LAMBDAS) - 1, (batch - n0,), device=device, generator=generator) + 1
    return torch.cat([torch.zeros(n0, dtype=idx.dtype, device=device), idx])


def sample_lambdas(batch: int, device=None, generator=None) -> torch.Tensor:
    """The lambdas themselves (``sample_positions`` looked up in LAMBDAS)."""
    return torch.tensor(LAMBDAS, device=device)[sample_positions(batch, device, generator)]


@register("oat")
class OAT(Method):
    defaults = {"train_attack": "pgd7"}
    options = {"encoding": ("rand", "onehot", "dct", "scalar")}
    train_lambdas = None
    once_for_all = True
    widths: tuple[float, ...] = ()  # slimmable widths (OATS); none: one plain network

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        step = self.cfg.attack_step or 1.25 * self.eps / max(1, self.attack.steps)  # (10/255)/7 at 8/255
        self.cfg = dataclasses.replace(self.cfg, attack_step=step)
        self.table = encoding_table(self.opts["encoding"])
        self._on_device: dict = {}  # (LAMBDAS, table) per device, so a training step copies nothing to it

    def layers(self):
        d = 1 if self.table is None else self.table.shape[1]
        self.factory = ConditionedLayers(film_dim=d, widths=self.widths)
        return self.factory

    def check_lambda(self, lam):
        super().check_lambda(lam)
        if self.table is not None and min(abs(lam - v) for v in LAMBDAS) > 1e-6:
            raise LambenchError(f"{self.name} with encoding {self.opts['encoding']} only knows lambda in {LAMBDAS}, "
                                f"not {lam}; use --opt encoding=scalar for other values")
        return lam

    def encode(self, lams: torch.Tensor) -> torch.Tensor:
        if self.table is None:
            return lams[:, None].float()
        for lam in lams.tolist():
            self.check_lambda(lam)
        grid = torch.tensor(LAMBDAS, device=lams.device)
        hit = (lams[:, None] - grid).abs() < 1e-6
        return self.table.to(lams.device)[hit.float().argmax(1)]

    def lookup(self, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(lambdas, encodings) of positions in LAMBDAS, from copies kept on ``pos``'s device."""
        if pos.device not in self._on_device:
            grid = torch.tensor(LAMBDAS, device=pos.device)
            table = None if self.table is None else self.table.to(pos.device)
            self._on_device[pos.device] = grid, table
        grid, table = self._on_device[pos.device]
        lam = grid[pos]
        return lam, lam[:, None] if table is None else table[pos]

    def train_step(self, model, x, y):
        return self.oat_loss(model, x, y, sample_positions(len(x), x.device))

    def oat_loss(self, model, x, y, pos):
        """``(loss, logits, y)`` of one batch at per-sample lambdas given by their positions ``pos`` in
        LAMBDAS, as ``sample_positions`` draws them (``zeros_in(len(x))`` zeros first)."""
        cond = self.factory.cond
        n0 = zeros_in(len(x))
        lam, enc = self.lookup(pos)
        loss = torch.zeros((), device=x.device)
        if n0 < len(x):
            cond.set(clean=False, enc=enc[n0:])
            x_adv = self.craft(model, model, x[n0:], y[n0:])
            ce_adv = F.cross_entropy(model(x_adv), y[n0:], reduction="none")
            loss = loss + (lam[n0:] * ce_adv).sum()
        cond.set(clean=False, enc=enc, n_clean=n0)  # lambda = 0 rows -> bn_clean, the rest -> bn_adv
        logits = model(x)
        loss = loss + ((1 - lam) * F.cross_entropy(logits, y, reduction="none")).sum()
        return loss / len(x), logits, y

    def lambda_grid(self):
        return list(LAMBDAS)

    @contextmanager
    def configure(self, model, lam):
        enc = self.encode(torch.tensor([float(lam)]))
        with eval_mode(model):
            self.factory.cond.set(clean=lam == 0, enc=enc.to(next(model.parameters()).device))
            yield model

    def state_dict(self):
        return {} if self.table is None else {"encoding": self.table}

    def load_state_dict(self, state):
        if "encoding" in state:
            self.table = state["encoding"]
            self._on_device.clear()
