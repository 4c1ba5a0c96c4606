"""The method interface and its registry.

A plugin owns only what is particular to it: the layers it conditions the network with, its training step,
its lambda grid, and how the model is configured for a given lambda. Data, attacks, the loop, AMP,
checkpoints and timing live in ``harness``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from harness.attacks import AttackSpec, Forward, frozen, parse_attack
from harness.config import TrainConfig, check_lambda
from harness.errors import LambenchError
from harness.layers import LayerFactory
from harness.models import build_model

_METHODS: dict[str, type["Method"]] = {}


def register(name: str):
    """Class decorator: ``@register("float")`` makes the plugin available as ``--methods float``."""
    def deco(cls):
        cls.name = name
        _METHODS[name] = cls
        return cls
    return deco


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type["Method"]:
    if name not in _METHODS:
        raise LambenchError(f"unknown method {name!r}; choose from: {', '.join(method_names())}")
    return _METHODS[name]


def _describe(spec: tuple) -> str:
    if isinstance(spec[-1], type):
        return f"a {spec[-1].__name__}, default {spec[0]}"
    return "|".join(map(str, spec))


@contextmanager
def eval_mode(model: nn.Module):
    """Temporarily put ``model`` in eval mode (attacks always run in eval mode), then restore its modes."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


class Method:
    """Base plugin. Subclasses set ``defaults`` and override what they need."""

    name = "base"
    #: TrainConfig fields this method changes by default (a preset's general values yield to them,
    #: explicit command-line flags override them).
    defaults: dict = {}
    #: training lambdas that each get a dedicated model (None: one model for the whole grid).
    train_lambdas: tuple[float, ...] | None = None
    #: one trained model dialled over lambda (once-for-all): it can be scored at other lambdas (--lambdas)
    once_for_all: bool = False

    #: method options (``--opt key=value``): a tuple of allowed values, the first the default, or
    #: ``(default, type)`` for any value of that type (e.g. ``"density": (0.5, float)``)
    options: dict[str, tuple] = {}

    def __init__(self, cfg: TrainConfig, eps: float, train_lambda: float | None = None):
        self.cfg, self.eps, self.train_lambda = cfg, eps, train_lambda
        self.attack: AttackSpec = parse_attack(cfg.train_attack)
        unknown = set(cfg.options) - set(self.options)
        if unknown:
            known = ", ".join(f"{k} ({_describe(v)})" for k, v in self.options.items()) or "none"
            raise LambenchError(f"{self.name} has no option {', '.join(sorted(unknown))}; its options: {known}")
        self.opts = {k: v[0] for k, v in self.options.items()}
        for key, value in cfg.options.items():
            self.opts[key] = self._parse_option(key, value)

    def _parse_option(self, key, value):
        spec = self.options[key]
        if isinstance(spec[-1], type):
            try:
                return spec[-1](value)
            except ValueError:
                raise LambenchError(f"{self.name}: --opt {key}={value} is not a {spec[-1].__name__}") from None
        choices = {str(v): v for v in spec}
        if str(value) not in choices:
            raise LambenchError(f"{self.name}: --opt {key}={value} is not one of {'|'.join(choices)}")
        return choices[str(value)]

    # --- the network -------------------------------------------------------------------------------------
    def layers(self) -> LayerFactory:
        return LayerFactory()

    def build_model(self, arch: str, info) -> nn.Module:
        layers = self.layers()
        model = build_model(arch, info, layers)
        return layers.attach(model)

    # --- training ----------------------------------------------------------------------------------------
    def train_step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """Return ``(loss, logits, targets)`` for one batch (``logits`` scored against ``targets`` for the
        progress bar's accuracy); the loop does backward and the optimiser step."""
        raise NotImplementedError

    def craft(self, forward: Forward, model: nn.Module, x, y):
        """The training attack, crafted in eval mode on ``forward`` (last iterate; weights frozen meanwhile,
        so no gradient is computed for them, compiled or not)."""
        with eval_mode(model), frozen(model.parameters()):
            return self.attack(forward, x, y, self.eps, self.cfg.attack_step, keep_best=False)

    def begin_epoch(self, model: nn.Module, epoch: int) -> None:
        pass

    def after_step(self, model: nn.Module, optimizer) -> None:
        pass

    def end_epoch(self, model: nn.Module, epoch: int, first_batch, optimizer=None) -> dict:
        """Per-epoch metrics to record; a true ``"stop"`` entry ends training after this epoch."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    # --- evaluation --------------------------------------------------------------------------------------
    def lambda_grid(self) -> list[float]:
        return [1.0 if self.train_lambda is None else self.train_lambda]

    def eval_grid(self, lambdas=None) -> list[float]:
        """The lambdas the trained model is scored at: ``lambdas`` (``--lambdas``, each checked with
        ``check_lambda``) for a once-for-all model, else ``lambda_grid()``."""
        if lambdas is None or not self.once_for_all:
            return self.lambda_grid()
        return sorted({self.check_lambda(float(lam)) for lam in lambdas})

    def check_lambda(self, lam: float) -> float:
        """``lam`` if the model can be configured at it, else a ``LambenchError`` naming the fix."""
        return check_lambda(lam)

    def variants(self) -> list[str]:
        """Sub-models of the one trained model that are scored as models of their own (OATS: its widths),
        each over the whole lambda grid; their rows are named ``<method>-<variant>``. Default: just one."""
        return [""]

    @contextmanager
    def variant(self, name: str):
        """Select sub-model ``name`` (one of ``variants()``) for the ``configure`` calls inside."""
        yield

    def is_random(self, lam: float) -> bool:
        """Whether the forward pass at ``lam`` draws random noise (then clean accuracy is averaged)."""
        return False

    @contextmanager
    def configure(self, model: nn.Module, lam: float) -> Iterator[Forward]:
        """Put ``model`` in eval mode configured for ``lam`` and yield the forward callable that clean and
        adversarial evaluation both use."""
        with eval_mode(model):
            yield model
