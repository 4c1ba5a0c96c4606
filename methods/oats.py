"""OATS (Wang et al., 2020): OAT on a slimmable network, dialled in lambda and in width.

The network runs at widths 0.5, 0.75 and 1.0 (``--opt widths=``, comma list): each width is the leading
slice of every convolution and of FiLM's MLP, with its own dual BN (harness/slimmable.py). Width sampling:
every batch trains every width, widest first, with the same per-sample lambdas (OAT's sampler), and the
loss is the sum of the widths' OAT losses, i.e. their gradients are accumulated before the one optimiser
step (the authors' code does the same, with one backward per width). Evaluation scores each width as its
own once-for-all model over OAT's lambda grid: its rows are named ``oats-w<width>`` (e.g. ``oats-w0.5``),
so each width is one line in the report, with its own MACs and parameters.
"""
from contextlib import contextmanager

from harness.errors import LambenchError

from .base import register
from .oat import OAT, sample_positions

WIDTHS = "0.5,0.75,1.0"


@register("oats")
class OATS(OAT):
    options = {**OAT.options, "widths": (WIDTHS, str)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            widths = sorted({float(w) for w in self.opts["widths"].split(",")}, reverse=True)
        except ValueError:
            widths = []
        if not widths or not all(0 < w <= 1 for w in widths):
            raise LambenchError(f"oats: --opt widths={self.opts['widths']} must list widths in (0, 1], e.g. {WIDTHS}")
        self.widths = tuple(widths)
        self.width = self.widths[0]

    def train_step(self, model, x, y):
        pos = sample_positions(len(x), x.device)
        total, out = 0.0, None
        for w in self.widths:  # widest first
            self.factory.cond.width = w
            loss, logits, _ = self.oat_loss(model, x, y, pos)
            total = total + loss
            out = out if out is not None else logits  # the full width's logits for the progress bar
        self.factory.cond.width = self.widths[0]
        return total, out, y

    def variants(self):
        return [f"w{w:g}" for w in self.widths]

    @contextmanager
    def variant(self, name):
        self.width = float(name[1:])
        try:
            yield
        finally:
            self.width = self.widths[0]

    @contextmanager
    def configure(self, model, lam):
        with super().configure(model, lam) as forward:
            self.factory.cond.width = self.width
            try:
                yield forward
            finally:
                self.factory.cond.width = self.widths[0]
