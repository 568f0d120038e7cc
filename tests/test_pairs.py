"""The intervention-pair criterion on shapes' true factors, without a GAN (structsearch/pairs.py).

Every truth: 5000 pairs (seed 0) of shapes' LinearSCM, all 25 DAGs scored in factor coordinates
and in the truth's exogenous coordinates (the map fitted on the rows before and applied to both).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from gan import dag
from gan.latents import get_spec
from gan.pairs import sample_pair_latents
from gan.prior import CodePrior
from structsearch import pairs
from structsearch.datasets.shapes import GRAPHS, NODES, LinearSCM
from structsearch.graph import preset
from structsearch.identifiability import bic_per_row, factor_values

DAGS = dag.all_dags(NODES)
EMPTY = ()
N = 5000


def _values(truth: str, n: int = N, seed: int = 0, resample_noise: bool = False):
    """(v, v', target) in factor values. ``resample_noise``: the target's noise term is redrawn
    instead of its value being set (not a perfect intervention: the trap's data)."""
    scm = LinearSCM(GRAPHS[truth], n_levels=16, noise=0.5)
    rng = np.random.default_rng(seed)
    if not resample_noise:
        before, after, target = scm.sample_pairs(n, rng)
    else:
        noise = scm.draw_noise(n, rng)
        target, fresh, moved = rng.integers(3, size=n), scm.draw_noise(n, rng), noise.copy()
        moved[np.arange(n), target] = fresh[np.arange(n), target]
        before, after = scm.from_noise(noise), scm.from_noise(moved)
    return scm.values(before), scm.values(after), target


@pytest.fixture(scope="module", params=["collider", "chain", "fork"])
def scored(request):
    truth = request.param
    before, after, target = _values(truth)
    exo_before, exo_after = pairs.exogenous(before, after, GRAPHS[truth])
    return {
        "truth": truth,
        "edges": GRAPHS[truth],
        "values": (before, after),
        "exo": (exo_before, exo_after),
        "target": target,
        "factor": pairs.score_dags(before, after, DAGS),
        "exogenous": pairs.score_dags(exo_before, exo_after, DAGS),
    }


def _get(results, edges) -> pairs.PairScore:
    return results[DAGS.index(edges)]


def test_conditional_density_matches_scipy() -> None:
    """The Sherman-Morrison mixture density equals scipy's multivariate normals, averaged over targets."""
    rng = np.random.default_rng(0)
    before, after = rng.normal(size=(40, 3)), rng.normal(size=(40, 3))
    fit = pairs.fit_linear(before, (("q1", "q2"), ("q2", "q3"), ("q1", "q3")))
    tau = 0.3
    effects = np.linalg.inv(np.eye(3) - fit.weights)
    mean, var = before.mean(0), before.var(0)
    expected = np.zeros(40)
    for k in range(3):
        t = effects[:, k]
        cov = var[k] * np.outer(t, t) + tau**2 * np.eye(3)
        expected += np.array(
            [stats.multivariate_normal(b + (mean[k] - b[k]) * t, cov).pdf(a) for b, a in zip(before, after)]
        )
    got = pairs.conditional_logliks(before, after, fit, tau)
    np.testing.assert_allclose(got, np.log(expected / 3), rtol=1e-10)


def test_observational_part_is_pgmpys_bic() -> None:
    """log p_G(v) minus BIC's penalty (without tau's parameter) is pgmpy's linear-Gaussian BIC."""
    before, after = factor_values("chain", 2000, seed=3), factor_values("chain", 2000, seed=4)
    reference = bic_per_row(before, DAGS)
    ours = [s.observational - (s.penalty - 0.5 * math.log(2000) / 2000) for s in pairs.score_dags(before, after)]
    np.testing.assert_allclose(ours, reference, atol=1e-12)


def test_exogenous_map_is_unit_triangular_and_fitted_on_before() -> None:
    before, after, _ = _values("collider", 2000)
    exo_before, exo_after = pairs.exogenous(before, after, GRAPHS["collider"])
    np.testing.assert_array_equal(exo_before[:, :2], before[:, :2])  # roots kept
    assert np.abs(exo_before[:, :2].T @ (exo_before[:, 2] - exo_before[:, 2].mean())).max() < 1e-9
    map_ = np.linalg.lstsq(np.column_stack([before, np.ones(2000)]), exo_before, rcond=None)[0][:3]  # y = v M + c
    assert np.linalg.det(map_) == pytest.approx(1.0)
    np.testing.assert_allclose(
        exo_after, np.column_stack([after, np.ones(2000)]) @ np.vstack([map_, exo_before[0] - before[0] @ map_])
    )


def test_bad_input_is_refused() -> None:
    before = np.zeros((20, 3))
    with pytest.raises(ValueError, match="cycle q1 -> q2 -> q1"):
        pairs.pair_score(before, before, (("q1", "q2"), ("q2", "q1")))
    with pytest.raises(ValueError, match="one shape"):
        pairs.pair_score(before, before[:, :2], ())


# ---- (a) factor coordinates: the true DAG itself wins ----------------------------------------------


def test_in_factor_coordinates_the_true_dag_scores_best_of_all_25(scored) -> None:
    factor, edges = scored["factor"], scored["edges"]
    truth = _get(factor, edges)
    others = [s for s in factor if s.edges != edges]
    assert truth.score > max(s.score for s in others)
    # Every DAG that lacks a true edge or reverses one is far behind; only the truth's supersets
    # (an extra edge whose coefficient fits ~0) come close.
    not_supersets = [s for s in others if not set(edges) <= set(s.edges)]
    assert truth.score - max(s.score for s in not_supersets) > 2.5
    assert max(truth.score - s.score for s in others if set(edges) < set(s.edges)) < 0.05


def test_interventions_tell_markov_equivalent_dags_apart(scored) -> None:
    """Observationally the class ties (BIC is score-equivalent); with the pairs the truth wins by nats."""
    factor, edges = scored["factor"], scored["edges"]
    truth = _get(factor, edges)
    equivalent = [s for s in factor if s.edges != edges and dag.markov_equivalent(s.edges, edges)]
    assert len(equivalent) == (0 if scored["truth"] == "collider" else 2)
    for s in equivalent:
        assert s.observational - s.penalty == pytest.approx(truth.observational - truth.penalty, abs=1e-9)
        assert truth.score - s.score > 2.5


# ---- (b) exogenous coordinates: the trap ------------------------------------------------------------


def test_the_data_sets_the_trap(scored) -> None:
    """In exogenous coordinates nearly every pair changes one code (beyond quantization): a criterion
    that counts changed codes explains it with the empty graph. In factor coordinates it does not."""
    changed = {
        name: (np.abs(after - before) > 0.2).sum(axis=1)
        for name, (before, after) in (("factor", scored["values"]), ("exo", scored["exo"]))
    }
    assert (changed["exo"] <= 1).mean() > 0.98
    assert (changed["factor"] <= 1).mean() < 0.8


def test_in_exogenous_coordinates_every_dag_ties_with_the_empty_graph(scored) -> None:
    """The observational exogenous coordinates are uncorrelated, so every DAG's fitted SCM there is the
    empty one (coefficients ~0): the criterion cannot, and does not claim to, pick a graph in them."""
    exo = scored["exogenous"]
    best = max(s.score for s in exo)
    assert max(best - s.score for s in exo) < 0.02
    assert best - _get(exo, EMPTY).score < 1e-9  # the sparsest of the tie, by BIC's penalty


def test_the_truth_in_factor_coordinates_beats_every_dag_in_exogenous_coordinates(scored) -> None:
    """The exogenous map has determinant 1, so the log-likelihoods compare. The gap is the do(child)
    pairs' cross-entropy gap, (1/3) sum over children of D(1 - R^2), as the module docstring derives."""
    edges = scored["edges"]
    truth, empty_exo = _get(scored["factor"], edges), _get(scored["exogenous"], EMPTY)
    before = scored["values"][0]
    fit = pairs.fit_linear(before, edges)
    children = [j for j in range(3) if fit.has_parents[j]]
    predicted = sum(pairs.cross_entropy_gap(fit.variance[j] / before[:, j].var()) for j in children) / 3
    gap = truth.score - max(s.score for s in scored["exogenous"])
    assert predicted > 1.0 and gap == pytest.approx(predicted, rel=0.15)
    target = scored["target"]
    for k in range(3):  # where the gap comes from: the pairs whose target has parents
        diff = (truth.per_pair - empty_exo.per_pair)[target == k].mean()
        assert diff > 2.5 if k in children else abs(diff) < 0.6, (k, diff)


def test_with_resampled_noise_instead_of_perfect_interventions_the_exogenous_reading_wins() -> None:
    """The criterion measures what separates the cases, not the coordinates: when an "intervention"
    redraws the target's noise term, the empty graph in exogenous coordinates is the right model
    and beats the truth in factor coordinates."""
    for truth in ("collider", "chain"):
        before, after, _ = _values(truth, resample_noise=True)
        factor = pairs.pair_score(before, after, GRAPHS[truth])
        exo = pairs.pair_score(*pairs.exogenous(before, after, GRAPHS[truth]), EMPTY)
        assert exo.score > factor.score + 0.05, truth


# ---- the generator's pair sampler on a chain: descendants two steps down are recomputed ------------


def test_pair_latents_on_a_chain_recompute_every_descendant_and_keep_the_rest() -> None:
    """c1 -> c2 -> c3 (gan/pairs.py): do(c1) recomputes c2 from its old noise AND c3 from the new c2
    (a grandchild: the collider of tests/test_pair_training.py has none); do(c2) keeps c1 and
    recomputes c3; do(c3) keeps c1 and c2. The target takes the fresh marginal draw. Expected values
    by hand from the mechanisms' weights and the replayed random draws, not through ``solve``."""
    spec, n = get_spec("shapes"), 20_000
    prior = CodePrior(spec, preset("chain", spec).parents())
    z, c, c_after = sample_pair_latents(prior, n, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)  # replay: the shared noise, the targets, the fresh draw
    _, noise = spec.sample(n, g)
    target = torch.randint(3, (n,), generator=g)
    _, fresh = prior.sample(n, g)
    m2, m3 = prior.mechanisms
    assert (m2.column, m2.parents, m3.column, m3.parents) == (1, (0,), 2, (1,))

    def child(m, parent: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return (m.weight * parent + m.noise_scale * noise[rows, m.column]).clamp(-1, 1)

    do1, do2, do3 = (target == k for k in range(3))
    assert torch.equal(c_after[do1, 0], fresh[do1, 0])
    assert torch.equal(c_after[do1, 1], child(m2, c_after[do1, 0], do1))
    assert torch.equal(c_after[do1, 2], child(m3, c_after[do1, 1], do1))  # the grandchild follows the new c2
    assert (c_after[do1, 2] != c[do1, 2]).float().mean() > 0.9
    assert torch.equal(c_after[do2, 0], c[do2, 0]) and torch.equal(c_after[do2, 1], fresh[do2, 1])
    assert torch.equal(c_after[do2, 2], child(m3, c_after[do2, 1], do2))
    assert torch.equal(c_after[do3, :2], c[do3, :2]) and torch.equal(c_after[do3, 2], fresh[do3, 2])
    assert torch.equal(c[:, 1], child(m2, c[:, 0], slice(None)))  # before: the plain SCM
