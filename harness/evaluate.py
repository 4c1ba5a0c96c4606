"""Lambda-grid evaluation: clean and adversarial accuracy at every lambda of a method's grid.

At each lambda the method configures the model (eval mode, BN branch, noise, masks) and yields one forward
callable; clean accuracy and every attack use exactly that callable, so the configuration attacked is the
configuration scored. Evaluation runs in fp32 so the attack's gradients are not degraded by low precision.
Models with random forward passes get a fixed noise seed per evaluation and clean accuracy over several draws.
"""
from __future__ import annotations

import statistics

import torch
from tqdm.auto import tqdm

from .attacks import parse_attack
from .config import EvalConfig
from .data import Dataset, DeviceLoader


def _accuracy(forward, loader, attack=None, eps=0.0, step=None, bar=None) -> float:
    correct = torch.zeros((), dtype=torch.long, device=loader.x.device)
    for x, y in loader:
        if attack is not None:
            x = attack(forward, x, y, eps, step)
        with torch.no_grad():
            correct += (forward(x).argmax(1) == y).sum()
        if bar is not None:
            bar.update(1)
    return correct.item() / len(loader.x)


def evaluate(method, model, data: Dataset, cfg: EvalConfig, eps: float, seed: int = 0,
             progress: bool = True) -> list[dict]:
    """Return rows ``{lambda, metric, value, attack, n}`` for every lambda of ``method.lambda_grid()``."""
    x, y = (data.x_test, data.y_test) if cfg.n is None else (data.x_test[:cfg.n], data.y_test[:cfg.n])
    loader = DeviceLoader(x, y, cfg.batch_size)
    attacks = [parse_attack(a) for a in cfg.attacks]
    grid = method.lambda_grid()
    draws_at = {lam: cfg.noise_draws if method.is_random(lam) else 1 for lam in grid}
    total = sum(len(loader) * (draws_at[lam] + len(attacks)) for lam in grid)
    rows = []
    with tqdm(total=total, desc=f"eval {method.name}", leave=False, disable=not progress, dynamic_ncols=True) as bar:
        for lam in grid:
            with method.configure(model, lam) as forward:
                clean = []
                for draw in range(draws_at[lam]):
                    torch.manual_seed(seed * 1000 + draw)  # fixed noise per evaluation
                    clean.append(_accuracy(forward, loader, bar=bar))
                rows.append(dict(**{"lambda": lam}, metric="clean_acc", value=statistics.fmean(clean), attack=""))
                if len(clean) > 1:
                    rows.append(dict(**{"lambda": lam}, metric="clean_acc_std", value=statistics.stdev(clean), attack=""))
                for attack in attacks:
                    torch.manual_seed(seed)
                    acc = _accuracy(forward, loader, attack, eps, cfg.step, bar)
                    rows.append(dict(**{"lambda": lam}, metric="pgd_acc", value=acc, attack=attack.name))
    for r in rows:
        r["n"] = len(x)
    return rows
