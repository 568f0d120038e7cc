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
    return categorical_nlls(child, weights, weights.new_ones(weights.shape[1], 1), alpha, correct)[0]


def categorical_nlls(
    child: torch.Tensor, weights: torch.Tensor, fits: torch.Tensor, alpha: float = 0.1, correct: bool = False
) -> torch.Tensor:
    """:func:`categorical_nll` of one child under several parent sets at once: (F,).

    ``weights`` (N, M) holds the F fits' configuration weights side by side, and ``fits`` (M, F)
    says which fit each configuration belongs to (0/1). Every configuration's CPT row depends on
    its own soft counts only, so one table serves all F fits, and each fit's nll (and jackknife
    bias) is the sum of its rows' terms.
    """
    n, k = child.shape
    with torch.no_grad():
        counts = weights.T @ child  # (M, k)
        theta = (counts + alpha) / (counts.sum(1, keepdim=True) + k * alpha)
        bias = _jackknife_bias(child, weights, counts, alpha) @ fits if correct and n > 1 else 0.0
    return -((weights * (child @ theta.log().T)).mean(0) @ fits) - bias


def _jackknife_bias(child: torch.Tensor, weights: torch.Tensor, counts: torch.Tensor, alpha: float) -> torch.Tensor:
    r"""(N - 1)(mean_n nll_(-n) - nll) per configuration row (M,): summed over a fit's rows, the jackknife
    estimate of E[in-sample nll] - population nll.

    nll = -1/N sum_{m,k} S_mk log theta_mk with soft counts S = w^T p, W_m = sum_k S_mk. Leaving
    sample n out gives S^(-n) = S - w_n p_n, W^(-n) = W - w_n, and (N - 1) nll_(-n) =
    -sum S^(-n) log theta^(-n). Writing log theta^(-n) = log theta + D_n, the O(1) parts cancel:

        (N - 1)(mean_n nll_(-n) - nll) = -mean_n sum_{m,k} S^(-n)_mk D_nmk,
        D_nmk = log1p(-w_nm p_nk / (S_mk + alpha)) - log1p(-w_nm / (W_m + k alpha)),

    which keeps float32 accurate at any N (the difference of the two nlls, times N - 1, does not).
    Costs one (N, M, k) tensor.
    """
    k = child.shape[1]
    wp = weights[:, :, None] * child[:, None, :]  # (N, M, k): sample n's soft counts
    log_ratio = torch.log1p(-wp / (counts + alpha)) - torch.log1p(-weights / (counts.sum(1) + k * alpha))[:, :, None]
    return -((counts - wp) * log_ratio).sum(2).mean(0)


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
    The plan lists each distinct fit once (the complete graph's families are the saturated ones)
    and a call computes them together. Continuous fits come from one matrix: Z = [c, q, 1] (B, W)
    with categorical codes as one-hot rows or Q's softmax and continuous ones standardized, and
    its second moments S = Z^T Z / B. The fit of column y on the columns in mask m solves
    (S_mm + ridge I) beta = S_my, every fit in one batched solve (each fit's system is S masked
    to its columns, with the identity elsewhere, so beta is zero off m), and its variance is
    mean_n (Z_ny - Z_n beta)^2 for all fits from one matmul: R = Z[:, y] - Z beta^T (B, F).
    That is exactly :func:`residual_variance` on [parents, 1], fit by fit; beta is detached
    (envelope theorem) as there. Categorical children keep their soft-count CPTs, one per fit.

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
    ) -> None:
        if form not in FORMS:
            raise ValueError(f"unknown structural form {form!r}; expected one of {', '.join(FORMS)}")
        if floor <= 0:
            raise ValueError(f"struct floor must be > 0, got {floor}")
        if edge_cap <= 0:
            raise ValueError(f"struct edge cap must be > 0 nats, got {edge_cap}")
        if correction not in CORRECTIONS:
            raise ValueError(f"unknown struct correction {correction!r}; expected one of {', '.join(CORRECTIONS)}")
        self.spec, self.form, self.floor, self.ridge, self.alpha = spec, form, floor, ridge, alpha
        self.edge_cap, self.correct = edge_cap, correction == "unbiased"
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
        self._options = dict(floor=floor, ridge=ridge, alpha=alpha, edge_cap=edge_cap, correction=correction)
        self._parents = pa
        self._plan()
        self._constants: dict[torch.device, dict] = {}
        self._shifts: dict[tuple[int, torch.device], torch.Tensor] = {}

    # ---- the plan: which fits, and how the form combines them ----------------------------------

    def _columns(self, node: str) -> slice:
        """Columns of ``node`` in Z = [c, q, 1]."""
        offset = self.spec.code_dim * (node[0] == "q")
        i = self.spec.names.index("c" + node[1:])
        start = offset + sum(code.dim for code in self.spec.codes[:i])
        return slice(start, start + self.spec.codes[i].dim)

    def _fit(self, node: str, parents: Sequence[str]) -> int:
        """Index of the fit of ``node`` on ``parents`` in the call's nll vector, planned once."""
        key = (node, frozenset(parents))
        if key not in self._fit_index:
            self._fit_index[key] = len(self._fits)
            self._fits.append((node, tuple(parents)))
        return self._fit_index[key]

    def _plan(self) -> None:
        """The distinct fits, then the form as weights on their nlls (and edge CMIs as index pairs)."""
        self._fits: list[tuple[str, tuple[str, ...]]] = []
        self._fit_index: dict[tuple[str, frozenset[str]], int] = {}
        weights: dict[int, float] = {}
        self.edges: list[tuple[Edge, int, int]] = []  # (u -> v, fit without u, fit of v | pa(v))
        for fam in self.families:
            graph_fit = self._fit(fam.node, fam.parents)
            if self.form in ("likelihood", "both"):
                weights[graph_fit] = weights.get(graph_fit, 0.0) + 1
            if self.form in ("deviance", "both", "perfect_map"):
                full_fit = self._fit(fam.node, fam.full)
                weights[graph_fit] = weights.get(graph_fit, 0.0) + 1
                weights[full_fit] = weights.get(full_fit, 0.0) - 1
            for u in fam.parents if self.form == "perfect_map" else ():
                self.edges.append(((u, fam.node), self._fit(fam.node, [p for p in fam.parents if p != u]), graph_fit))
        # continuous fits first (one batched solve), then the categorical ones grouped by child (one table each)
        continuous = [i for i, (v, _) in enumerate(self._fits) if self.spec.code(v).kind == "continuous"]
        children = dict.fromkeys(v for v, _ in self._fits if self.spec.code(v).kind == "categorical")
        groups = [[i for i, (v, _) in enumerate(self._fits) if v == child] for child in children]
        self._order = continuous + [i for group in groups for i in group]
        position = {fit: k for k, fit in enumerate(self._order)}
        self._weights = [0.0] * len(self._fits)
        for fit, w in weights.items():
            self._weights[position[fit]] = w
        self.edges = [(edge, position[minus], position[fit]) for edge, minus, fit in self.edges]
        width = 2 * self.spec.code_dim + 1
        self._n_continuous = len(continuous)
        self._child_columns = [self._columns(self._fits[i][0]).start for i in continuous]
        masks = torch.zeros(len(continuous), width, dtype=torch.float32)
        for row, i in enumerate(continuous):
            for u in self._fits[i][1]:
                masks[row, self._columns(u)] = 1.0
        masks[:, -1] = 1.0  # the intercept
        self._masks = masks
        self._n_coefficients = [self.n_coefficients(self._fits[i][1]) for i in continuous]
        self._categorical_groups = [self._categorical_group(group) for group in groups]

    def _categorical_group(self, group: Sequence[int]) -> tuple[slice, list[list[slice]], torch.Tensor]:
        """One categorical child's fits: its columns, each fit's parents' columns, and the (M, F) 0/1
        matrix of which fit each parent configuration belongs to (:func:`categorical_nlls`)."""
        sizes = [math.prod(self.spec.code(u).dim for u in self._fits[i][1]) for i in group]
        fits = torch.zeros(sum(sizes), len(group), dtype=torch.float32)
        for f, (start, size) in enumerate(zip(itertools.accumulate([0] + sizes), sizes)):
            fits[start : start + size, f] = 1.0
        parents = [[self._columns(u) for u in self._fits[i][1]] for i in group]
        return self._columns(self._fits[group[0]][0]), parents, fits

    def _constants_on(self, device: torch.device) -> dict:
        """The plan's tensors on ``device`` (made once per device)."""
        if device not in self._constants:
            m = self._masks.to(device)
            eye = torch.eye(m.shape[1], dtype=torch.float32, device=device)
            self._constants[device] = {
                "outer": m[:, :, None] * m[:, None, :],  # (F, W, W): where each fit's system keeps S
                "fill": eye * (1 - m[:, :, None]) + self.ridge * eye * m[:, :, None],  # identity off m, ridge on m
                "mask": m,
                "child": torch.tensor(self._child_columns, dtype=torch.long, device=device),
                "continuous": torch.tensor(  # the columns of Z to standardize, in [c, q]
                    2 * [code.kind == "continuous" for code in self.spec.codes for _ in range(code.dim)], device=device
                ),
                "weights": torch.tensor(self._weights, dtype=torch.float32, device=device),
                "minus": torch.tensor([e[1] for e in self.edges], dtype=torch.long, device=device),
                "with": torch.tensor([e[2] for e in self.edges], dtype=torch.long, device=device),
                "groups": [fits.to(device) for _, _, fits in self._categorical_groups],
            }
        return self._constants[device]

    # ---- a call ------------------------------------------------------------------------------

    def __call__(self, c: torch.Tensor, q_out: torch.Tensor) -> torch.Tensor:
        """R_G per sample for codes c (B, code_dim) fed to G and Q's raw outputs q_out (B, code_dim)."""
        const = self._constants_on(c.device)
        nll = self._nlls(self._node_matrix(c.float(), q_out.float(), const), const)
        total = nll @ const["weights"]
        if self.form == "perfect_map" and self.edges:
            total = total - (nll[const["minus"]] - nll[const["with"]]).clamp_max(self.edge_cap).sum()
        return total

    def edge_information(self, c: torch.Tensor, q_out: torch.Tensor) -> dict[Edge, torch.Tensor]:
        """CMI(v; u | pa(v) minus u) in nats for every edge u -> v into a q node, uncapped."""
        if self.form != "perfect_map":  # only perfect_map plans the fits without one parent
            return StructuralLoss(self.spec, self._parents, "perfect_map", **self._options).edge_information(c, q_out)
        const = self._constants_on(c.device)
        nll = self._nlls(self._node_matrix(c.float(), q_out.float(), const), const)
        return {edge: nll[minus] - nll[fit] for edge, minus, fit in self.edges}

    def _node_matrix(self, c: torch.Tensor, q_out: torch.Tensor, const: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Z = [c, q, 1] (B, W): one-hot / softmax for categorical codes, standardized continuous codes."""
        if any(code.kind == "categorical" for code in self.spec.codes):
            parts = self.spec.split(q_out)
            q_out = torch.cat(
                [F.softmax(p, 1) if k.kind == "categorical" else p for k, p in zip(self.spec.codes, parts)], 1
            )
        x = torch.cat([c, q_out], 1)
        var, mean = torch.var_mean(x, 0, correction=0, keepdim=True)
        x = torch.where(const["continuous"], (x - mean) * torch.rsqrt(var + 1e-8), x)
        return torch.cat([x, x.new_ones(x.shape[0], 1)], 1)

    def _nlls(self, z: torch.Tensor, const: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The nll of every planned fit, continuous ones first: (F,)."""
        n = z.shape[0]
        parts = []
        if self._n_continuous:
            with torch.no_grad():
                s = z.T @ z / n  # (W, W)
                system = s * const["outer"] + const["fill"]  # (F, W, W)
                # solve_ex: no error check, so no host sync on a GPU (linalg.solve waits for the device to
                # check for a singular system; one gives NaNs, which the trainer reports as diverged)
                beta = torch.linalg.solve_ex(system, s[const["child"]] * const["mask"]).result  # (F, W)
            var = (z[:, const["child"]] - z @ beta.T).pow(2).mean(0)  # (F,)
            if self.correct:
                var = var * self._variance_shifts(n, z.device)
            parts.append(0.5 * torch.log(var.clamp_min(self.floor)) + _HALF_LOG_2PI_E)
        for (child, parents, _), fits in zip(self._categorical_groups, const["groups"]):
            weights = torch.cat([configuration_weights([z[:, u] for u in pa], n, z) for pa in parents], 1)
            parts.append(categorical_nlls(z[:, child], weights, fits, self.alpha, self.correct))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _variance_shifts(self, n: int, device: torch.device) -> torch.Tensor:
        """exp(delta(N, p)) per continuous fit (module docstring), cached per batch size and device."""
        if (n, device) not in self._shifts:
            shifts = [math.exp(log_variance_shift(n, p)) for p in self._n_coefficients]
            self._shifts[n, device] = torch.tensor(shifts, dtype=torch.float32, device=device)
        return self._shifts[n, device]

    def n_coefficients(self, parents: Sequence[str]) -> int:
        """Rank of [parents, 1]: 1 + one per continuous parent + k - 1 per categorical parent of k classes
        (its columns sum to 1, the intercept)."""
        return 1 + sum(self.spec.code(u).dim - (self.spec.code(u).kind == "categorical") for u in parents)


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
