"""FLOATS: FLOAT trained sparse from the start (dual BN, noisy convolutions, one binary mask per convolution).

Random per-layer masks at density ``density`` (default 0.5; convolutions only, the classifier stays dense);
W <- W * M after every optimiser step; at the end of every epoch prune the smallest-magnitude fraction p of
each layer's non-zeros, p decaying linearly from ``prune_rate`` (0.5) after the first epoch to 0 after the
last, and regrow as many where the momentum is largest, shared across layers by mean momentum magnitude
(``redistribution=none``: each layer regrows what it lost). The weight noise is masked too (eta * M), so
the model is equally sparse at every lambda; ``mask_noise=off`` turns that off. See harness/sparse.py.
"""
from harness.conditioned import ConditionedLayers
from harness.errors import LambenchError
from harness.sparse import apply_masks, epoch_prune, masked_convs, prune_rate_at, random_mask

from .base import register
from .float import FLOAT


@register("floats")
class FLOATS(FLOAT):
    options = {"density": (0.5, float), "prune_rate": (0.5, float), "redistribution": ("momentum", "none"),
               "mask_noise": ("on", "off")}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0 < self.opts["density"] <= 1 or not 0 <= self.opts["prune_rate"] < 1:
            raise LambenchError("floats: --opt density must be in (0, 1] and prune_rate in [0, 1), "
                                "e.g. --opt density=0.5 --opt prune_rate=0.5")

    def layers(self):
        self.factory = ConditionedLayers(noisy=True, mask_paths=("",), mask_noise=self.opts["mask_noise"] == "on",
                                         dense_grad=True)
        return self.factory

    def build_model(self, arch, info):
        model = super().build_model(arch, info)
        for conv in masked_convs(model):
            conv.mask.copy_(random_mask(conv.weight, self.opts["density"]))
        apply_masks(model)
        return model

    def after_step(self, model, optimizer):
        apply_masks(model)

    def prune_rate_at(self, epoch: int) -> float:
        """p after epoch ``epoch`` (0-based): linear from prune_rate after the first epoch to 0 after the last."""
        return prune_rate_at(self.opts["prune_rate"], epoch, self.cfg.epochs)

    def end_epoch(self, model, epoch, first_batch, optimizer=None):
        rate = self.prune_rate_at(epoch)
        return epoch_prune(model, optimizer, rate, self.opts["redistribution"] == "momentum")
