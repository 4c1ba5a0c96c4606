"""Conditioned layers for the once-for-all methods, built by ``ConditionedLayers`` (a ``LayerFactory``).

All layers of one model read one shared ``Condition``, which the method sets before each forward pass:
which rows go through the clean BN, the per-sample lambda encoding for FiLM, the weight-noise scale, and
which mask path is active. Layers never set it themselves.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .banks import attach_banks, noisy_weights
from .layers import LayerFactory

ALL = 1 << 62  # "every row" for Condition.n_clean


@dataclass
class Condition:
    n_clean: int = 0                  # the first n_clean rows use bn_clean, the rest bn_adv (ALL: every row)
    enc: torch.Tensor | None = None   # FiLM input: [B, d] per sample, or [1, d] for the whole batch
    noise: float = 0.0                # weight-noise scale (FLOAT: lambda on the adversarial branch, else 0)
    path: str = "adv"                 # SMART: the mask path of a batch routed all one way (follows n_clean)
    width: float = 1.0                # OATS: the width of the slimmable network (slimmable.py)

    def set(self, clean: bool, enc=None, noise: float = 0.0, n_clean: int | None = None) -> "Condition":
        """Route every row clean (``clean``) or adversarial, or, with ``n_clean``, the first n_clean rows
        to ``bn_clean`` (and SMART's clean mask path) and the rest to ``bn_adv`` (and the adversarial path)."""
        self.n_clean = n_clean if n_clean is not None else (ALL if clean else 0)
        self.enc, self.noise = enc, noise
        self.path = "clean" if self.n_clean >= ALL else "adv"
        return self


class DualBN(nn.Module):
    """Two BN layers per site: ``bn_clean`` for the first ``cond.n_clean`` rows, ``bn_adv`` for the rest."""

    def __init__(self, channels: int, cond: Condition):
        super().__init__()
        self.bn_clean, self.bn_adv = nn.BatchNorm2d(channels), nn.BatchNorm2d(channels)
        self.cond = cond

    def forward(self, x):
        k = min(self.cond.n_clean, len(x))
        if k == 0:
            return self.bn_adv(x)
        if k == len(x):
            return self.bn_clean(x)
        clean, adv = x.split([k, len(x) - k])  # one backward node (a cat), not a zero-filled copy per slice
        return torch.cat([self.bn_clean(clean), self.bn_adv(adv)])


class FiLM(nn.Module):
    """h <- scale * h + shift, with (scale, shift) = leaky_relu(MLP(enc)) per sample and channel;
    MLP: d_in -> 2C -> 2C with LeakyReLU between (OAT). In a model whose factory ``attach``-ed a
    ``FiLMBank``, the bank computes every FiLM's (scale, shift) once per forward pass; alone, the layer
    computes its own (the same numbers)."""

    def __init__(self, channels: int, d_in: int, cond: Condition):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(d_in, 2 * channels), nn.LeakyReLU(), nn.Linear(2 * channels, 2 * channels))
        self.cond = cond
        self.bank, self.slot = None, None  # the model's FiLMBank, when attached, and this layer's index in it

    def scale_shift(self, h) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample (scale, shift) for ``h``'s channels: the bank's for this pass, else this layer's own."""
        if self.bank is not None and self.bank.active:
            return self.bank.get(self)
        return F.leaky_relu(self.mlp(self.cond.enc.to(h.dtype))).chunk(2, dim=1)

    def forward(self, h):
        scale, shift = self.scale_shift(h)
        return torch.addcmul(shift[:, :, None, None], h, scale[:, :, None, None])


class _StraightThroughMask(torch.autograd.Function):
    """W * M forward; backward passes the gradient to every entry of W (one kernel, none in backward)."""

    @staticmethod
    def forward(ctx, w, mask):
        return w * mask

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class CondConv2d(nn.Conv2d):
    """A convolution with optional weight noise (FLOAT) and binary masks kept as buffers, so they are saved
    with the model: one ``mask`` (FLOATS) or ``mask_clean``/``mask_adv`` (SMART: rows routed to ``bn_clean``
    take the clean path, the others the adversarial one).

    Noise: W~ = W + alpha * cond.noise * eta, eta ~ N(0, std(W)^2) drawn afresh at every forward pass
    (std and eta carry no gradient), one learnable alpha per convolution initialised at 0.25; with a mask
    the noise is masked too (``mask_noise``) so the model stays sparse at every lambda.
    ``dense_grad``: the forward uses W*M but the gradient reaches every entry of W (straight through the
    mask), so the optimiser's momentum can score pruned weights for regrowth (FLOATS)."""

    def __init__(self, *args, cond: Condition, noisy: bool = False, paths: tuple[str, ...] = (),
                 mask_noise: bool = True, dense_grad: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.cond, self.noisy, self.paths = cond, noisy, paths
        self.mask_noise, self.dense_grad = mask_noise, dense_grad
        if noisy:
            self.alpha = nn.Parameter(torch.tensor(0.25))
        self.bank, self.slot = None, None  # the model's NoiseBank, when attached, and this conv's index in it
        for p in paths:
            self.register_buffer(f"mask_{p}" if p else "mask", torch.ones_like(self.weight))

    def masks(self) -> dict[str, torch.Tensor]:
        return {p: getattr(self, f"mask_{p}" if p else "mask") for p in self.paths}

    def current_mask(self, path: str | None = None) -> torch.Tensor | None:
        """The mask in use for a batch routed all one way (None: unmasked)."""
        if not self.paths:
            return None
        return self.mask if self.paths == ("",) else getattr(self, f"mask_{path or self.cond.path}")

    def masked_weight(self, path: str | None = None) -> torch.Tensor:
        """W * M for the path's mask (W itself when unmasked)."""
        w, mask = self.weight, self.current_mask(path)
        if mask is None:
            return w
        return _StraightThroughMask.apply(w, mask) if self.dense_grad else w * mask

    def noise_mask(self, path: str | None = None) -> torch.Tensor | None:
        """The mask the noise is multiplied by (None: dense noise)."""
        return self.current_mask(path) if self.mask_noise else None

    def effective_weight(self, path: str | None = None) -> torch.Tensor:
        """This convolution's weight for one pass, computed on its own (a model's ``NoiseBank`` computes
        every noisy convolution's at once, by the same ``noisy_weights``)."""
        if self.noisy and self.cond.noise:
            return noisy_weights([self], self.cond.noise, path)[0]
        return self.masked_weight(path)

    def forward(self, x):
        k = min(self.cond.n_clean, len(x))
        if len(self.paths) == 2 and 0 < k < len(x):  # split rows: clean path first, adversarial path after
            clean, adv = x.split([k, len(x) - k])
            return torch.cat([self._conv_forward(clean, self.effective_weight("clean"), self.bias),
                              self._conv_forward(adv, self.effective_weight("adv"), self.bias)])
        if self.bank is not None and self.bank.active and self.cond.noise:  # a bank serves noisy convs only
            return self._conv_forward(x, self.bank.get(self), self.bias)
        return self._conv_forward(x, self.effective_weight(), self.bias)


class ConditionedLayers(LayerFactory):
    """Layer factory for the once-for-all methods: dual BN, optional FiLM after every BN but the shortcut's
    and the pre-activation head's (as OAT), optional noisy and/or masked convolutions (masks on the last
    ``mask_last_stages`` stages; None: all; ``noisy_masked=False`` keeps noise off the masked ones;
    ``shared_mask``: the convolutions of the other stages get one mask each, with a dense gradient, as
    FLOATS's), or slimmable layers at ``widths`` (OATS; not with noise or masks)."""

    def __init__(self, dual_bn: bool = True, film_dim: int | None = None, noisy: bool = False,
                 mask_paths: tuple[str, ...] = (), mask_last_stages: int | None = None, mask_noise: bool = True,
                 noisy_masked: bool = True, dense_grad: bool = False, shared_mask: bool = False,
                 widths: tuple[float, ...] = ()):
        super().__init__()
        if widths and (noisy or mask_paths or not dual_bn):
            raise ValueError("slimmable layers take dual BN and FiLM only, not noise or masks")
        self.widths = widths
        self.cond = Condition()
        self.dual_bn, self.film_dim, self.noisy, self.noisy_masked = dual_bn, film_dim, noisy, noisy_masked
        self.mask_paths, self.mask_last_stages, self.mask_noise = mask_paths, mask_last_stages, mask_noise
        self.dense_grad, self.shared_mask = dense_grad, shared_mask

    def _masked_stage(self) -> bool:
        return self.mask_last_stages is None or self.stage >= self.num_stages - self.mask_last_stages

    def conv(self, cin, cout, kernel, stride=1, padding=None, bias=False):
        if self.widths:
            from .slimmable import SlimConv2d
            pad = kernel // 2 if padding is None else padding
            return SlimConv2d(cin, cout, kernel, stride=stride, padding=pad, bias=bias, cond=self.cond)
        masked_stage = bool(self.mask_paths) and self._masked_stage()
        paths, dense_grad = (self.mask_paths, self.dense_grad) if masked_stage else ((), False)
        if self.shared_mask and not masked_stage:
            paths, dense_grad = ("",), True  # FLOATS's single mask on the shared stages (SMART sparse=on)
        noisy = self.noisy and (self.noisy_masked or not masked_stage)
        if not (noisy or paths):
            return super().conv(cin, cout, kernel, stride, padding, bias)
        pad = kernel // 2 if padding is None else padding
        return CondConv2d(cin, cout, kernel, stride=stride, padding=pad, bias=bias, cond=self.cond,
                          noisy=noisy, paths=paths, mask_noise=self.mask_noise, dense_grad=dense_grad)

    def norm(self, channels, shortcut=False, head=False):
        if self.widths:
            from .slimmable import SlimFiLM as Film, SwitchableDualBN
            bn = SwitchableDualBN(channels, self.widths, self.cond)
        else:
            Film = FiLM
            bn = DualBN(channels, self.cond) if self.dual_bn else super().norm(channels, shortcut, head)
        if self.film_dim and not (shortcut or head):
            return nn.Sequential(bn, Film(channels, self.film_dim, self.cond))
        return bn

    def attach(self, model: nn.Module) -> nn.Module:
        """Called once the model is built: its FiLM layers get a ``FiLMBank`` and its noisy convolutions a
        ``NoiseBank`` (banks.py), both hooks of the model."""
        films = [m for m in model.modules() if type(m) is FiLM]
        noisy = [m for m in model.modules() if isinstance(m, CondConv2d) and m.noisy]
        return attach_banks(model, films, noisy, self.cond)

    def linear(self, fin, fout):
        if self.widths:
            from .slimmable import SlimLinear
            return SlimLinear(fin, fout)
        return super().linear(fin, fout)
