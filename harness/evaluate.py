"""Lambda-grid evaluation: accuracy, AutoAttack, sanity-check attacks and complexity at every lambda.

At each lambda the method configures the model (eval mode, BN branch, noise, masks) and yields one forward
callable; clean accuracy, every PGD attack, AutoAttack, the checks' extra attacks and the complexity
measurements all use exactly that callable, so the configuration attacked is the configuration scored.
Evaluation runs in fp32 so the attack's gradients are not degraded by low precision. Models with random
forward passes get a fixed noise seed per evaluation and clean accuracy over several draws; AutoAttack
runs its ``rand`` version on them (APGD-CE and APGD-DLR with EOT over 20 draws) unless ``aa`` is ``off``.
On several processes (torchrun) each rank attacks a contiguous slice of the examples and the per-example
results are gathered in order, so the figures are those of one process (up to the random draws).
"""
from __future__ import annotations

import statistics
import time

import torch
from tqdm.auto import tqdm

from . import checks, complexity, distributed
from .attacks import AttackSpec, frozen, parse_attack
from .autoattack import AAResult, package, run_autoattack
from .banks import weights_fixed
from .config import EvalConfig
from .data import Dataset, DeviceLoader
from .errors import LambenchError
from .store import LambdaRows, result_row

NAN = float("nan")
AA_MODES = ("standard", "rand", "off")


def _loader(x, y, batch_size) -> DeviceLoader:
    """A loader over this rank's slice of ``x, y`` (all of it on one process); ``total`` is ``len(x)``."""
    part = distributed.split(len(x))
    loader = DeviceLoader(x[part], y[part], batch_size)
    loader.total = len(x)
    return loader


def _correct(forward, loader, attack=None, eps=0.0, step=None, bar=None) -> torch.Tensor:
    """Per-example correctness (bool, in order, over every rank's slice) of ``forward`` on clean or attacked
    inputs."""
    out = []
    for x, y in loader:
        if attack is not None:
            x = attack(forward, x, y, eps, step)
        with torch.no_grad():
            out.append(forward(x).argmax(1) == y)
        if bar is not None:
            bar.update(1)
    local = torch.cat(out) if out else torch.zeros(0, dtype=torch.bool, device=loader.y.device)
    return distributed.gather(local, loader.total)


def _mean(correct: torch.Tensor) -> float:
    return correct.float().mean().item() if len(correct) else NAN


def aa_version(cfg: EvalConfig, method, lam: float) -> str | None:
    """The AutoAttack version run at ``lam``: None (off), "rand" (asked for, or the forward is random)."""
    if cfg.aa == "off":
        return None
    return "rand" if cfg.aa == "rand" or method.is_random(lam) else "standard"


def check_attacks(cfg: EvalConfig, random: bool) -> list[tuple[AttackSpec, str]]:
    """The checks' extra attacks and the budget of each ("2eps", "1.0" or "eps")."""
    base = parse_attack(checks.BASE)
    out = [(AttackSpec(checks.EPS2, "pgd", base.steps), "2eps"), (AttackSpec(checks.UNBOUNDED, "pgd", base.steps), "1.0"),
           (AttackSpec(checks.LONG, "pgd", 100), "eps")]
    if random:
        out.append((AttackSpec(checks.EOT, "pgd", base.steps, eot=cfg.checks_eot), "eps"))
    return out


def evaluate(method, model, data: Dataset, cfg: EvalConfig, eps: float, seed: int = 0,
             progress: bool = True, scored: LambdaRows | None = None) -> list[dict]:
    """Rows ``{lambda, metric, value, attack, n[, eps, precision, detail]}`` for every lambda of
    ``method.eval_grid(cfg.lambdas)`` (the method's grid unless ``--lambdas`` gave one), then per-job rows
    (lambda NaN): ``params``, ``stored_params``, ``grid_lambdas``; for a method with several variants (OATS's
    widths) all of them per variant, with ``method`` = ``<name>-<variant>``. ``scored`` keeps each scored lambda's rows
    (and gives back those an earlier evaluation scored under the same settings); one process only."""
    if cfg.aa not in AA_MODES:
        raise LambenchError(f"unknown AutoAttack mode {cfg.aa!r}; use one of {', '.join(AA_MODES)}")
    x, y = (data.x_test, data.y_test) if cfg.n is None else (data.x_test[:cfg.n], data.y_test[:cfg.n])
    loader = _loader(x, y, cfg.batch_size)
    n_chk = min(cfg.checks_n, len(x)) if cfg.checks else 0
    sub = _loader(x[:n_chk], y[:n_chk], cfg.batch_size)
    grid, variants = method.eval_grid(cfg.lambdas), method.variants()
    if distributed.active():
        scored = None  # ranks share the work of every lambda; a cache would have to agree across them

    def steps(lam):  # progress-bar steps of one lambda
        random = method.is_random(lam)
        return (len(loader) * (len(cfg.attacks) + (cfg.noise_draws if random else 1))
                + (cfg.aa != "off" and cfg.aa_n > 0) + len(sub) * (len(check_attacks(cfg, random)) + 1) * (n_chk > 0))

    rows = []
    with tqdm(total=len(variants) * sum(steps(lam) for lam in grid), desc=f"eval {method.name}", leave=False,
              disable=not (progress and distributed.is_main()), dynamic_ncols=True) as bar:
        for name in variants:
            with method.variant(name):
                part = _score(method, model, x, y, loader, sub, cfg, eps, seed, bar, grid, steps, scored, name)
            rows += [r | {"method": f"{method.name}-{name}"} for r in part] if name else part
    return rows


def _score(method, model, x, y, loader, sub, cfg: EvalConfig, eps: float, seed: int, bar, grid, steps,
           scored, variant) -> list[dict]:
    """``evaluate``'s rows for the model as ``method`` configures it now (one variant)."""
    x_img = x[: max(1, min(len(x), 256))].float() / 255
    measure = cfg.complexity and distributed.is_main()  # timings on one process; rank 0 writes the rows
    rows, stored = [], None
    for lam in grid:
        part = scored.get(variant, lam) if scored else None
        with method.configure(model, lam) as forward:
            # the entries used at this lambda: its nonzero_params, and with the others what a deployment stores
            used = complexity.used_masks(forward, model, x_img[:1]) if measure else None
            if part is None:
                t0 = time.perf_counter()
                # accuracy and attacks on fixed, frozen weights (attacks differentiate the input only); the
                # cost rows below pay every pass in full
                with weights_fixed(model), frozen(model.parameters()):
                    part = _score_lambda(method, model, forward, lam, x, y, loader, sub, cfg, eps, seed, bar)
                if used is not None:
                    part += _cost_rows(forward, model, lam, x_img, used)
                if scored:
                    scored.put(variant, lam, part, time.perf_counter() - t0)
            else:  # scored before: by an evaluation that was stopped, or over another lambda grid
                bar.update(steps(lam))
        if measure:
            stored = complexity.union(stored, used)
        rows += part
    if measure:
        # what a deployment stores serves the method's whole lambda range, not only the lambdas scored here
        for lam in sorted(set(method.lambda_grid()) - set(grid)):
            with method.configure(model, lam) as forward:
                stored = complexity.union(stored, complexity.used_masks(forward, model, x_img[:1]))
        rows += [result_row(NAN, "params", complexity.params(model), NAN, precision="fp32"),
                 result_row(NAN, "stored_params", complexity.count(stored), NAN, precision="fp32")]
    # how many lambdas the method's own grid holds: the dedicated models one once-for-all model stands for
    rows.append(result_row(NAN, "grid_lambdas", len(method.lambda_grid()), NAN))
    if cfg.checks:
        rows += checks.flag_rows(rows)
    return rows


def _score_lambda(method, model, forward, lam, x, y, loader, sub, cfg, eps, seed, bar) -> list[dict]:
    """The accuracy rows of one lambda (clean, attacks, sanity checks), ``forward`` being the model
    configured for it."""
    rows = []

    def row(metric, value, attack="", n=len(x), **extra):
        rows.append(result_row(lam, metric, value, n, attack, **extra))

    clean = []
    for draw in range(cfg.noise_draws if method.is_random(lam) else 1):
        torch.manual_seed(seed * 1000 + draw)  # fixed noise per evaluation
        clean.append(_mean(_correct(forward, loader, bar=bar)))
    row("clean_acc", statistics.fmean(clean))
    if len(clean) > 1:
        row("clean_acc_std", statistics.stdev(clean))
    base, n_chk = None, sub.total
    for attack in (parse_attack(a) for a in cfg.attacks):
        torch.manual_seed(seed)
        correct = _correct(forward, loader, attack, eps, cfg.step, bar)
        row("pgd_acc", _mean(correct), attack.name)
        if attack.name == checks.BASE:
            base = correct[:n_chk]
    version = aa_version(cfg, method, lam)
    n_aa = min(cfg.aa_n, len(x)) if version else 0
    if n_aa:
        torch.manual_seed(seed)
        acc, res = _autoattack(forward, model, x[:n_aa], y[:n_aa], eps, version, cfg.batch_size, seed)
        row("aa_acc", acc, res.attack, n_aa)
        row("flag:autoattack", float(bool(res.warnings)), res.attack, NAN,
            detail=f"the {res.package} package warned: " + " | ".join(res.warnings) if res.warnings else "")
        bar.update(1)
    if n_chk:
        rows.extend(_check_rows(lam, forward, sub, base, cfg, eps, seed, method.is_random(lam), bar))
    return rows


def _cost_rows(forward, model, lam, x_img, used) -> list[dict]:
    """The complexity rows of one lambda: ``used`` the entries it uses (``complexity.used_masks``), MACs and
    timings measured on ``x_img``."""
    macs = complexity.macs(forward, model, x_img[:1])
    cost = complexity.inference_cost(forward, x_img, model=model)
    return [result_row(lam, "nonzero_params", complexity.count(complexity.nonzero(used, model)), NAN,
                       precision="fp32"),
            result_row(lam, "macs", macs, 1, precision="fp32"),
            result_row(lam, "infer_latency_ms", cost["infer_latency_ms"], 1, precision="fp32"),
            result_row(lam, "infer_throughput", cost["infer_throughput"], 256, precision="fp32"),
            result_row(lam, "infer_peak_mem_mb", cost["infer_peak_mem_mb"], 256, precision="fp32")]


def _autoattack(forward, model, x, y, eps, version, batch_size, seed):
    """(accuracy over all of ``x``, a result carrying every rank's warnings): each rank attacks its slice."""
    part = distributed.split(len(x))
    if part.stop > part.start:
        res = run_autoattack(forward, x[part].float() / 255, y[part], eps, version, batch_size, seed, model=model)
    else:  # fewer examples than processes: this rank has none
        res = AAResult(acc=0.0, n=0, version=version, package=package()[0], seconds=0.0)
    if not distributed.active():
        return res.acc, res
    local = torch.tensor([res.acc * res.n, float(res.n)], dtype=torch.float64, device=y.device)
    robust, n = distributed.all_sum(local).tolist()
    res.warnings = list(dict.fromkeys(w for ws in distributed.gather_objects(res.warnings) for w in ws))
    return robust / n, res


def _check_rows(lam, forward, sub, base, cfg, eps, seed, random, bar) -> list[dict]:
    """``check_acc`` rows on the checks subset: PGD-20 (the reference; taken from the main PGD-20 run when
    there was one), at 2 eps, at eps = 1.0, PGD-100, and PGD-20 with EOT for random models."""
    n = sub.total
    rows = []
    if base is None:
        torch.manual_seed(seed)
        base = _correct(forward, sub, parse_attack(checks.BASE), eps, cfg.step, bar)
    else:
        bar.update(len(sub))
    rows.append(result_row(lam, "check_acc", _mean(base), n, checks.BASE, eps=eps))
    for attack, budget in check_attacks(cfg, random):
        e = {"2eps": 2 * eps, "1.0": 1.0, "eps": eps}[budget]
        step = None if cfg.step is None else cfg.step * e / eps
        torch.manual_seed(seed)
        acc = _mean(_correct(forward, sub, attack, e, step, bar))
        rows.append(result_row(lam, "check_acc", acc, n, attack.name, eps=e))
    return rows
