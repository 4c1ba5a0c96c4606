import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use (taskset, a container's limit)
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


CORES = _cores()
MAX_WORKERS = 4  # -n auto: each worker is a process of its own, with torch and its own datasets
# pytest-xdist's workers share the cores: two threads in one process, one per worker with -n 2 or more; the
# processes a test starts (run_all.py, torchrun) inherit the worker's share
THREADS = max(1, min(2, CORES) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", 1)))
torch.set_num_threads(THREADS)
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

# the longest files (on a 2-core CPU in one process: about 105, 52, 80, 45, 34 and 12 s), run first so that
# pytest-xdist starts the two regression tiers on separate workers and fills in around them, rather than
# finding one at the end with the other workers idle (282 s of tests in this order, 333-341 s in xdist's
# default one, files with the most tests first)
LONGEST_FIRST = ("test_regression.py", "test_regression_cifar.py", "test_training.py", "test_autoattack.py",
                 "test_executor.py", "test_distributed.py")


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """Where pytest-xdist is installed (the test extra), the suite runs on its workers unless -n or --dist is
    given: ``-n auto`` (one per core, at most MAX_WORKERS), each test file on one worker (its module-scoped
    training runs happen once), files in collection order (LONGEST_FIRST). Without xdist, or with -n 0 or
    ``-p no:xdist``, in one process."""
    opt = config.option
    worker = hasattr(config, "workerinput")  # a worker runs this hook too, its -n and --dist reset
    if (config.pluginmanager.hasplugin("xdist") and not worker and opt.numprocesses is None and opt.dist == "no"
            and not opt.collectonly):
        opt.numprocesses, opt.dist = "auto", "loadfile"
        opt.loadscopereorder = False  # xdist >= 3.8; older ones order the files by their number of tests


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: not called without xdist
def pytest_xdist_auto_num_workers(config):
    env = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")  # xdist's own setting, which this hook would override
    return int(env) if env else max(1, min(MAX_WORKERS, CORES))


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
