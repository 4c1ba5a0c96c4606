import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# pytest-xdist's workers share the cores: two threads in one process, one per worker with -n 2 or more
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1))))
MAX_WORKERS = 4  # -n auto: each worker is a process of its own, with torch and its own datasets


# the longest files (on a 2-core CPU in one process: about 105, 52, 80, 45, 34 and 12 s), run first so that
# pytest-xdist starts the two regression tiers on separate workers and fills in around them, rather than
# finding one at the end with the other workers idle (282 s of tests in this order, 333-341 s in xdist's
# default one, files with the most tests first)
LONGEST_FIRST = ("test_regression.py", "test_regression_cifar.py", "test_training.py", "test_autoattack.py",
                 "test_executor.py", "test_distributed.py")


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: without xdist (-p no:xdist) it is not called
def pytest_xdist_auto_num_workers(config):
    return max(1, min(MAX_WORKERS, os.cpu_count() or 1))


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order


def run_cli(*args, cwd=ROOT, timeout=600):
    """Run ``python run_all.py ARGS`` in a subprocess; return the CompletedProcess."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, str(ROOT / "run_all.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def digits():
    from harness.data import load_dataset
    return load_dataset("digits")
