"""bench/seed_null.py: the seed arithmetic behind issue 15's verdict on the 2-point bound."""

from __future__ import annotations

import json

import pytest

from tests import bench_scripts


@pytest.fixture(scope="module")
def bench():
    """bench/seed_null.py as a module."""
    return bench_scripts.load("seed_null")


def test_seeds_needed_is_lehrs_rule(bench) -> None:
    # Lehr's rule: about 16 / d^2 per arm for 80% power at two-sided 5%, d = delta / sd
    assert bench.seeds_needed(1.0, 1.0) == 16
    assert bench.seeds_needed(0.086, 0.02) == 291  # 2 * (2.8016 * 4.3)^2 = 290.3
    assert bench.seeds_needed(0.02, 0.02) == 16
    assert bench.seeds_needed(0.04, 0.02) == 63  # twice the spread, four times the seeds


def test_rows_pair_by_seed_and_the_null_is_not_its_own_reference(bench, tmp_path) -> None:
    rows = [{"model": "infogan", "seed": s, "step": 1000, "cat_acc": 0.70 + 0.01 * s} for s in range(6)]
    rows += [
        {"model": "null", "seed": s, "step": 1000, "cat_acc": 0.70 + 0.01 * s + (0.002 if s % 2 else -0.001)}
        for s in range(6)
    ]
    rows += [{"model": "worse", "seed": s, "step": 1000, "cat_acc": 0.60 + 0.01 * s} for s in range(6)]
    rows += [{"model": "worse", "seed": 9, "step": 500, "cat_acc": 0.0}]  # another length: left out
    first = tmp_path / "a.json"
    first.write_text(json.dumps(rows))
    later = tmp_path / "b.json"  # a later file cannot replace a (model, seed) the first one has
    later.write_text(json.dumps([{"model": "worse", "seed": 0, "step": 1000, "cat_acc": 0.99}]))
    acc = bench.load([first, later], 1000)
    assert acc["worse", 0] == pytest.approx(0.60) and ("worse", 9) not in acc
    lines = bench.table(acc, "infogan", "null", ["worse"])
    worse = next(line for line in lines if line.startswith("| worse |"))
    assert "-0.100 [-0.100, -0.100]" in worse
    cells = [c.strip() for c in worse.split("|")]
    assert float(cells[6]) < 0.05  # Wilcoxon: six paired differences, all -0.1
    assert float(cells[8]) <= float(cells[7])  # twelve reference runs give more power than six
    null = next(line for line in lines if line.startswith("| null |"))
    assert "[-0.001, +0.002]" in null  # against infogan alone, not against itself
