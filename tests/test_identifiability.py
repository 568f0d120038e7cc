"""The coordinate check: known answers on shapes' true factors, the helpers, and the CLI command."""

from __future__ import annotations

import numpy as np
import pytest

from structsearch import cli
from structsearch.datasets.shapes import GRAPHS
from structsearch.identifiability import (
    MAX_CONDITION,
    VERDICT_CHANGES,
    bic_per_row,
    coordinate_check,
    exogenous,
    factor_values,
    format_table,
    random_remix,
)

CHAIN = GRAPHS["chain"]
COLLIDER = GRAPHS["collider"]
COMPLETE = (("q1", "q2"), ("q1", "q3"), ("q2", "q3"))


@pytest.fixture(scope="module")
def collider_results():
    return coordinate_check("collider", n=5000, seed=0, n_remixes=3)


def test_bic_is_score_equivalent() -> None:
    """Markov-equivalent DAGs get the same linear-Gaussian BIC; a collider does not."""
    values = factor_values("chain", 2000, seed=3)
    chain, reversed_chain, collider = bic_per_row(values, [CHAIN, (("q2", "q1"), ("q3", "q2")), COLLIDER])
    assert chain == pytest.approx(reversed_chain, abs=1e-9)
    assert collider < chain - 0.01


def test_exogenous_residuals_are_uncorrelated_with_their_parents() -> None:
    values = factor_values("collider", 2000, seed=1)
    exo = exogenous(values, COLLIDER)
    np.testing.assert_array_equal(exo[:, :2], values[:, :2])  # roots kept
    assert abs(exo[:, 2].mean()) < 1e-12
    assert np.abs(exo[:, :2].T @ exo[:, 2]).max() < 1e-9  # OLS residual is orthogonal to its regressors
    assert abs(np.corrcoef(values[:, 0], values[:, 2])[0, 1]) > 0.3  # the raw child is not


def test_remix_is_invertible_with_bounded_condition() -> None:
    values = factor_values("collider", 500, seed=0)
    remixed, cond = random_remix(values, np.random.default_rng(0))
    assert 1 <= cond <= MAX_CONDITION
    z = (values - values.mean(axis=0)) / values.std(axis=0)
    a, *_ = np.linalg.lstsq(z, remixed, rcond=None)  # remixed = z A^T exactly
    np.testing.assert_allclose(z @ a, remixed, atol=1e-10)
    assert np.linalg.cond(a) == pytest.approx(cond)


@pytest.mark.parametrize("truth", ["collider", "chain", "fork"])
@pytest.mark.parametrize("seed", [0, 1])
def test_in_factor_coordinates_the_truth_wins(truth: str, seed: int) -> None:
    factors = coordinate_check(truth, n=5000, seed=seed, n_remixes=0)[0]
    assert factors.name == "factors"
    assert factors.equivalent and factors.truth_rank == 1
    assert factors.n_tied == (1 if truth == "collider" else 3)  # a collider's class is itself; a chain's has 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_exogenous_coordinates_the_collider_becomes_the_empty_graph(seed: int) -> None:
    exo = coordinate_check("collider", n=5000, seed=seed, n_remixes=0)[1]
    assert exo.name == "exogenous"
    assert exo.best_edges == () and not exo.equivalent and exo.truth_rank > 1


def test_under_remixes_seed_0_a_complete_graph_wins(collider_results) -> None:
    for remix in collider_results[2:]:
        assert remix.best_edges == COMPLETE and remix.n_tied == 6
        assert not remix.equivalent and remix.truth_rank > 1


def test_under_remixes_a_complete_graph_usually_wins_and_the_collider_rarely() -> None:
    """18 remixes: over 40 seeds about 4 in 5 gave a complete graph and 1 in 13 the collider's class."""
    remixes = [r for seed in range(6) for r in coordinate_check("collider", n=5000, seed=seed, n_remixes=3)[2:]]
    assert sum(r.best_edges == COMPLETE for r in remixes) >= 12
    assert sum(r.equivalent for r in remixes) <= 3


def test_table_has_one_row_per_coordinate_system_and_the_verdict(collider_results) -> None:
    lines = format_table(collider_results).splitlines()
    assert len(lines) == 1 + 1 + 5 + 1  # truth, header, rows, verdict
    assert lines[2].split()[:2] == ["factors", "width,"] and "q1->q3, q2->q3" in lines[2]
    assert "(no edges)" in lines[3]
    assert lines[-1] == "verdict: " + VERDICT_CHANGES


def test_cli_prints_the_table(capsys) -> None:
    assert cli.main(["identifiability", "--shapes-graph", "collider", "--n", "2000", "--remixes", "2"]) == 0
    out = capsys.readouterr().out
    assert "exogenous" in out and "remix 2" in out and "remix 3" not in out
    assert VERDICT_CHANGES in out


def test_cli_accepts_a_graph_as_text(capsys) -> None:
    assert cli.main(["identifiability", "--shapes-graph", "q2->q1, q2->q3", "--n", "2000", "--remixes", "0"]) == 0
    assert "truth: q2->q1, q2->q3;" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("graph", "message"), [("q1->q2, q2->q1", "cycle through q1, q2"), ("q1->q9", "bad edge q1->q9; nodes are q1")]
)
def test_cli_bad_graph_is_a_one_line_usage_error(capsys, graph: str, message: str) -> None:
    assert cli.main(["identifiability", "--shapes-graph", graph]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert message in captured.err and "Traceback" not in captured.err
