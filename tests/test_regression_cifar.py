"""The CIFAR-10-subset tier of the regression test (tests/regression.py): the small CNN on a few hundred
images of ../shared/data, when it is there. A file of its own so that pytest-xdist (``--dist loadfile``) runs
it beside the digits tier of test_regression.py."""
import pytest

from regression import SHARED_CIFAR, assert_matches, available, run_tier


@pytest.mark.skipif(not available("cifar10-subset"), reason=f"needs the CIFAR-10 subset at {SHARED_CIFAR}")
def test_cifar10_subset_matches_reference(tmp_path):
    assert_matches(run_tier("cifar10-subset", tmp_path), "cifar10-subset")
