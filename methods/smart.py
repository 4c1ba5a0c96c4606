"""SMART: FLOAT with two expert paths through binary masks on the last two stages (``stages=all``: every
stage). The clean path uses W * M_clean with ``bn_clean``, the adversarial path W * M_adv with ``bn_adv``;
the earlier, shared stages carry FLOAT's weight noise on the adversarial branch. Training as ``float``.

Masks (``--opt masks=``): ``complement`` (default: M_clean ~ Bernoulli(density), M_adv = 1 - M_clean; the
Bernoulli draw is made exact, round(density * n) ones per layer), ``overlap`` (independent masks of
densities ``density`` and ``adv_density``), ``magnitude`` (the ``density`` largest |W| at initialisation
form M_clean, the rest M_adv).
Evaluation, lambda in 0, 0.1, ..., 1: lambda < 0.1 is the clean path; otherwise (``mix=noise``, default)
the adversarial path with noise alpha * lambda * eta on the shared layers, or (``mix=paths``) the logits
(1 - lambda) * clean path + lambda * adversarial path (noise at lambda = 1), attacked as one model.

``sparse=on`` trains the shared stages sparse as FLOATS does: each of their convolutions gets one random mask
at ``sparse_density`` (default 0.5), W <- W * M after every optimiser step, the noise masked too, and after
every epoch FLOATS's prune and regrow (``sparse_prune_rate``, ``sparse_redistribution``: FLOATS's
``prune_rate`` and ``redistribution``) over those masks. The two paths' masks stay as drawn, and are the same
as with ``sparse=off`` at the same seed. With the default masks a lambda's forward then uses half of every
convolution (``mix=paths`` between the ends runs both paths: all of the masked ones).
"""
from contextlib import contextmanager

import torch

from harness.conditioned import ConditionedLayers
from harness.errors import LambenchError
from harness.sparse import apply_masks, epoch_prune, masked_convs, prune_rate_at, random_mask, top_mask

from .base import eval_mode, register
from .float import CLEAN_BELOW, FLOAT


@register("smart")
class SMART(FLOAT):
    options = {"masks": ("complement", "overlap", "magnitude"), "density": (0.5, float),
               "adv_density": (0.5, float), "stages": ("last2", "all"), "mix": ("noise", "paths"),
               "sparse": ("off", "on"), "sparse_density": (0.5, float), "sparse_prune_rate": (0.5, float),
               "sparse_redistribution": ("momentum", "none")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not (0 < self.opts["density"] < 1 and 0 < self.opts["adv_density"] <= 1):
            raise LambenchError("smart: --opt density must be in (0, 1) and adv_density in (0, 1]")
        self.sparse = self.opts["sparse"] == "on"
        if self.sparse and self.opts["stages"] == "all":
            raise LambenchError("smart: --opt sparse=on sparsifies the shared stages, and stages=all leaves none; "
                                "use stages=last2")
        if not 0 < self.opts["sparse_density"] <= 1 or not 0 <= self.opts["sparse_prune_rate"] < 1:
            raise LambenchError("smart: --opt sparse_density must be in (0, 1] and sparse_prune_rate in [0, 1), "
                                "e.g. --opt sparse_density=0.5 --opt sparse_prune_rate=0.5")

    def layers(self):
        self.factory = ConditionedLayers(noisy=True, mask_paths=("clean", "adv"), noisy_masked=False,
                                         mask_last_stages=2 if self.opts["stages"] == "last2" else None,
                                         shared_mask=self.sparse)
        return self.factory

    def build_model(self, arch, info):
        model = super().build_model(arch, info)
        d, kind = self.opts["density"], self.opts["masks"]
        convs = masked_convs(model)
        for conv in [c for c in convs if len(c.paths) == 2]:  # first, so sparse=on draws the same ones
            w = conv.weight.detach()
            clean = top_mask(w.abs(), round(d * w.numel())) if kind == "magnitude" else random_mask(w, d)
            adv = random_mask(w, self.opts["adv_density"]) if kind == "overlap" else 1 - clean
            conv.mask_clean.copy_(clean)
            conv.mask_adv.copy_(adv)
        for conv in [c for c in convs if c.paths == ("",)]:  # the shared convolutions of sparse=on
            conv.mask.copy_(random_mask(conv.weight, self.opts["sparse_density"]))
        apply_masks(model)
        return model

    def after_step(self, model, optimizer):
        if self.sparse:
            apply_masks(model)

    def end_epoch(self, model, epoch, first_batch, optimizer=None):
        if not self.sparse:
            return {}
        rate = prune_rate_at(self.opts["sparse_prune_rate"], epoch, self.cfg.epochs)
        return epoch_prune(model, optimizer, rate, self.opts["sparse_redistribution"] == "momentum")

    def is_random(self, lam):
        has_noise = self.opts["stages"] == "last2"
        return has_noise and lam >= CLEAN_BELOW

    @contextmanager
    def configure(self, model, lam):
        if self.opts["mix"] == "noise" or lam < CLEAN_BELOW or lam == 1:
            with super().configure(model, lam) as forward:
                yield forward
            return
        cond = self.factory.cond

        def mixed(x):
            cond.set(clean=True)
            clean = model(x)
            cond.set(clean=False, noise=1.0)
            return torch.lerp(clean, model(x), lam)

        with eval_mode(model):
            yield mixed
