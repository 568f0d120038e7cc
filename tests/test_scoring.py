from __future__ import annotations

import numpy as np
import pytest

from gan.latents import get_spec
from structsearch.graph import Graph, preset
from structsearch.scoring import bic, delta_bic, make_table

CONT2 = get_spec("cont,cont")
CONT3 = get_spec("cont,cont,cont")


def _table(n: int, seed: int, spec=CONT3):
    rng = np.random.default_rng(seed)
    q1, q2 = rng.normal(size=n), rng.normal(size=n)
    q3 = 0.9 * q1 - 0.7 * q2 + 0.5 * rng.normal(size=n)
    cols = {"q1": q1, "q2": q2, "q3": q3}
    return make_table({k: cols[k] for k in list(cols)[: len(spec.codes)]}, spec)


@pytest.mark.parametrize("seed", [0, 1])
def test_bic_is_score_equivalent(seed: int) -> None:
    table = _table(400, seed, CONT2)
    forward = bic(Graph.parse("q1->q2", CONT2), table)
    backward = bic(Graph.parse("q2->q1", CONT2), table)
    assert forward == pytest.approx(backward, rel=1e-9)


def test_delta_bic_prefers_the_true_graph_and_is_zero_for_the_saturated_one() -> None:
    table = _table(2000, 0)
    truth = delta_bic(Graph.parse("q1->q3, q2->q3", CONT3), table)
    independent = delta_bic(preset("independent", CONT3), table)
    complete = delta_bic(preset("complete", CONT3), table)
    assert complete == pytest.approx(0.0, abs=1e-12)
    assert independent < truth  # missing the real dependence costs likelihood
    assert truth > complete  # the needless q1->q2 edge costs a BIC penalty


def test_delta_bic_handles_categorical_codes() -> None:
    spec = get_spec("cat3,cont")
    rng = np.random.default_rng(0)
    k = rng.integers(0, 3, size=1500)
    q2 = np.array([-1.0, 0.0, 2.0])[k] + 0.3 * rng.normal(size=1500)
    table = make_table({"q1": k, "q2": q2}, spec)
    dependent = delta_bic(Graph.parse("q1->q2", spec), table)
    independent = delta_bic(preset("independent", spec), table)
    assert dependent > independent
