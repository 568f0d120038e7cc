r"""Scoring a graph over coordinates from intervention pairs (weak supervision; docs/design.md section 8).

The data: pairs (v, v') of coordinates (codes, factors) of one sample before and after a perfect
intervention on one unrecorded variable, the other exogenous noise held fixed (ILCM, Brehmer et
al. 2022). The question: which DAG G over the coordinates, with perfect interventions on them,
generates such pairs?

**The model of G.** Fit G's linear-Gaussian SCM to the observational rows v by least squares,
v_j = b_j + B_j v + e_j with e_j ~ N(0, s_j^2), and simulate a pair: pick a target k uniformly,
set v'_k to a fresh draw a ~ N(m_k, V_k) from k's marginal (the sample mean and variance of v_k),
and recompute every other coordinate from its own fitted noise e_j, now on the new values of its
parents. Non-descendants of k in G keep their values; the change of the others is linear in a:

    v' = v + (a - v_k) t_k,        t_k = column k of (I - B)^{-1}  (k's total effects; t_kk = 1).

So given v and k, v' is Gaussian, N(v + (m_k - v_k) t_k, V_k t_k t_k^T), on the line through v
along t_k. A real v' is never exactly on that line (a code read off an image, a quantized
factor), so every coordinate of v' carries a reading error N(0, tau^2), tau fitted by maximum
likelihood (between ``TAU_FLOOR`` and ``TAU_CEIL`` times the coordinates' rms spread). The model's pair density is

    p_G(v, v') = p_G(v) * 1/K sum_k N(v'; v + (m_k - v_k) t_k, V_k t_k t_k^T + tau^2 I),

with p_G(v) the fitted SCM's observational density (its BIC's log-likelihood) and K the number
of coordinates. The criterion is the mean log-likelihood of the real pairs under it, minus BIC's
penalty 1/2 log(n) per parameter (an intercept, a coefficient per parent and a variance per
coordinate, and tau), per pair. Higher is better.

**Why it separates the truth from the empty graph in exogenous coordinates (the trap).** Take the
collider w -> h <- t and its exogenous coordinates y = (w, t, e), e = h - b - a w - c t, the map
applied to v and to v'. After do(w), y' changes in w alone (e' = e: h is recomputed from the same
noise), so in y every intervention changes one coordinate and a criterion that counts changed
codes explains every pair with the empty graph, as well as the truth explains them in factor
coordinates. This criterion also asks *how* the changed coordinate changed. After do(h) the real
pairs have a fresh h' ~ N(m_h, V_h) independent of (w, t), so in y

    e' = h' - b - a w - c t,    Var(e' | w, t) = V_h,    E(e' | w, t) = m_h - b - a w - c t,

a value that depends on the unchanged w and t and spreads V_h / s_e^2 = 1 / (1 - R^2) times wider
than e. Every DAG fitted to the observational y is the empty one up to sampling error (its
covariance is diagonal: e is a least-squares residual on w and t), so every DAG in y predicts
e' ~ N(0, s_e^2) independent of (w, t): a resampled noise term. Against the truth in factor
coordinates, which predicts h' exactly as it is, each do(h) pair loses in expectation the Gaussian
cross-entropy gap

    D(rho) = 1/2 [log rho - 1 + (2 - rho) / rho],     rho = s_e^2 / V_h = 1 - R^2(h | w, t),

3.2 nats at R^2 = 0.8. The do(w) and do(t) pairs are the same pairs in other coordinates and
score nearly the same in both systems (the reading error is isotropic in each system, which moves
a root's term by up to about log |t_k|). The map v -> y is unit-triangular (det 1) on v and on v',
so the two log-likelihoods are densities of the same pairs in the same measure and compare directly
(coordinates y = A v + c with |det A| != 1 would need 2 log |det A| added to y's score first).

**What holds** (tests/test_pairs.py, 5000 pairs of shapes' factors per truth, seed 0):

* in factor coordinates the true DAG scores best of all 25 over three nodes, Markov-equivalent
  ones included (an intervention on a chain's root moves its children, one on a reversed chain's
  root does not): every DAG missing or reversing a true edge is more than 2.5 nats per pair
  behind; only the truth's supersets (an extra edge fitted ~0) come within 0.05, and BIC's
  penalty and the extra edge's wrong predictions put them behind;
* in exogenous coordinates all 25 DAGs tie within 0.02 and the empty graph is the best there, as
  it must be: no DAG over y with perfect interventions on y can make e' depend on w and t;
* the truth in factor coordinates beats every DAG in exogenous coordinates by about
  (1/K) sum_children D(rho) per pair (1.16 measured, 1.06 predicted for the collider; 2.06 / 2.15
  chain; 2.23 / 2.18 fork), and the gap sits in the do(child) pairs;
* with noise-resampling "interventions" (the trap's data) the exogenous reading wins instead.

So the criterion ranks (coordinates, graph) together. It cannot make wrong coordinates pick the
true graph; it says that those coordinates are worse, which is what a search over models whose
codes differ needs.

:func:`energy_distance` is the two-sample statistic of the ``pair_energy`` score
(structsearch/scores.py), on Q's codes of real and of generated pairs.

Numpy and scipy only; the columns of v are the nodes q1, q2, ... in order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from gan import dag

Edges = tuple[tuple[str, str], ...]
TAU_FLOOR = 1e-3  # the smallest reading error tau, as a fraction of the coordinates' rms spread
TAU_CEIL = 1.0  # the largest, same units
N_GRID = 13  # log-spaced values of tau tried before the bounded refinement


@dataclass(frozen=True)
class LinearFit:
    """A linear-Gaussian SCM fitted by least squares: v_j = intercept_j + weights_j . v + e_j."""

    intercept: np.ndarray  # (d,)
    weights: np.ndarray  # (d, d): weights[j, i] is i's coefficient in j's mechanism (0 unless i -> j)
    variance: np.ndarray  # (d,) ML variance of each e_j (the mean squared residual)
    has_parents: np.ndarray  # (d,) bool

    def residuals(self, values: np.ndarray) -> np.ndarray:
        """The fitted noise e of rows v (n, d): v - intercept - v B^T."""
        return values - self.intercept - values @ self.weights.T


@dataclass(frozen=True)
class PairScore:
    """One graph's criterion on one set of pairs (per pair; higher is better)."""

    edges: Edges
    score: float  # loglik - penalty
    loglik: float  # mean over pairs of log p_G(v) + log p_G(v' | v)
    observational: float  # mean log p_G(v)
    interventional: float  # mean log p_G(v' | v)
    penalty: float  # 1/2 log(n) * parameters / n
    tau: float  # the fitted reading error
    per_pair: np.ndarray  # (n,) log p_G(v) + log p_G(v' | v) of each pair


def node_names(d: int) -> list[str]:
    return [f"q{i + 1}" for i in range(d)]


def parents_of(edges: Edges, d: int) -> list[list[int]]:
    """Column indices of each node's parents."""
    names = node_names(d)
    return [[names.index(u) for u, v in edges if v == node] for node in names]


def fit_linear(values: np.ndarray, edges: Edges) -> LinearFit:
    """Least squares of every coordinate on [1, its parents in G] (a root on [1])."""
    n, d = values.shape
    intercept, weights, variance = np.zeros(d), np.zeros((d, d)), np.zeros(d)
    for j, pa in enumerate(parents_of(edges, d)):
        design = np.column_stack([np.ones(n), values[:, pa]])  # (n, 1 + |pa|)
        beta, *_ = np.linalg.lstsq(design, values[:, j], rcond=None)
        intercept[j], weights[j, pa] = beta[0], beta[1:]
        variance[j] = np.mean((values[:, j] - design @ beta) ** 2)
    has_parents = np.array([bool(pa) for pa in parents_of(edges, d)])
    return LinearFit(intercept, weights, variance, has_parents)


def exogenous(before: np.ndarray, after: np.ndarray, edges: Edges) -> tuple[np.ndarray, np.ndarray]:
    """Both sides of the pairs in G's exogenous coordinates: each coordinate with parents replaced by
    its residual under the SCM fitted to ``before`` (the same map for v and v'); roots kept.

    The map is unit-triangular in a topological order of G (determinant 1)."""
    fit = fit_linear(before, edges)
    keep = ~fit.has_parents

    def to_noise(values: np.ndarray) -> np.ndarray:
        return np.where(keep, values, fit.residuals(values))

    return to_noise(before), to_noise(after)


def conditional_logliks(before: np.ndarray, after: np.ndarray, fit: LinearFit, tau: float) -> np.ndarray:
    r"""(n,) log p_G(v' | v) = log 1/K sum_k N(v' - v; (m_k - v_k) t_k, V_k t_k t_k^T + tau^2 I).

    By Sherman-Morrison, with r = v' - v - (m_k - v_k) t_k and |t_k|^2 = s_k:
    log det = d log tau^2 + log(1 + V_k s_k / tau^2), quadratic form
    (|r|^2 - V_k (t_k . r)^2 / (tau^2 + V_k s_k)) / tau^2.
    """
    n, d = before.shape
    effects = np.linalg.inv(np.eye(d) - fit.weights)  # (d, d): column k is t_k
    mean, var = before.mean(axis=0), before.var(axis=0)  # k's marginal
    delta = after - before  # (n, d)
    tau2 = tau**2
    logs = np.empty((n, d))
    for k in range(d):
        t = effects[:, k]
        s, v = t @ t, var[k]
        r = delta - np.outer(mean[k] - before[:, k], t)  # (n, d)
        quad = ((r**2).sum(axis=1) - v * (r @ t) ** 2 / (tau2 + v * s)) / tau2
        logdet = d * math.log(tau2) + math.log1p(v * s / tau2)
        logs[:, k] = -0.5 * (d * math.log(2 * math.pi) + logdet + quad)
    return logsumexp(logs, axis=1) - math.log(d)


def fit_tau(before: np.ndarray, after: np.ndarray, fit: LinearFit) -> float:
    """The reading error tau of maximum likelihood: a log-spaced grid, then a bounded refinement."""
    spread = math.sqrt(float(before.var(axis=0).mean()))
    grid = np.geomspace(TAU_FLOOR * spread, TAU_CEIL * spread, N_GRID)

    def neg(log_tau: float) -> float:
        return -float(conditional_logliks(before, after, fit, math.exp(log_tau)).sum())

    values = [neg(math.log(t)) for t in grid]
    i = int(np.argmin(values))
    lo, hi = math.log(grid[max(i - 1, 0)]), math.log(grid[min(i + 1, N_GRID - 1)])
    best = minimize_scalar(neg, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    return math.exp(best.x) if best.fun <= values[i] else float(grid[i])


def pair_score(before: np.ndarray, after: np.ndarray, edges: Edges) -> PairScore:
    """The criterion of the module docstring for DAG ``edges`` over the columns q1..qd of (v, v')."""
    before, after = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 2 or len(before) < 10:
        raise ValueError(f"pairs need before and after of one shape (n >= 10, d); got {before.shape}, {after.shape}")
    n, d = before.shape
    edges = tuple(edges)
    if not dag.is_acyclic(edges):
        raise ValueError(f"graph {edges} has a cycle {' -> '.join(dag.find_cycle(edges))}")
    fit = fit_linear(before, edges)
    tau = fit_tau(before, after, fit)
    per_pair = fit.residuals(before)
    per_pair = (-0.5 * (np.log(2 * math.pi * fit.variance) + per_pair**2 / fit.variance)).sum(axis=1)
    conditional = conditional_logliks(before, after, fit, tau)
    n_params = len(edges) + 2 * d + 1  # a coefficient per edge, an intercept and a variance per node, tau
    penalty = 0.5 * math.log(n) * n_params / n
    loglik = float(per_pair.mean() + conditional.mean())
    return PairScore(
        edges=edges,
        score=loglik - penalty,
        loglik=loglik,
        observational=float(per_pair.mean()),
        interventional=float(conditional.mean()),
        penalty=penalty,
        tau=tau,
        per_pair=per_pair + conditional,
    )


def score_dags(before: np.ndarray, after: np.ndarray, dags: Sequence[Edges] | None = None) -> list[PairScore]:
    """:func:`pair_score` of every DAG in ``dags`` (all labelled DAGs over the columns when None)."""
    dags = dag.all_dags(node_names(np.shape(before)[1])) if dags is None else dags
    return [pair_score(before, after, edges) for edges in dags]


def ranked_dags(before: np.ndarray, after: np.ndarray) -> list[PairScore]:
    """:func:`score_dags` of every DAG over the columns, best first."""
    return sorted(score_dags(before, after), key=lambda s: -s.score)


def rank_of(ranked: Sequence[PairScore], edges: Edges) -> int | None:
    """The 1-based place of the DAG ``edges`` in ``ranked`` (None when it is not there)."""
    return next((i + 1 for i, s in enumerate(ranked) if set(s.edges) == set(edges)), None)


def cross_entropy_gap(rho: float) -> float:
    """D(rho): the expected log-likelihood a do(child) pair loses in exogenous coordinates (module docstring)."""
    return 0.5 * (math.log(rho) - 1 + (2 - rho) / rho)


def energy_distance(a: np.ndarray, b: np.ndarray, chunk: int = 1000) -> float:
    r"""Székely's energy distance of two samples (n, d) and (m, d), unbiased within-sample terms:

    E = 2 mean |a_i - b_j| - mean_{i != i'} |a_i - a_i'| - mean_{j != j'} |b_j - b_j'|,

    >= 0 in expectation, 0 exactly when the two distributions are equal (any dimension; no kernel
    or bandwidth to choose). Distances in chunks of ``chunk`` rows (memory chunk * max(n, m)).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)

    def mean_distance(x: np.ndarray, y: np.ndarray, same: bool) -> float:
        total = sum(cdist(x[i : i + chunk], y).sum() for i in range(0, len(x), chunk))
        return total / (len(x) * (len(y) - 1) if same else len(x) * len(y))

    return 2 * mean_distance(a, b, False) - mean_distance(a, a, True) - mean_distance(b, b, True)
