"""One adapter for AutoAttack (Croce & Hein, 2020), whichever maintained package is installed.

The official ``autoattack`` module (installed from github.com/fra31/auto-attack) is used when it is importable,
else ``pyautoattack`` (the same attacks repackaged on the package index with a keyword-only API; a lambench
dependency, so a fresh install always has one). The adapter hides the difference:

- it attacks the very forward callable that ``method.configure(model, lam)`` yields (wrapped in an
  ``nn.Module`` that does not own the model, so the package can never change the model's mode), in fp32,
  with the model's parameters frozen so that FAB's ``backward`` leaves no gradients on the weights;
- ``version="standard"`` runs APGD-CE, APGD-T, FAB-T and Square; ``"rand"`` runs APGD-CE and APGD-DLR with
  EOT over 20 forward passes (for models whose forward is random);
- it is seeded, and quiet unless ``verbose``: the packages' printing and logging are captured, and the
  warnings they raise about the evaluation (randomised or dynamic defence, zero gradients, Square beating
  the gradient attacks, probabilities instead of logits, ...) are returned as ``AAResult.warnings``;
- robust accuracy is the package's own: the fraction of examples it could not misclassify.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .attacks import frozen

VERSIONS = ("standard", "rand")
_LOGGER = "auto-attack"  # the logger pyautoattack reports through


@dataclass
class AAResult:
    acc: float                   # robust accuracy in [0, 1]
    n: int                       # examples attacked
    version: str                 # "standard" | "rand"
    package: str                 # "autoattack" (official) | "pyautoattack"
    seconds: float
    warnings: list[str] = field(default_factory=list)

    @property
    def attack(self) -> str:
        return f"aa-{self.version}"


def package():
    """Return ``(name, AutoAttack class)``: the official module when importable, else pyautoattack."""
    try:
        from autoattack import AutoAttack  # official (Croce & Hein), installed from its repository
        return "autoattack", AutoAttack
    except ImportError:
        from pyautoattack import AutoAttack
        return "pyautoattack", AutoAttack


class _Forward(nn.Module):
    """An ``nn.Module`` face for a forward callable; the callable is not registered as a submodule, so
    nothing the package does to this module (``.eval()``, ``.to()``) reaches the model."""

    def __init__(self, forward):
        super().__init__()
        object.__setattr__(self, "_fn", forward)

    def forward(self, x):
        return self._fn(x)


class _Tee(io.StringIO):
    """Keeps what the package prints (its official release prints its warnings) and, if verbose, shows it."""

    def __init__(self, echo):
        super().__init__()
        self.echo = echo

    def write(self, text):
        if self.echo is not None:
            self.echo.write(text)
        return super().write(text)


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _reset_dynamic_check(pkg_name: str) -> None:
    """Both packages count traced calls for their "dynamic defence" check in a module-level dict that is
    never reset, so one flagged model would flag every later one; start each run from zero."""
    try:
        checks = __import__(f"{pkg_name}.checks", fromlist=["funcs"])
        for key in getattr(checks, "funcs", {}):
            checks.funcs[key] = 0
    except ImportError:
        pass


def _from_package(filename: str | None, pkg_name: str) -> bool:
    parts = (filename or "").replace("\\", "/").split("/")
    return pkg_name in parts[:-1]


def run_autoattack(forward, x: torch.Tensor, y: torch.Tensor, eps: float, version: str = "standard",
                   batch_size: int = 500, seed: int = 0, model: nn.Module | None = None,
                   verbose: bool = False) -> AAResult:
    """AutoAttack (L-inf, ``eps``) on ``forward`` over inputs ``x`` in [0, 1] and labels ``y``.

    ``forward`` must already be configured and in eval mode (``method.configure``); ``model`` (or
    ``forward`` itself when it is a module) has its parameters frozen for the duration."""
    if version not in VERSIONS:
        raise ValueError(f"AutoAttack version must be one of {VERSIONS}, got {version!r}")
    name, AutoAttack = package()
    owner = model if model is not None else (forward if isinstance(forward, nn.Module) else None)
    params = list(owner.parameters()) if owner is not None else []
    wrapped = _Forward(forward)
    x, y = x.detach().float(), y.detach()
    official = "bs" in inspect.signature(AutoAttack.run_standard_evaluation).parameters
    kwargs = dict(norm="Linf", eps=eps, version=version, device=x.device, seed=seed)
    if official:
        kwargs["verbose"] = verbose
    capture, logger = _Capture(), logging.getLogger(_LOGGER)
    propagate = logger.propagate
    logger.addHandler(capture)
    logger.propagate = verbose
    out = _Tee(sys.stdout if verbose else None)
    _reset_dynamic_check(name)
    t0 = time.perf_counter()
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(contextlib.redirect_stdout(out))
            caught = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            stack.enter_context(frozen(params))
            stack.enter_context(torch.autocast(x.device.type, enabled=False))
            aa = AutoAttack(wrapped, **kwargs)
            if not official:
                aa.verbose = verbose
            if official:
                sig = inspect.signature(aa.run_standard_evaluation).parameters
                res = aa.run_standard_evaluation(x, y, bs=batch_size, **({"return_labels": True} if "return_labels" in sig else {}))
            else:
                res = aa.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        logger.removeHandler(capture)
        logger.propagate = propagate
    seconds = time.perf_counter() - t0
    if isinstance(res, tuple):
        acc = (res[1].to(y.device) == y).float().mean().item()
    else:  # an old official release returns only the adversarial inputs
        with torch.no_grad():
            acc = (wrapped(res).argmax(1) == y).float().mean().item()
    ours = [w for w in caught if _from_package(w.filename, name)]
    for w in caught:  # anything else (e.g. a deprecation in torch) is shown as usual
        if w not in ours:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    messages = capture.messages + [str(w.message) for w in ours]
    messages += [line.strip()[len("Warning:"):].strip() for line in out.getvalue().splitlines()
                 if line.strip().startswith("Warning:")]
    return AAResult(acc=acc, n=len(x), version=version, package=name, seconds=seconds,
                    warnings=list(dict.fromkeys(messages)))
