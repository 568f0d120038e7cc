from __future__ import annotations

import math

import numpy as np
import pytest
from pgmpy.structure_score import BICCondGauss, BICGauss

from gan.latents import LatentSpec, get_spec
from structsearch.graph import Graph, preset
from structsearch.scoring import bic, delta_bic, make_table, n_params, saturated_q_families, score_families

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


# ---- known answers: the saturated reference and the declared-class penalty --------------------

CODE_ORDERS = ["cont,cont,cont", "cat10,cont,cont", "cont,cat10,cont", "cont,cont,cat10"]


def _codes_table(spec: LatentSpec, n: int, seed: int, n_used: int = 10, dependent: bool = False):
    """Codes i.i.d. (categorical uniform over its first ``n_used`` or k classes, continuous U(-1, 1)).

    With ``dependent`` every continuous code also takes 0.8 times the sum of the codes before it
    (a categorical one as its class index / 10), so that no edge is free.
    """
    rng = np.random.default_rng(seed)
    cols: dict[str, np.ndarray] = {}
    for i, code in enumerate(spec.codes):
        if code.kind == "categorical":
            cols[f"q{i + 1}"] = rng.integers(0, min(n_used, code.n_classes), size=n)
        else:
            before = sum((v / 10.0 if v.dtype.kind == "i" else v for v in cols.values()), np.zeros(n))
            cols[f"q{i + 1}"] = rng.uniform(-1, 1, size=n) + (0.8 * before if dependent else 0.0)
    return make_table(cols, spec)


@pytest.mark.parametrize("codes", CODE_ORDERS)
def test_the_complete_graph_is_the_saturated_reference_and_scores_zero(codes: str) -> None:
    spec = LatentSpec.parse(f"{codes};noise=0")
    complete = preset("complete", spec)
    saturated = saturated_q_families(complete)
    assert sum(len(ps) for ps in saturated.values()) == 3  # saturated: every pair of q nodes joined
    for v, ps in saturated.items():  # ... and the categorical rule obeyed, whatever the code order
        if spec.code(v).kind == "categorical":
            assert all(spec.code(u).kind == "categorical" for u in ps)
    assert {v: set(ps) for v, ps in saturated.items()} == {
        v: {u for u in ps if u[0] == "q"} for v, ps in complete.parents().items()
    }
    for seed in (0, 1):
        assert delta_bic(complete, _codes_table(spec, 1500, seed, dependent=True)) == pytest.approx(0.0, abs=1e-12)


def _family_loglik(y: np.ndarray, x: np.ndarray, groups: np.ndarray, ddof: int) -> float:
    """Sum over groups g of the least-squares Gaussian log-likelihood of y on [1, x] within g.

    With RSS_g the residual sum of squares and s_g^2 = RSS_g / (n_g - ddof):
    l = sum_g -n_g/2 log(2 pi s_g^2) - RSS_g / (2 s_g^2). ddof=0 is the MLE (statsmodels' GLM,
    pgmpy's LogLikelihoodGauss); ddof=1 is LogLikelihoodCondGauss, whose conditional Gaussian
    comes from the unbiased sample covariance of (y, x) in each group.
    """
    total = 0.0
    for g in np.unique(groups):
        yg, xg = y[groups == g], x[groups == g]
        design = np.column_stack([np.ones(len(yg)), xg])
        resid = yg - design @ np.linalg.lstsq(design, yg, rcond=None)[0]
        rss = float(resid @ resid)
        s2 = rss / (len(yg) - ddof)
        total += -0.5 * len(yg) * np.log(2 * np.pi * s2) - rss / (2 * s2)
    return total


def _saved_params(spec: LatentSpec) -> int:
    r"""Parameters the independent q graph saves against the saturated one.

    Saturated, with categorical classes k_1..k_c (K = prod k_j) and m continuous codes: the full
    table over the categorical codes, K - 1, and per configuration a Gaussian over the continuous
    ones, m means and m(m+1)/2 covariances (the j-th continuous node, j = 0..m-1, has j continuous
    parents: K(j + 2) parameters, summing to K m(m+3)/2). Independent: sum_j (k_j - 1) + 2m. So

        saved = (K - 1) + K m (m + 3) / 2 - sum_j (k_j - 1) - 2m,

    46 for cat10,cont,cont (cont,cat10,cont and cont,cont,cat10 alike), 3 for cont,cont,cont.
    """
    ks = [c.n_classes for c in spec.codes if c.kind == "categorical"]
    big_k, m = math.prod(ks), len(spec.codes) - len(ks)
    return (big_k - 1) + big_k * m * (m + 3) // 2 - sum(k - 1 for k in ks) - 2 * m


def _independent_minus_saturated_loglik(spec: LatentSpec, table) -> float:
    """l(independent) - l(saturated) with numpy (one categorical code at most: only continuous families differ)."""
    cats = [f"q{i + 1}" for i, c in enumerate(spec.codes) if c.kind == "categorical"]
    conts = [f"q{i + 1}" for i, c in enumerate(spec.codes) if c.kind == "continuous"]
    n = len(table)
    groups = table[cats[0]].to_numpy(dtype=np.int64) if cats else np.zeros(n, dtype=np.int64)
    ddof = 1 if cats else 0
    diff = 0.0
    for j, v in enumerate(conts):  # saturated parents of v: the categorical code, earlier continuous codes
        y, earlier = table[v].to_numpy(), table[conts[:j]].to_numpy().reshape(n, j)
        diff += _family_loglik(y, np.zeros((n, 0)), np.zeros(n), ddof) - _family_loglik(y, earlier, groups, ddof)
    return diff


@pytest.mark.parametrize("codes", CODE_ORDERS)
def test_independent_codes_score_the_declared_penalty_whatever_the_classes_used(codes: str) -> None:
    spec = LatentSpec.parse(f"{codes};noise=0")
    n = 2000
    assert _saved_params(spec) == (46 if "cat10" in codes else 3)
    penalties = []
    for n_used in (10, 7, 3):
        table = _codes_table(spec, n, seed=n_used, n_used=n_used)
        score = delta_bic(preset("independent", spec), table)
        penalties.append(score - _independent_minus_saturated_loglik(spec, table) / n)
        assert penalties[-1] == pytest.approx(0.5 * np.log(n) / n * _saved_params(spec), rel=1e-9, abs=1e-12)
    assert max(penalties) - min(penalties) < 1e-12  # the penalty part ignores the classes used


def test_penalty_matches_pgmpy_when_every_class_occurs() -> None:
    """pgmpy's BICCondGauss / BICGauss are the oracle for the count where they agree (all classes used)."""
    spec = LatentSpec.parse("cat3,cat4,cont,cont;noise=0")
    table = _codes_table(spec, 1200, seed=0, dependent=True)
    families = {"q1": (), "q2": ("q1",), "q3": ("q1", "q2"), "q4": ("q1", "q2", "q3")}
    reference = BICCondGauss(table)
    expected = sum(reference.local_score(v, ps) for v, ps in families.items())
    assert score_families(families, table) == pytest.approx(expected, rel=1e-12)
    assert n_params(table, "q4", ("q1", "q2", "q3")) == 12 * 3 and n_params(table, "q2", ("q1",)) == 3 * 3

    cont = _table(500, 0)
    families = {"q1": (), "q2": ("q1",), "q3": ("q1", "q2")}
    reference = BICGauss(cont)
    expected = sum(reference.local_score(v, ps) for v, ps in families.items())
    assert score_families(families, cont) == pytest.approx(expected, rel=1e-12)


def test_penalty_counts_declared_classes_not_the_classes_that_occur() -> None:
    spec = LatentSpec.parse("cat10,cont;noise=0")
    table = _codes_table(spec, 300, seed=0, n_used=3)
    assert n_params(table, "q1", ()) == 9  # pgmpy counts 2
    assert n_params(table, "q2", ("q1",)) == 20  # pgmpy counts 6


# ---- structure learning: the baseline to a search ---------------------------------------------------

from gan import dag  # noqa: E402
from structsearch.datasets.shapes import GRAPHS  # noqa: E402
from structsearch.identifiability import factor_values  # noqa: E402
from structsearch.scoring import learn_structure  # noqa: E402

NODES = ["q1", "q2", "q3"]


def _factors(graph: str, n: int = 2000, seed: int = 0):
    return make_table(dict(zip(NODES, factor_values(graph, n, seed).T)), CONT3)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("graph", ["collider", "chain", "fork"])
def test_hill_climb_and_pc_recover_the_class_of_shapes_true_graph(graph: str, seed: int) -> None:
    """On shapes' true factor values (no GAN): hill-climb's DAG is Markov-equivalent to the truth, and
    PC returns the truth's CPDAG: the collider fully directed, the chain's and fork's edges undirected."""
    table = _factors(graph, seed=seed)
    climbed = learn_structure(table, "hill-climb")
    assert climbed.kind == "dag" and climbed.undirected == ()
    assert dag.markov_equivalent(climbed.directed, GRAPHS[graph]) and climbed.equivalent_to(GRAPHS[graph], NODES)
    found = learn_structure(table, "pc")
    assert found.kind == "pdag" and (found.directed, found.undirected) == dag.cpdag(GRAPHS[graph], NODES)
    assert found.equivalent_to(GRAPHS[graph], NODES)
    wrong = "chain" if graph == "collider" else "collider"
    assert not climbed.equivalent_to(GRAPHS[wrong], NODES) and not found.equivalent_to(GRAPHS[wrong], NODES)


def test_pc_reports_the_collider_directed_and_the_chain_undirected() -> None:
    assert learn_structure(_factors("collider"), "pc").directed == (("q1", "q3"), ("q2", "q3"))
    chain = learn_structure(_factors("chain"), "pc")
    assert chain.directed == () and chain.undirected == (("q1", "q2"), ("q2", "q3"))


def test_hill_climb_restarts_find_the_collider_that_a_single_climb_misses() -> None:
    """From the empty graph alone, pgmpy's hill climb orients q1-q3 the wrong way first and ends in a
    complete DAG on this sample; the random restarts reach the collider's better BIC."""
    table = _factors("collider", seed=0)
    single = learn_structure(table, "hill-climb", restarts=0)
    assert len(single.directed) == 3 and not single.equivalent_to(GRAPHS["collider"], NODES)
    assert learn_structure(table, "hill-climb", restarts=10).equivalent_to(GRAPHS["collider"], NODES)


def test_hill_climb_never_gives_a_categorical_code_a_continuous_parent() -> None:
    spec = get_spec("cat3,cont")
    rng = np.random.default_rng(0)
    classes = rng.integers(3, size=1000)
    table = make_table({"q1": classes, "q2": classes - 1 + 0.3 * rng.normal(size=1000)}, spec)
    assert learn_structure(table, "hill-climb").directed == (("q1", "q2"),)
    assert "BICCondGauss" in learn_structure(table, "hill-climb").detail


def test_unknown_learner_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown structure learner 'ges'; expected one of hill-climb, pc"):
        learn_structure(_factors("collider", n=100), "ges")
