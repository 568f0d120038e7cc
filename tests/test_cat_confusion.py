"""bench/cat_confusion.py: which digits a categorical code merges, and where R_G's demand falls."""

from __future__ import annotations

import numpy as np
import pytest

from tests import bench_scripts


@pytest.fixture(scope="module")
def bench():
    """bench/cat_confusion.py as a module."""
    return bench_scripts.load("cat_confusion")


def test_a_code_that_splits_4_and_9_by_something_else_loses_both(bench) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 5000)
    predicted = (labels + 3) % 10  # a relabelling: every digit keeps its class
    both = np.isin(labels, [4, 9])
    predicted[both] = np.where(rng.random(both.sum()) < 0.5, 7, 2)  # 4s and 9s: two classes, at random
    report = bench.digit_report(predicted, labels, 10)
    assert report["own"] == 8
    lost = {digit: (kept, to) for digit, kept, to, _ in report["lost"]}
    assert set(lost) == {4, 9}
    assert lost[4][1] == 9 and lost[9][1] == 4  # each lost its images to the other's class
    assert all(0.4 < kept < 0.6 for kept, _ in lost.values())
    assert report["cat_acc"] == pytest.approx(1 - both.mean() / 2, abs=0.02)
    assert report["digit_of"][3] == 0  # class 3 holds the 0s

    perfect = bench.digit_report((labels + 3) % 10, labels, 10)
    assert perfect["own"] == 10 and perfect["lost"] == [] and perfect["cat_acc"] == 1.0


def test_class_shares_put_the_demand_on_the_class_whose_residual_is_off(bench) -> None:
    rng = np.random.default_rng(1)
    classes = rng.integers(0, 10, 20000)
    residual = rng.normal(size=20000) + np.where(classes == 6, 1.0, 0.0) + np.where(classes == 1, -0.5, 0.0)
    shares = bench.class_shares(classes, residual, 10)
    assert shares.sum() == pytest.approx(1.0)
    assert np.argsort(shares)[::-1][:2].tolist() == [6, 1]
    assert shares[6] > 0.5
