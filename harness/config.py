"""Every hyperparameter lives here, in dataclasses, with the presets that set them.

Flags on the command line override a preset field by field; methods may change defaults of their own
(e.g. Fast-AT's cyclic schedule) through ``Method.defaults`` before flags apply.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import LambenchError


COMPILE_MODES = ("off", "default", "reduce-overhead", "cudagraphs")


def _at_least_1(flag: str, value) -> None:
    if value is not None and not (isinstance(value, int) and value >= 1):
        raise LambenchError(f"{flag} must be a whole number of at least 1, got {value!r}")


def _in(flag: str, value, low: float, high: float, example: str, open_low: bool = True) -> None:
    """``value`` (unless None) in (low, high] (``open_low``) or [low, high]."""
    if value is not None and not (low < value <= high if open_low else low <= value <= high):
        side = "(" if open_low else "["
        raise LambenchError(f"{flag} {value!r} is outside {side}{low:g}, {high:g}]; give e.g. {example}")


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1              # peak learning rate (SGD)
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"     # cosine | cyclic (per-iteration triangle, Fast-AT) | multistep (x0.1 at 50% and 75%)
    warmup_frac: float = 0.4     # cyclic only: fraction of training spent rising to the peak
    train_attack: str = "pgd7"   # pgd7 | pgdK | fgsm_rs
    attack_step: float | None = None  # step of the training attack, in [0,1] units; None = method default
    precision: str = "auto"      # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    compile: str = "off"         # CUDA only, training only: off | default (torch.compile) | reduce-overhead
                                 # (torch.compile + CUDA graphs: ~3x at batch 128 on an H100, README "Speed")
                                 # | cudagraphs (CUDA graphs of the eager kernels, no code generation:
                                 # traced in seconds where inductor compiles for minutes)
    log_every: int = 20          # iterations between progress-bar updates (each costs one host sync)
    options: dict = field(default_factory=dict)  # method-specific options (--opt key=value), e.g. encoding=onehot

    def __post_init__(self):  # a bad value fails here, before any work, as one line naming the flag
        for flag, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size), ("log_every", self.log_every)):
            _at_least_1(flag, value)
        _in("--lr", self.lr, 0, math.inf, "0.1")
        _in("momentum", self.momentum, 0, 1, "0.9", open_low=False)
        _in("weight_decay", self.weight_decay, 0, 1, "5e-4", open_low=False)
        _in("warmup_frac", self.warmup_frac, 0, 1, "0.4", open_low=False)
        _in("--attack-step", self.attack_step, 0, 1, "2/255")


@dataclass
class EvalConfig:
    attacks: tuple[str, ...] = ("pgd20",)  # pgd20 (alpha 2/255, 1 restart) | pgd50x10 | pgdK[xR]
    batch_size: int = 500
    n: int | None = None           # evaluate the first n test examples (None: the whole test split)
    noise_draws: int = 3           # models with random forward passes: clean accuracy over this many draws
    step: float | None = None      # PGD step; None: max(eps/4, eps/steps), i.e. 2/255 at eps = 8/255
    aa: str = "standard"           # AutoAttack: standard (APGD-CE, APGD-T, FAB-T, Square; "rand" taken
                                   # automatically where the forward is random) | rand (everywhere) | off
    aa_n: int = 1000               # AutoAttack on the first aa_n test examples (as RobustBench)
    checks: bool = True            # sanity checks: extra attacks on a subset and flag rows
    checks_n: int = 200            # the checks' extra attacks run on the first checks_n test examples
    checks_eot: int = 10           # random models: forward passes averaged per gradient in the EOT check
    complexity: bool = True        # parameters, MACs, latency, throughput and memory at every lambda
    lambdas: tuple[float, ...] | None = None  # once-for-all models: score at these lambdas instead of the
                                   # method's grid (--lambdas; dedicated models keep the lambda they were trained at)

    def __post_init__(self):
        for flag, value in (("--eval-batch-size", self.batch_size), ("--eval-n", self.n), ("--aa-n", self.aa_n),
                            ("--checks-n", self.checks_n), ("checks_eot", self.checks_eot)):
            _at_least_1(flag, value)
        _in("eval step", self.step, 0, 1, "2/255")
        if self.noise_draws < 3:  # the protocol: mean and spread over at least 3 draws of the noise
            raise LambenchError(f"noise_draws={self.noise_draws}: a random model's clean accuracy needs at least 3 noise draws")


@dataclass
class RunConfig:
    methods: tuple[str, ...] = ("pgd_at", "fast_at")
    datasets: tuple[str, ...] = ("digits",)
    archs: tuple[str, ...] = ("small_cnn",)
    seeds: tuple[int, ...] = (0,)
    train_lambdas: tuple[float, ...] | None = None   # pgd_at: one dedicated model per value (default: method's)
    eps: float | None = None       # None: the dataset's default epsilon
    subset: int | None = None      # train on the first N training examples (quick runs)
    data_root: str | None = None
    out: str = "results"
    run: str | None = None         # results/<run>/ (default: the preset name)
    device: str = "auto"
    force: bool = False
    progress: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self):
        _in("--eps", self.eps, 0, 1, "8/255 (inputs are in [0, 1])")
        _at_least_1("--subset", self.subset)
        for flag, given in (("--methods", self.methods), ("--dataset", self.datasets), ("--arch", self.archs),
                            ("--seeds", self.seeds)):
            if not given:
                raise LambenchError(f"{flag} is empty; name at least one")


# --- presets -----------------------------------------------------------------------------------------------
# smoke: embedded digits + small CNN; the whole default job (pgd_at, fast_at) takes ~1.7 minutes on an idle
#   CPU core (measured: 35 s training, 55 s evaluation). AutoAttack runs on the first 25 test examples only
#   (~20 s per job: on a robust model Square's 5000 queries, APGD-T and FAB-T cost about the same at any
#   small n) and the checks' extra attacks on the first 100; raise --aa-n for a figure worth quoting.
# cifar10-fast: PreActResNet18, short schedule, sized for one GPU (batch 512 as in the speed target).
# paper: the OAT/FLOAT protocol: CIFAR ResNet34, 200 epochs, PGD-7, multistep decay, batch 128.
PRESETS: dict[str, dict] = {
    "smoke": dict(datasets=("digits",), archs=("small_cnn",),
                  train=dict(epochs=15, batch_size=64, lr=0.05),
                  eval=dict(attacks=("pgd20",), aa_n=25, checks_n=100)),
    "cifar10-fast": dict(datasets=("cifar10",), archs=("preact_resnet18",),
                         train=dict(epochs=15, batch_size=512, lr=0.2, schedule="cyclic")),
    "paper": dict(datasets=("cifar10",), archs=("resnet34",),
                  train=dict(epochs=200, batch_size=128, lr=0.1, schedule="multistep", train_attack="pgd7")),
}


def apply(obj, overrides: dict):
    """Return a copy of dataclass ``obj`` with ``overrides`` applied (nested dicts go into nested dataclasses)."""
    changes = {}
    for key, value in overrides.items():
        current = getattr(obj, key)
        changes[key] = apply(current, value) if dataclasses.is_dataclass(current) and isinstance(value, dict) else value
    return dataclasses.replace(obj, **changes)


def from_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise LambenchError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return apply(RunConfig(run=name), PRESETS[name])


def parse_fraction(text: str) -> float:
    """'8/255' -> 0.0313..., '0.1' -> 0.1."""
    try:
        if "/" in text:
            num, den = text.split("/")
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise LambenchError(f"cannot read {text!r} as a number; write e.g. 0.1 or 8/255") from None


def check_lambda(lam: float) -> float:
    if not 0.0 <= lam <= 1.0:
        raise LambenchError(f"lambda {lam} is outside [0, 1]; pick values such as 0,0.1,0.5,1")
    return lam
