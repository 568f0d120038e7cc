r"""The structural regularizer R_G: a Bayesian-network score of the codes under a graph.

For a batch of N generated samples, with c the codes fed to G and q = Q(G(z, c)), every q node v
with parents pa(v) gets a local term fitted in closed form on the batch (docs/design.md section 3):

* continuous v, standardized over the batch: the linear-Gaussian MLE
  beta = argmin ||v - X beta||^2 + ridge ||beta||^2 with X = [parents, 1] (categorical parents as
  one-hot input codes or softmax probabilities of extracted codes), sigma^2(v | pa) = mean
  residual^2 floored at ``floor``, and nll_v = 1/2 log(2 pi sigma^2) + 1/2;
* categorical v (Q's softmax p over k classes) with categorical parents: theta[k | parent config]
  from soft counts with a Laplace prior, nll_v = -mean_n sum_k p_nk log theta[k | pa_n].

The fitted parameters are detached: by the envelope theorem the gradient equals that of
differentiating through the solve. ``c`` nodes have fixed priors and contribute constants.

Forms (strings, so the list may grow):

* ``likelihood`` -- sum_v nll_v, the paper's negative log-likelihood score taken literally. It
  rewards every dependence the graph asks for, and a prototype here showed that with a floor of
  1e-4 it collapses a child code onto its parent; the floor (0.05 in standardized units: at most
  -1/2 log 0.05 = 1.5 nats of reward per node) bounds that reward.
* ``deviance`` -- sum_v nll(v | pa(v)) - nll(v | full(v)), the log-likelihood ratio of the
  saturated model to the graph, where full(v) is every c node and every q node before v in a
  topological order (only categorical ones when v is categorical). In-sample it is >= 0 and
  zero exactly when the batch obeys the graph's conditional independences; it never rewards
  determinism. Corrected (below) it estimates the population value without bias, so a batch
  drawn from the graph scores ~0 on average and a single batch may score slightly below 0.
* ``both`` -- their sum.
* ``perfect_map`` -- the graph as a perfect map of the codes' distribution: Markov (the deviance
  above: every missing edge carries no information) and faithful (every present edge carries
  information of its own):

      R = deviance - sum over edges u -> v into q nodes of min(CMI(v; u | pa(v) minus u), edge_cap),

  with, for a continuous v, CMI = 1/2 log( sigma^2(v | pa(v) minus u) / sigma^2(v | pa(v)) ), both
  variances floored at ``floor`` (so CMI <= -1/2 log floor), and for a categorical v the CPT
  version nll(v | pa(v) minus u) - nll(v | pa(v)). A child that copies one parent gets no credit
  for its other edges (their CMI is ~0), so the collapse the likelihood rewards is not an optimum
  here; for the independent graph the edge terms ci -> qi are InfoGAN's information term (the
  Gaussian mutual information of q_i and c_i). ``edge_cap`` bounds each edge's reward as the floor
  bounds a node's: past the cap an edge earns nothing more, so no single dependence is pushed
  towards determinism, and the total reward is at most edge_cap per edge (1 nat by default: a
  partial correlation of sqrt(1 - e^-2) = 0.93).

Gradient (``grad``). ``all`` (the default) differentiates every fit through its child and its
parents. ``child`` treats each fit's parents as constants (detached), so R_G moves a code only as
a child: a saturated fit can then no longer lower the deviance by making a parent, such as the
categorical code's softmax, less informative about its children (issue 15's suspect for the
regularizer's cost to ``cat_acc``). The values are the same either way.

Fit (``fit``). ``batch`` (the default, the paper's) fits every family's parameters on the batch
itself. Then the fit chases the batch's own noise, and R_G's gradient does too: with the graph
exactly true, a saturated fit with p_full - p_pa extra coefficients still leaves each batch a
nonzero gradient, of relative size about sqrt((p_full - p_pa) / N), that pushes the child away
from whatever the extra columns happen to explain in that batch (on the MNIST spec, 21 extra
columns at N = 128, against a true deviance of a few hundredths of a nat). ``pooled`` fits the
parameters on a running pool of batches instead: the second moments S and the categorical soft
counts are exponential moving averages over calls (``pool_decay`` per call, bias-corrected like
Adam's moments, so the first call is the batch fit), folded in before the fit, so the batch's
own weight in its fit is 1 - pool_decay. The batch's residuals under those parameters are then
out of sample: when the batch obeys the graph the saturated and the graph's fits predict alike
and the gradient is ~0, and no small-batch correction is applied (none is needed). The pool is
state, saved with a run's checkpoint (:meth:`StructuralLoss.state_dict`).

Small-batch correction (``correction="unbiased"``, the default; ``"none"`` keeps the in-sample
values). Each nll above is an in-sample fit, biased downward by the fit's degrees of freedom, so
the saturated model always wins a little: with the graph exactly true, the in-sample deviance is
about sum_v (p_full(v) - p_pa(v)) / 2N nats for p fitted coefficients (for linear-Gaussian
families exactly sum_v 1/2 (psi((N - p_pa)/2) - psi((N - p_full)/2)): 0.06 for the collider on
cont,cont,cont at N = 64, 0.30 on cat10,cont,cont). Each nll is replaced by an unbiased estimate
of its population value, and so are the forms built from them (the edge CMIs of ``perfect_map``
are differences of corrected nlls, capped after the correction):

* continuous v, p fitted coefficients (the intercept, one per continuous parent, k - 1 per
  categorical parent of k classes: its one-hot or softmax columns sum to 1, the intercept
  column, so they add k - 1 to the rank; the ridge gives the null direction no weight, so p is
  the trace of the hat matrix up to O(ridge); a class absent from the batch would lower the rank
  once more, which is not counted). For v | X linear-Gaussian, RSS / sigma^2 ~
  chi^2_{N-p} whatever X is, so E[log RSS] = log sigma^2 + psi((N - p)/2) + log 2. The child is
  standardized over the batch, which divides RSS by TSS / N: the fitted variance is RSS / TSS,
  and TSS of a Gaussian v, ~ Var(v) chi^2_{N-1}, has E[log TSS] = log Var(v) + psi((N - 1)/2) +
  log 2. So

      log sigma^2_corrected = log(RSS / TSS) + delta(N, p),  delta = psi((N-1)/2) - psi((N-p)/2),

  estimates log(sigma^2 / Var v) without bias (delta = 0 for the intercept alone, whose RSS / TSS
  is exactly 1). In the deviance and the edge CMIs, differences of two fits of one child, the TSS
  terms cancel and the shifts leave psi((N - p_full)/2) - psi((N - p_pa)/2): exact whenever
  v | full(v) is linear-Gaussian, Gaussian marginal or not (the parents' standardization is an
  affine map of columns beside the intercept and changes nothing). The floor applies to the
  corrected variance sigma^2 e^delta. We prefer this to RSS / (N - p), unbiased for sigma^2 but
  not in the log (Jensen: it leaves psi(a) - log a ~ -1/(N - p) per fit). delta is a constant given
  N and the family, so it leaves the gradient unchanged wherever the floor and the edge cap do
  not bind.
* categorical v: the jackknife, nll - (N - 1)(mean_n nll_(-n) - nll), nll_(-n) the in-sample
  nll of the other N - 1 samples under the CPT refitted without sample n (closed form: remove
  its soft counts). It removes the O(1/N) bias of the plug-in, the M (k - 1) / 2N of AIC for
  one-hot codes (M parent configurations, k classes), less for soft Q outputs, none for a child
  its parents determine, and the O(1/N) bias of the Laplace prior. Detached: the gradient is the
  in-sample one. It is first order: with ~N / M < k samples per configuration a part of the bias
  remains (see bench/deviance_bias.py).
"""

from __future__ import annotations

import itertools
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F

from gan.dag import parents_order
from gan.latents import LatentSpec

Form = Literal["likelihood", "deviance", "both", "perfect_map"]
FORMS: tuple[str, ...] = typing.get_args(Form)
Correction = Literal["unbiased", "none"]
CORRECTIONS: tuple[str, ...] = typing.get_args(Correction)
Grad = Literal["all", "child"]
GRADS: tuple[str, ...] = typing.get_args(Grad)
Fit = Literal["batch", "pooled"]
FITS: tuple[str, ...] = typing.get_args(Fit)
Edge = tuple[str, str]
_HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi) + 0.5


# ---- local families ------------------------------------------------------------------------


def residual_variance(child: torch.Tensor, parents: torch.Tensor, ridge: float = 0.0) -> torch.Tensor:
    """MLE residual variance of a linear-Gaussian fit of child (N,) on [parents (N, P), 1].

    beta solves the (ridge-regularized) normal equations and is detached (envelope theorem);
    the returned variance mean((child - X beta)^2) keeps its gradient to child and parents.
    """
    n = child.shape[0]
    x = torch.cat([parents, child.new_ones(n, 1)], dim=1)  # (N, P + 1)
    with torch.no_grad():
        gram = x.T @ x / n
        if ridge > 0:
            gram = gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        # solve_ex: no error check, so no host sync on a GPU (linalg.solve waits for the device to
        # check for a singular gram; a singular gram gives NaNs, which the trainer reports as diverged)
        beta = torch.linalg.solve_ex(gram, x.T @ child / n).result  # (P + 1,)
    return (child - x @ beta).pow(2).mean()


def family_loglik(child: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """Total log-likelihood of a continuous child (N,) given parents (N, P), P >= 0.

    The maximum-likelihood linear-Gaussian fit with an intercept, on raw values:
    -N/2 (log(2 pi sigma^2) + 1), sigma^2 = RSS / N. Equals pgmpy's
    ``LogLikelihoodGauss(df).local_score(child, parents)``.
    """
    n = child.shape[0]
    return -n * (0.5 * torch.log(residual_variance(child, parents)) + _HALF_LOG_2PI_E)


@lru_cache(maxsize=1024)
def log_variance_shift(n: int, p: int) -> float:
    r"""delta(N, p) = psi((N - 1)/2) - psi((N - p)/2): makes log(RSS / TSS) unbiased for log(sigma^2 / Var v).

    For a Gaussian child with p fitted coefficients (intercept included) on N samples (module
    docstring). Where N - p < 1 (an interpolating fit, whose RSS the floor catches anyway) the
    residual degrees of freedom are taken as 1 (likewise N - 1 for N = 1), so the shift stays finite.
    """
    a = torch.tensor([max(n - 1, 1), max(n - p, 1)], dtype=torch.float64) / 2
    psi = torch.special.digamma(a)
    return float(psi[0] - psi[1])


def configuration_weights(parents: Sequence[torch.Tensor], n: int, like: torch.Tensor) -> torch.Tensor:
    """(N, M) soft membership of each parent configuration: w_nm = prod_j p_parent_j(n, m_j)."""
    weights = like.new_ones(n, 1)
    for p in parents:
        weights = (weights[:, :, None] * p[:, None, :]).reshape(n, -1)
    return weights


def categorical_nll(
    child: torch.Tensor, parents: Sequence[torch.Tensor], alpha: float = 0.1, correct: bool = False
) -> torch.Tensor:
    """Per-sample NLL of a categorical child under its soft-count CPT.

    Args:
        child: (N, k) class probabilities (Q's softmax) or one-hot rows.
        parents: categorical parents, each (N, k_j) probabilities or one-hot rows.
        alpha: Laplace pseudo-count per cell.
        correct: add the (detached) jackknife estimate of the in-sample bias (module docstring).
    Returns:
        -mean_n sum_m w_nm sum_k p_nk log theta[k | m], w_nm = prod_j p_parent_j(n, m_j) the soft
        weight of parent configuration m, theta[k | m] = (sum_n w_nm p_nk + alpha) / (sum_n w_nm + k alpha).
    """
    weights = configuration_weights(parents, child.shape[0], child)
    fits = weights.new_ones(1, weights.shape[1], 1)
    return categorical_nlls(child[None], weights[None], fits, alpha, correct)[0, 0]


def categorical_nlls(
    child: torch.Tensor,
    weights: torch.Tensor,
    fits: torch.Tensor,
    alpha: float = 0.1,
    correct: bool = False,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`categorical_nll` of one child under several parent sets at once, for K independent
    problems (K stacked models): child (K, N, k), weights (K, N, M), fits (K, M, F) -> (K, F).

    ``weights`` holds the F fits' configuration weights side by side, and ``fits`` says which fit
    each configuration belongs to (0/1). Every configuration's CPT row depends on its own soft
    counts only, so one table serves all F fits, and each fit's nll (and jackknife bias) is the
    sum of its rows' terms. A configuration column of zero weight adds nothing, so problems of
    different M are padded with zeros. ``counts`` (K, M, k), if given, are the soft counts the CPT
    is fitted on (a pooled fit's) instead of the batch's own.
    """
    n, k = child.shape[1:]
    with torch.no_grad():
        if counts is None:
            counts = torch.bmm(weights.transpose(1, 2), child)  # (K, M, k)
        theta = (counts + alpha) / (counts.sum(2, keepdim=True) + k * alpha)
        bias = (_jackknife_bias(child, weights, counts, alpha)[..., None] * fits).sum(1) if correct and n > 1 else 0.0
    rows = (weights * torch.bmm(child, theta.log().transpose(1, 2))).mean(1)  # (K, M)
    return -(rows[..., None] * fits).sum(1) - bias


def _jackknife_bias(child: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""(N - 1)(mean_n nll_(-n) - nll) per configuration row, (K, M): summed over a fit's rows, the
    jackknife estimate of E[in-sample nll] - population nll.

    nll = -1/N sum_{m,k} S_mk log theta_mk with soft counts S = w^T p, W_m = sum_k S_mk. Leaving
    sample n out gives S^(-n) = S - w_n p_n, W^(-n) = W - w_n, and (N - 1) nll_(-n) =
    -sum S^(-n) log theta^(-n). Writing log theta^(-n) = log theta + D_n, the O(1) parts cancel:

        (N - 1)(mean_n nll_(-n) - nll) = -mean_n sum_{m,k} S^(-n)_mk D_nmk,
        D_nmk = log1p(-w_nm p_nk / (S_mk + alpha)) - log1p(-w_nm / (W_m + k alpha)),

    which keeps float32 accurate at any N (the difference of the two nlls, times N - 1, does not).
    Costs one (K, N, M, k) tensor.
    """
    k = child.shape[2]
    counts = counts[:, None]  # (K, 1, M, k)
    wp = weights[..., None] * child[:, :, None, :]  # (K, N, M, k): sample n's soft counts
    log_ratio = torch.log1p(-wp / (counts + alpha)) - torch.log1p(-weights / (counts.sum(3) + k * alpha))[..., None]
    return -((counts - wp) * log_ratio).sum(3).mean(1)


# ---- the regularizer -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Family:
    node: str
    categorical: bool
    parents: tuple[str, ...]
    full: tuple[str, ...]  # the saturated model's parents, for the deviance


class StructuralLoss:
    r"""R_G for one graph, planned once and called every step: ``loss(c, q_out) -> scalar``.

    Every form is a signed sum of local nlls, each the fit of one child on one parent set: the
    graph's families, the saturated model's, and (``perfect_map``) each family less one parent.
    The plan lists each distinct fit once (the complete graph's families are the saturated ones);
    :class:`StackedStructuralLoss` computes them together, for one graph or for K at once.

    Args:
        spec: the latent spec (which codes are categorical).
        parents: ``{q node: (parent nodes...)}`` for the q nodes (missing ones have no parents).
        form: ``likelihood``, ``deviance``, ``both`` or ``perfect_map``.
        floor: lower bound of sigma^2 in standardized units (continuous children).
        ridge: ridge of the normal equations, in standardized units.
        alpha: Laplace pseudo-count of the categorical CPTs.
        edge_cap: the most reward, in nats, one edge earns in ``perfect_map``.
        correction: ``unbiased`` (each nll estimates its population value, module docstring) or
            ``none`` (the in-sample values).
        grad: ``all`` or ``child`` (the parents of every fit detached; module docstring).
        fit: ``batch`` (each call's parameters fitted on its batch) or ``pooled`` (on a running pool
            of the calls' batches; module docstring). A pooled loss keeps state: every call folds
            its batch into the pool.
        pool_decay: the pool's decay per call, in (0, 1) (``pooled`` only).
    """

    def __init__(
        self,
        spec: LatentSpec,
        parents: Mapping[str, Sequence[str]],
        form: Form = "deviance",
        floor: float = 0.05,
        ridge: float = 1e-4,
        alpha: float = 0.1,
        edge_cap: float = 1.0,
        correction: Correction = "unbiased",
        grad: Grad = "all",
        fit: Fit = "batch",
        pool_decay: float = 0.99,
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"unknown structural form {form!r}; expected one of {', '.join(FORMS)}")
        if floor <= 0:
            raise ValueError(f"struct floor must be > 0, got {floor}")
        if edge_cap <= 0:
            raise ValueError(f"struct edge cap must be > 0 nats, got {edge_cap}")
        if correction not in CORRECTIONS:
            raise ValueError(f"unknown struct correction {correction!r}; expected one of {', '.join(CORRECTIONS)}")
        if grad not in GRADS:
            raise ValueError(f"unknown struct grad {grad!r}; expected one of {', '.join(GRADS)}")
        if fit not in FITS:
            raise ValueError(f"unknown struct fit {fit!r}; expected one of {', '.join(FITS)}")
        if not 0 < pool_decay < 1:
            raise ValueError(f"struct pool decay must be in (0, 1), got {pool_decay}")
        self.parent_grad = grad == "all"
        self.spec, self.form, self.floor, self.ridge, self.alpha = spec, form, floor, ridge, alpha
        # a pooled fit is out of sample: it has no small-batch bias to correct
        self.edge_cap, self.correct = edge_cap, correction == "unbiased" and fit == "batch"
        self.fit, self.pool_decay = fit, pool_decay
        q_nodes = [f"q{i + 1}" for i in range(len(spec.codes))]
        pa = {q: tuple(parents.get(q, ())) for q in q_nodes}
        c_nodes = [f"c{i + 1}" for i in range(len(spec.codes))]
        self.families = []
        for position, v in enumerate(order := parents_order(pa)):
            categorical = spec.code(v).kind == "categorical"
            full = tuple(
                u for u in c_nodes + list(order[:position]) if not categorical or spec.code(u).kind == "categorical"
            )
            self.families.append(_Family(v, categorical, pa[v], full))
        self._options = dict(
            floor=floor, ridge=ridge, alpha=alpha, edge_cap=edge_cap, correction=correction, grad=grad, fit=fit
        ) | ({"pool_decay": pool_decay} if fit == "pooled" else {})
        self._parents = pa
        self._plan()
        self._stacked = StackedStructuralLoss([self])

    def _plan(self) -> None:
        """The distinct fits, continuous ones first, then the categorical ones grouped by child; the
        form as weights on their nlls, and the edge CMIs as pairs of fit positions."""
        fits: list[tuple[str, tuple[str, ...]]] = []
        index: dict[tuple[str, frozenset[str]], int] = {}

        def fit(node: str, parents: Sequence[str]) -> int:
            key = (node, frozenset(parents))
            if key not in index:
                index[key] = len(fits)
                fits.append((node, tuple(parents)))
            return index[key]

        weights: dict[int, float] = {}
        edges: list[tuple[Edge, int, int]] = []  # (u -> v, fit without u, fit of v | pa(v))
        for fam in self.families:
            graph_fit = fit(fam.node, fam.parents)
            if self.form in ("likelihood", "both"):
                weights[graph_fit] = weights.get(graph_fit, 0.0) + 1
            if self.form in ("deviance", "both", "perfect_map"):
                full_fit = fit(fam.node, fam.full)
                weights[graph_fit] = weights.get(graph_fit, 0.0) + 1
                weights[full_fit] = weights.get(full_fit, 0.0) - 1
            for u in fam.parents if self.form == "perfect_map" else ():
                edges.append(((u, fam.node), fit(fam.node, [p for p in fam.parents if p != u]), graph_fit))
        kind = {i: self.spec.code(v).kind for i, (v, _) in enumerate(fits)}
        continuous = [i for i in range(len(fits)) if kind[i] == "continuous"]
        children = dict.fromkeys(v for i, (v, _) in enumerate(fits) if kind[i] == "categorical")
        groups = {child: [i for i, (v, _) in enumerate(fits) if v == child] for child in children}
        order = continuous + [i for group in groups.values() for i in group]
        position = {fit: k for k, fit in enumerate(order)}
        self.fits = [fits[i] for i in order]  # (child, parents) in nll order
        self.n_continuous = len(continuous)
        self.groups = {child: [position[i] for i in group] for child, group in groups.items()}
        self.weights = [weights.get(i, 0.0) for i in order]
        self.edges = [(edge, position[minus], position[fit]) for edge, minus, fit in edges]

    # ---- a call ------------------------------------------------------------------------------

    def __call__(self, c: torch.Tensor, q_out: torch.Tensor) -> torch.Tensor:
        """R_G per sample for codes c (B, code_dim) fed to G and Q's raw outputs q_out (B, code_dim)."""
        return self._stacked(c[None], q_out[None])[0]

    def state_dict(self) -> dict:
        """The pool of a ``pooled`` fit (empty for ``batch``): save it with the run's checkpoint."""
        return self._stacked.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        self._stacked.load_state_dict(state)

    def edge_information(self, c: torch.Tensor, q_out: torch.Tensor) -> dict[Edge, torch.Tensor]:
        """CMI(v; u | pa(v) minus u) in nats for every edge u -> v into a q node, uncapped."""
        if self.form != "perfect_map":  # only perfect_map plans the fits without one parent
            return StructuralLoss(self.spec, self._parents, "perfect_map", **self._options).edge_information(c, q_out)
        nll = self._stacked.nlls(c[None], q_out[None])[0]
        return {edge: nll[minus] - nll[fit] for edge, minus, fit in self.edges}

    def n_coefficients(self, parents: Sequence[str]) -> int:
        """Rank of [parents, 1]: 1 + one per continuous parent + k - 1 per categorical parent of k classes
        (its columns sum to 1, the intercept)."""
        return 1 + sum(self.spec.code(u).dim - (self.spec.code(u).kind == "categorical") for u in parents)


class StackedStructuralLoss:
    r"""The R_G of K graphs over one latent spec at once: ``loss(c, q_out)`` with c and q_out
    (K, B, code_dim), model k's under ``losses[k]``, -> (K,). K = 1 is how one graph is computed.

    Continuous fits come from one matrix per model: Z = [c, q, 1] (B, W) with categorical codes
    as one-hot rows or Q's softmax and continuous ones standardized, and its second moments
    S = Z^T Z / B. The fit of column y on the columns in mask m solves (S_mm + ridge I) beta =
    S_my, every fit of every model in one batched solve (each fit's system is its model's S
    masked to its columns, with the identity elsewhere, so beta is zero off m), and its variance
    is mean_n (Z_ny - Z_n beta)^2, all fits from one batched matmul: R = Z[:, y] - Z beta^T (B, F).
    That is exactly :func:`residual_variance` on [parents, 1], fit by fit; beta is detached
    (envelope theorem) as there. The fits of one categorical child share one soft-count table
    (:func:`categorical_nlls`). Models with fewer fits are padded with fits of weight 0 (the
    intercept alone; a configuration column of zero weight), which add exactly nothing.
    """

    def __init__(self, losses: Sequence[StructuralLoss]) -> None:
        first = losses[0]
        if any(_shared_options(loss) != _shared_options(first) for loss in losses[1:]):
            raise ValueError(
                "stacked structural losses must share the latent spec, floor, ridge, alpha, edge cap, correction, grad and fit"
            )
        self.losses, self.spec = list(losses), first.spec
        self.floor, self.ridge, self.alpha, self.edge_cap, self.correct = (
            first.floor,
            first.ridge,
            first.alpha,
            first.edge_cap,
            first.correct,
        )
        self.parent_grad = first.parent_grad
        self.pooled, self.pool_decay = first.fit == "pooled", first.pool_decay
        self._pool: dict[str, torch.Tensor] = {}  # a pooled fit's moving averages (zero-started, like Adam's)
        self._calls = 0
        self.n_continuous = max(loss.n_continuous for loss in losses)
        self.children = list(dict.fromkeys(child for loss in losses for child in loss.groups))
        sizes = {child: max(len(loss.groups.get(child, ())) for loss in losses) for child in self.children}
        self._offsets = dict(zip(self.children, itertools.accumulate([self.n_continuous] + list(sizes.values()))))
        self.n_fits = self.n_continuous + sum(sizes.values())
        self._slots = [self._slots_of(loss, sizes) for loss in losses]  # each model's nll positions, padded
        self._constants: dict[torch.device, dict] = {}
        self._shifts: dict[tuple[int, torch.device], torch.Tensor] = {}

    def _slots_of(self, loss: StructuralLoss, sizes: Mapping[str, int]) -> list[int]:
        """Where each of ``loss``'s fits sits in the padded layout [continuous | child 1 | child 2 ...]."""
        slots = list(range(loss.n_continuous))
        for child in self.children:
            slots += [self._offsets[child] + j for j in range(len(loss.groups.get(child, ())))]
        return slots

    def _columns(self, node: str) -> slice:
        """Columns of ``node`` in Z = [c, q, 1]."""
        offset = self.spec.code_dim * (node[0] == "q")
        i = self.spec.names.index("c" + node[1:])
        start = offset + sum(code.dim for code in self.spec.codes[:i])
        return slice(start, start + self.spec.codes[i].dim)

    # ---- the plan as tensors -------------------------------------------------------------------

    def _constants_on(self, device: torch.device) -> dict:
        """The plan's tensors on ``device`` (made once per device)."""
        if device in self._constants:
            return self._constants[device]
        k, f, width = len(self.losses), self.n_continuous, 2 * self.spec.code_dim + 1
        masks = torch.zeros(k, f, width, dtype=torch.float32)
        masks[:, :, -1] = 1.0  # the intercept; a padding fit has nothing else
        child = torch.full((k, f), width - 1, dtype=torch.long)  # a padding fit explains the intercept: var 0
        weights = torch.zeros(k, self.n_fits, dtype=torch.float32)
        n_edges = max(len(loss.edges) for loss in self.losses)
        minus, with_ = torch.zeros(k, n_edges, dtype=torch.long), torch.zeros(k, n_edges, dtype=torch.long)
        self._n_coefficients = [[1] * f for _ in self.losses]
        for m, (loss, slots) in enumerate(zip(self.losses, self._slots)):
            for j, (v, parents) in enumerate(loss.fits[: loss.n_continuous]):
                child[m, j] = self._columns(v).start
                for u in parents:
                    masks[m, j, self._columns(u)] = 1.0
                self._n_coefficients[m][j] = loss.n_coefficients(parents)
            weights[m, slots] = torch.tensor(loss.weights, dtype=torch.float32)
            for e, (_, a, b) in enumerate(loss.edges):
                minus[m, e], with_[m, e] = slots[a], slots[b]
        eye = torch.eye(width, dtype=torch.float32)
        continuous = [code.kind == "continuous" for code in self.spec.codes for _ in range(code.dim)]
        const = {
            "outer": masks[..., :, None] * masks[..., None, :],  # (K, F, W, W): where each fit's system keeps S
            "fill": eye * (1 - masks[..., :, None])
            + self.ridge * eye * masks[..., :, None],  # identity off m, ridge on m
            "mask": masks,
            "child": child,
            "continuous": torch.tensor(2 * continuous),  # the columns of Z to standardize, in [c, q]
            "weights": weights,
            "minus": minus,
            "with": with_,
            "groups": {child: self._group_fits(child) for child in self.children},
        }
        const = {
            key: value.to(device) if torch.is_tensor(value) else {g: x.to(device) for g, x in value.items()}
            for key, value in const.items()
        }
        self._constants[device] = const
        return const

    def _group_parents(self, loss: StructuralLoss, child: str) -> list[list[slice]]:
        return [[self._columns(u) for u in loss.fits[j][1]] for j in loss.groups.get(child, ())]

    def _group_fits(self, child: str) -> torch.Tensor:
        """(K, M, F_child) 0/1: which fit each parent configuration of ``child`` belongs to, padded."""
        dims = [
            [math.prod(self.spec.code(u).dim for u in loss.fits[j][1]) for j in loss.groups.get(child, ())]
            for loss in self.losses
        ]
        n_configurations = max(sum(d) for d in dims)
        fits = torch.zeros(len(self.losses), n_configurations, max(len(d) for d in dims), dtype=torch.float32)
        for m, d in enumerate(dims):
            for f, (start, size) in enumerate(zip(itertools.accumulate([0] + d), d)):
                fits[m, start : start + size, f] = 1.0
        return fits

    # ---- the pool of a pooled fit -------------------------------------------------------------

    def _fit_on(self, key: str, batch: torch.Tensor) -> torch.Tensor:
        """What a fit is fitted on: the batch's statistic, or (pooled) the pool with the batch folded in."""
        if not self.pooled:
            return batch
        pool = self._pool.get(key, 0.0) * self.pool_decay + batch * (1 - self.pool_decay)
        self._pool[key] = pool
        return pool / (1 - self.pool_decay ** (self._calls + 1))

    def state_dict(self) -> dict:
        return {"calls": self._calls, "pool": dict(self._pool)} if self.pooled else {}

    def load_state_dict(self, state: Mapping) -> None:
        if self.pooled:
            self._calls, self._pool = int(state["calls"]), dict(state["pool"])

    # ---- a call ------------------------------------------------------------------------------

    def __call__(self, c: torch.Tensor, q_out: torch.Tensor) -> torch.Tensor:
        """R_G per sample of each model: c, q_out (K, B, code_dim) -> (K,). A pooled fit folds the batch
        into its pool."""
        const = self._constants_on(c.device)
        nll = self.nlls(c, q_out, const)
        total = (nll * const["weights"]).sum(-1)
        if const["minus"].shape[1]:  # perfect_map's edges (padded with an edge from a fit to itself: 0)
            cmi = nll.gather(1, const["minus"]) - nll.gather(1, const["with"])
            total = total - cmi.clamp_max(self.edge_cap).sum(-1)
        return total

    def nlls(self, c: torch.Tensor, q_out: torch.Tensor, const: Mapping | None = None) -> torch.Tensor:
        """The nll of every planned fit of every model, (K, n_fits) in the padded layout (a model's
        own fits at ``_slots``)."""
        const = const or self._constants_on(c.device)
        z = self._node_matrix(c.float(), q_out.float(), const)
        parents = z if self.parent_grad else z.detach()  # each fit's parent columns (its child is never among them)
        k, n = z.shape[:2]
        parts = []
        if self.n_continuous:
            with torch.no_grad():
                s = self._fit_on("moments", torch.bmm(z.transpose(1, 2), z) / n)  # (K, W, W)
                system = s[:, None] * const["outer"] + const["fill"]  # (K, F, W, W)
                rhs = s.gather(1, const["child"][..., None].expand(-1, -1, s.shape[2])) * const["mask"]  # (K, F, W)
                # solve_ex: no error check, so no host sync on a GPU (linalg.solve waits for the device to
                # check for a singular system; one gives NaNs, which the trainer reports as diverged)
                beta = torch.linalg.solve_ex(system, rhs).result  # (K, F, W)
            zy = z.gather(2, const["child"][:, None, :].expand(-1, n, -1))  # (K, B, F)
            var = (zy - torch.bmm(parents, beta.transpose(1, 2))).pow(2).mean(1)  # (K, F); beta is 0 off the parents
            if self.correct:
                var = var * self._variance_shifts(n, z.device)
            parts.append(0.5 * torch.log(var.clamp_min(self.floor)) + _HALF_LOG_2PI_E)
        for child in self.children:
            fits = const["groups"][child]
            weights = [
                self._configurations(parents[m], loss, child, fits.shape[1]) for m, loss in enumerate(self.losses)
            ]
            child_z, weights = z[:, :, self._columns(child)], torch.stack(weights)
            counts = None
            if self.pooled:  # soft counts per sample, pooled, on the batch's scale (the Laplace prior's)
                with torch.no_grad():
                    counts = self._fit_on(child, torch.bmm(weights.transpose(1, 2), child_z) / n) * n
            parts.append(categorical_nlls(child_z, weights, fits, self.alpha, self.correct, counts))
        self._calls += self.pooled
        return torch.cat(parts, 1) if len(parts) > 1 else parts[0]

    def _configurations(self, z: torch.Tensor, loss: StructuralLoss, child: str, width: int) -> torch.Tensor:
        """(B, width): one model's parent-configuration weights of ``child``'s fits side by side, zero-padded."""
        blocks = [
            configuration_weights([z[:, u] for u in pa], z.shape[0], z) for pa in self._group_parents(loss, child)
        ]
        weights = torch.cat(blocks, 1)
        return F.pad(weights, (0, width - weights.shape[1])) if weights.shape[1] < width else weights

    def _node_matrix(self, c: torch.Tensor, q_out: torch.Tensor, const: Mapping) -> torch.Tensor:
        """Z = [c, q, 1] (K, B, W): one-hot / softmax for categorical codes, standardized continuous codes."""
        if any(code.kind == "categorical" for code in self.spec.codes):
            parts = list(torch.split(q_out, [code.dim for code in self.spec.codes], dim=-1))
            q_out = torch.cat(
                [F.softmax(p, -1) if code.kind == "categorical" else p for code, p in zip(self.spec.codes, parts)], -1
            )
        x = torch.cat([c, q_out], -1)
        var, mean = torch.var_mean(x, -2, correction=0, keepdim=True)
        x = torch.where(const["continuous"], (x - mean) * torch.rsqrt(var + 1e-8), x)
        return torch.cat([x, x.new_ones(*x.shape[:-1], 1)], -1)

    def _variance_shifts(self, n: int, device: torch.device) -> torch.Tensor:
        """exp(delta(N, p)) per continuous fit (module docstring), (K, F), cached per batch size and device."""
        if (n, device) not in self._shifts:
            shifts = [[math.exp(log_variance_shift(n, p)) for p in row] for row in self._n_coefficients]
            self._shifts[n, device] = torch.tensor(shifts, dtype=torch.float32, device=device)
        return self._shifts[n, device]


def _shared_options(loss: StructuralLoss) -> tuple:
    """What the graphs of one :class:`StackedStructuralLoss` must have in common."""
    return (
        loss.spec,
        loss.floor,
        loss.ridge,
        loss.alpha,
        loss.edge_cap,
        loss.correct,
        loss.parent_grad,
        loss.fit,
        loss.pool_decay,
    )


def structural_loss(
    spec: LatentSpec,
    parents: Mapping[str, Sequence[str]],
    c: torch.Tensor,
    q_out: torch.Tensor,
    form: Form = "deviance",
    floor: float = 0.05,
    edge_cap: float = 1.0,
    correction: Correction = "unbiased",
) -> torch.Tensor:
    """One-shot R_G (see :class:`StructuralLoss`, which plans once for repeated calls)."""
    return StructuralLoss(spec, parents, form, floor, edge_cap=edge_cap, correction=correction)(c, q_out)


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """(B, 1) -> zero mean, unit variance over the batch; a constant column becomes 0, not NaN."""
    x = x - x.mean(0, keepdim=True)
    return x / torch.sqrt(x.pow(2).mean(0, keepdim=True) + 1e-8)
