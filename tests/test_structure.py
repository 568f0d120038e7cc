from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy.special import digamma

from gan.latents import get_spec
from gan.structure import (
    CORRECTIONS,
    FORMS,
    StackedStructuralLoss,
    StructuralLoss,
    categorical_nll,
    family_loglik,
    log_variance_shift,
    residual_variance,
)
from structsearch.graph import Graph, preset
from structsearch.scoring import gauss_loglik

CONT3 = get_spec("cont,cont,cont")
COLLIDER = Graph.parse("c1->q1, c2->q2, c3->q3, q1->q3, q2->q3", CONT3)


def _linear_gaussian(n: int, p: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 3, size=p) + rng.normal(size=p)
    y = x @ rng.normal(size=p) + 0.7 * rng.normal(size=n) + 2.0
    return x, y


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("p", [0, 1, 2, 3])
def test_family_loglik_equals_pgmpy(p: int, seed: int) -> None:
    x, y = _linear_gaussian(300, 3, seed)
    df = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": y})
    ours = family_loglik(torch.from_numpy(y), torch.from_numpy(x[:, :p])).item()
    reference = gauss_loglik(df, {"y": tuple("abc"[:p])})
    assert ours == pytest.approx(reference, rel=1e-6)


def _codes(n: int, seed: int, q3_from_parents: bool, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """c ~ U(-1, 1); q_i = c_i + noise, and q3 either a linear function of q1, q2 or of c3 only."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 3, generator=g) * 2 - 1
    q = c + noise * torch.randn(n, 3, generator=g)
    if q3_from_parents:
        q[:, 2] = 0.8 * q[:, 0] - 0.6 * q[:, 1] + 0.3 * c[:, 2] + noise * torch.randn(n, generator=g)
    return c, q


def test_likelihood_rewards_the_dependence_the_graph_asks_for() -> None:
    """Under q1->q3, q2->q3: lower when q3 is a linear function of q1, q2 than when it is noise."""
    loss = StructuralLoss(CONT3, Graph.parse("q1->q3, q2->q3", CONT3).parents(), form="likelihood", floor=1e-4)
    c, dependent_q = _codes(512, 0, q3_from_parents=True)
    noise_q = dependent_q.clone()
    noise_q[:, 2] = torch.randn(512, generator=torch.Generator().manual_seed(9))
    assert loss(c, dependent_q) < loss(c, noise_q) - 0.5


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_floor_bounds_the_likelihood_reward(correction: str) -> None:
    """With q3 an exact copy of q1, each node's reward stops at -1/2 log(floor), corrected or not."""
    c = torch.rand(256, 3) * 2 - 1
    q = c.clone()
    q[:, 2] = q[:, 0]
    tight = StructuralLoss(CONT3, COLLIDER.parents(), form="likelihood", floor=1e-4, correction=correction)(c, q)
    floored = StructuralLoss(CONT3, COLLIDER.parents(), form="likelihood", floor=0.05, correction=correction)(c, q)
    half_log_2pi_e = 0.5 * np.log(2 * np.pi) + 0.5
    assert floored.item() == pytest.approx(3 * (half_log_2pi_e + 0.5 * np.log(0.05)), rel=1e-4)
    assert tight < floored - 5


def test_deviance_is_zero_when_the_batch_obeys_the_graph_and_positive_otherwise() -> None:
    independent = preset("independent", CONT3)
    obeying, in_sample = (
        StructuralLoss(CONT3, independent.parents(), form="deviance", correction=correction)(
            *_codes(2048, 1, q3_from_parents=False)
        )
        for correction in ("unbiased", "none")
    )
    violating = StructuralLoss(CONT3, independent.parents(), form="deviance")(*_codes(2048, 1, q3_from_parents=True))
    assert 0 <= in_sample.item() < 0.01  # the in-sample likelihood ratio is never negative
    assert abs(obeying.item()) < 0.01  # the unbiased one is 0 in expectation, so either sign
    assert violating.item() > 0.3


def test_deviance_is_zero_for_the_complete_graph() -> None:
    complete = preset("complete", CONT3).with_edges(add=[(f"c{i}", f"q{j}") for i in (1, 2, 3) for j in (1, 2, 3)])
    value = StructuralLoss(CONT3, complete.parents(), form="deviance")(*_codes(512, 2, q3_from_parents=True))
    assert abs(value.item()) < 1e-3


def _half_psi(n: int, p: int) -> float:
    """1/2 psi((N - p) / 2): the in-sample bias of a Gaussian nll with p coefficients, up to a constant in p."""
    return 0.5 * float(digamma((n - p) / 2))


@pytest.mark.parametrize("correction", CORRECTIONS)
@pytest.mark.parametrize(
    "edges", ["c1->q1, c2->q2, c3->q3", "c1->q1, c2->q2, c3->q3, q1->q3", "c1->q1, q3->q1, c2->q3"]
)
def test_deviance_equals_pgmpy_loglik_ratio_of_the_saturated_graph(edges: str, correction: str) -> None:
    """In-sample: pgmpy's ratio; corrected: plus sum_v 1/2 (psi((N - p_full)/2) - psi((N - p_pa)/2))."""
    graph = Graph.parse(edges, CONT3)
    c, q = _codes(1000, 3, q3_from_parents=True, noise=0.3)
    q = q * torch.tensor([2.0, 0.5, 3.0]) + 1.0  # raw, unstandardized values
    loss = StructuralLoss(CONT3, graph.parents(), form="deviance", floor=1e-9, ridge=0.0, correction=correction)
    deviance = loss(c.double(), q.double())

    df = pd.DataFrame(
        {
            **{f"c{i + 1}": c[:, i].double().numpy() for i in range(3)},
            **{f"q{i + 1}": q[:, i].double().numpy() for i in range(3)},
        }
    )
    order = graph.topological_q_order()
    full = {v: ("c1", "c2", "c3") + order[:i] for i, v in enumerate(order)}
    expected = in_sample = (gauss_loglik(df, full) - gauss_loglik(df, graph.parents())) / len(df)
    if correction == "unbiased":  # every node continuous: p = parents + intercept
        n, pa = len(df), graph.parents()
        expected += sum(_half_psi(n, 1 + len(full[v])) - _half_psi(n, 1 + len(pa[v])) for v in order)
        assert expected - in_sample < -1e-3  # the shift is there to see
    assert deviance.item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("form", FORMS)
def test_every_form_is_invariant_to_rescaling_a_continuous_q_column(form: str) -> None:
    loss = StructuralLoss(CONT3, COLLIDER.parents(), form=form)
    c, q = _codes(256, 4, q3_from_parents=True)
    base = loss(c, q)
    for scale in (10.0, 0.1):
        q2 = q.clone()
        q2[:, 2] = q2[:, 2] * scale + 5
        assert loss(c, q2).item() == pytest.approx(base.item(), rel=1e-4)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("spec_name", ["cont,cont,cont", "mnist"])
def test_every_form_has_finite_gradients_on_a_degenerate_batch(form: str, spec_name: str) -> None:
    spec = get_spec(spec_name)
    graph = preset("complete", spec)
    loss = StructuralLoss(spec, graph.parents(), form=form)
    _, c = spec.sample(3, torch.Generator().manual_seed(0))  # N=3 < parents + 2
    q_out = torch.zeros(3, spec.code_dim, requires_grad=True)  # constant columns
    with torch.no_grad():
        q_out[:, -1] = 1.0
    value = loss(c, q_out)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(q_out.grad).all()


def test_regularizer_gradient_reaches_q() -> None:
    loss = StructuralLoss(CONT3, preset("independent", CONT3).parents(), form="deviance")
    c, q = _codes(256, 5, q3_from_parents=True)
    q.requires_grad_(True)
    loss(c, q).backward()
    assert q.grad.abs().sum() > 0


def test_categorical_cpt_likelihood() -> None:
    """A child that copies its categorical parent has lower NLL than an independent one."""
    g = torch.Generator().manual_seed(0)
    parent = torch.nn.functional.one_hot(torch.randint(4, (2000,), generator=g), 4).float()
    copy = parent.clone()
    independent = torch.nn.functional.one_hot(torch.randint(4, (2000,), generator=g), 4).float()
    assert categorical_nll(copy, [parent]).item() < 0.01
    assert categorical_nll(independent, [parent]).item() == pytest.approx(np.log(4), abs=0.05)
    assert categorical_nll(independent, []).item() == pytest.approx(np.log(4), abs=0.02)


def _two_categorical_codes(n: int = 1000) -> torch.Tensor:
    """One-hot codes of spec cat4,cat4: (n, 8), independent uniform classes."""
    g = torch.Generator().manual_seed(0)
    k1, k2 = (torch.randint(4, (n,), generator=g) for _ in range(2))
    return torch.cat([torch.nn.functional.one_hot(k1, 4), torch.nn.functional.one_hot(k2, 4)], 1).float()


def test_categorical_deviance_sees_a_forbidden_dependence() -> None:
    spec = get_spec("cat4,cat4")
    c = _two_categorical_codes()
    obey = torch.cat([20 * c[:, :4], 20 * c[:, 4:]], 1)  # q_i logits peaked on c_i
    leak = torch.cat([20 * c[:, :4], 20 * c[:, :4]], 1)  # q2 follows c1: forbidden by the graph
    loss = StructuralLoss(spec, preset("independent", spec).parents(), form="deviance")
    assert loss(c, obey).item() < 0.02
    assert loss(c, leak).item() > 1.0


# ---- perfect_map ---------------------------------------------------------------------------


@pytest.mark.parametrize("edge", [("q1", "q3"), ("q2", "q3"), ("c3", "q3"), ("c1", "q1")])
def test_perfect_map_edge_term_equals_pgmpy_loglik_difference(edge: tuple[str, str]) -> None:
    """CMI(v; u | pa minus u) = (L(v | pa) - L(v | pa minus u)) / N on raw values."""
    c, q = _codes(1000, 6, q3_from_parents=True, noise=0.3)
    q = q * torch.tensor([2.0, 0.5, 3.0]) + 1.0  # raw, unstandardized values
    loss = StructuralLoss(
        CONT3, COLLIDER.parents(), form="perfect_map", floor=1e-9, ridge=0.0, edge_cap=100.0, correction="none"
    )
    cmi = loss.edge_information(c.double(), q.double())[edge]

    df = pd.DataFrame(
        {
            **{f"c{i + 1}": c[:, i].double().numpy() for i in range(3)},
            **{f"q{i + 1}": q[:, i].double().numpy() for i in range(3)},
        }
    )
    u, v = edge
    pa = COLLIDER.parents()[v]
    expected = (gauss_loglik(df, {v: pa}) - gauss_loglik(df, {v: tuple(p for p in pa if p != u)})) / len(df)
    assert expected > 0.01
    assert cmi.item() == pytest.approx(expected, rel=1e-3, abs=1e-5)


def test_perfect_map_gives_a_copying_child_no_credit_for_its_other_edges() -> None:
    """q3 = q1 exactly: CMI of q2->q3 and c3->q3 is ~0, and the copy scores worse than a mixture."""
    c, mixture = _codes(1024, 7, q3_from_parents=True)
    copy = mixture.clone()
    copy[:, 2] = copy[:, 0]
    loss = StructuralLoss(CONT3, COLLIDER.parents(), form="perfect_map")
    cmi = loss.edge_information(c, copy)
    assert abs(cmi[("q2", "q3")].item()) < 1e-3 and abs(cmi[("c3", "q3")].item()) < 1e-3
    assert cmi[("q1", "q3")].item() > loss.edge_cap
    assert loss(c, mixture) < loss(c, copy) - 0.5
    # ... while the literal likelihood prefers the copy (or is indifferent at the floor)
    likelihood = StructuralLoss(CONT3, COLLIDER.parents(), form="likelihood")
    assert likelihood(c, copy) <= likelihood(c, mixture) + 1e-4


def test_perfect_map_prefers_data_where_every_present_edge_carries_information() -> None:
    c, faithful = _codes(2048, 8, q3_from_parents=True)
    g = torch.Generator().manual_seed(18)
    unfaithful = faithful.clone()  # q3 ignores q2: the present edge q2->q3 carries nothing
    unfaithful[:, 2] = 0.8 * unfaithful[:, 0] + 0.3 * c[:, 2] + 0.1 * torch.randn(2048, generator=g)
    loss = StructuralLoss(CONT3, COLLIDER.parents(), form="perfect_map")
    assert abs(loss.edge_information(c, unfaithful)[("q2", "q3")].item()) < 0.01
    assert loss(c, faithful) < loss(c, unfaithful) - 0.5


def test_perfect_map_edge_reward_is_capped() -> None:
    c, q = _codes(1024, 9, q3_from_parents=False, noise=0.01)  # q_i ~ c_i: each ci->qi carries ~1.5 nats
    independent = preset("independent", CONT3).parents()
    for cap in (0.25, 1.0):
        loss = StructuralLoss(CONT3, independent, form="perfect_map", edge_cap=cap)
        deviance = StructuralLoss(CONT3, independent, form="deviance")(c, q)
        assert (loss(c, q) - deviance).item() == pytest.approx(-3 * cap, abs=1e-4)


def test_perfect_map_on_categorical_codes_uses_the_cpt_difference() -> None:
    spec = get_spec("cat4,cat4")
    c = _two_categorical_codes()
    q_out = 20 * c  # q_i peaked on c_i
    graph = Graph.parse("c1->q1, c2->q2, q1->q2", spec)
    cmi = StructuralLoss(spec, graph.parents(), form="perfect_map").edge_information(c, q_out)
    assert cmi[("c1", "q1")].item() == pytest.approx(np.log(4), abs=0.05)  # all of q1's entropy
    assert abs(cmi[("q1", "q2")].item()) < 0.05  # q2 does not depend on q1 given c2


def test_perfect_map_rejects_a_non_positive_cap() -> None:
    with pytest.raises(ValueError, match="edge cap"):
        StructuralLoss(CONT3, COLLIDER.parents(), form="perfect_map", edge_cap=0.0)


# ---- small-batch correction ----------------------------------------------------------------

MNIST = get_spec("cat10,cont,cont")


def _collider_scm(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The collider exactly: q_i = c_i + 0.3 e_i (i = 1, 2), q3 = 0.6 q1 + 0.6 q2 + 0.5 c3 + 0.3 e3."""
    _, c = CONT3.sample(n, g)
    q = c + 0.3 * torch.randn(n, 3, generator=g)
    q[:, 2] = 0.6 * q[:, 0] + 0.6 * q[:, 1] + 0.5 * c[:, 2] + 0.3 * torch.randn(n, generator=g)
    return c, q


def _mnist_scm(n: int, g: torch.Generator, q1_follows_c1: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """cat10,cont,cont: q1 logits 3 c1 + N(0, 1) (or 2 N(0, 1), independent of c1); q2 = c2 + 0.3 e;
    q3 linear in q1's softmax, q2 and c3, + 0.3 e."""
    _, c = MNIST.sample(n, g)
    noise = torch.randn(n, 10, generator=g)
    logits = 3 * c[:, :10] + noise if q1_follows_c1 else 2 * noise
    p1 = F.softmax(logits, 1) @ torch.linspace(-1, 1, 10)
    q2 = c[:, 10] + 0.3 * torch.randn(n, generator=g)
    q3 = p1 + 0.6 * q2 + 0.5 * c[:, 11] + 0.3 * torch.randn(n, generator=g)
    return c, torch.cat([logits, q2[:, None], q3[:, None]], 1)


def _mean_deviance(spec, edges: str, draw, n: int, correction: str, n_draws: int = 400) -> float:
    loss = StructuralLoss(spec, Graph.parse(edges, spec).parents(), form="deviance", correction=correction)
    g = torch.Generator().manual_seed(0)
    return torch.stack([loss(*draw(n, g)) for _ in range(n_draws)]).mean().item()


def test_a_true_continuous_graph_scores_zero_at_batch_64_only_when_corrected() -> None:
    edges = "c1->q1, c2->q2, c3->q3, q1->q3, q2->q3"
    assert abs(_mean_deviance(CONT3, edges, _collider_scm, 64, "unbiased")) < 0.01
    assert _mean_deviance(CONT3, edges, _collider_scm, 64, "none") > 0.05  # 7 / 2N = 0.055


def test_a_true_graph_with_categorical_parents_scores_zero_at_batch_64_only_when_corrected() -> None:
    """q2's and q3's saturated fits have c1's one-hot and q1's softmax columns: 9 coefficients each."""
    edges = "c1->q1, c2->q2, c3->q3, q1->q3, q2->q3"
    assert abs(_mean_deviance(MNIST, edges, _mnist_scm, 64, "unbiased")) < 0.01
    assert _mean_deviance(MNIST, edges, _mnist_scm, 64, "none") > 0.2


def test_the_jackknife_removes_most_of_a_categorical_familys_bias_at_batch_128() -> None:
    """q1 free of every code, no parents: its term nll(q1) - nll(q1 | c1) has 81 more free parameters
    in the saturated CPT. First order: at batch 64 (6 samples per configuration) 0.03 of 0.48 remains."""

    def free(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return _mnist_scm(n, g, q1_follows_c1=False)

    edges = "c2->q2, c3->q3, q1->q3, q2->q3"
    assert abs(_mean_deviance(MNIST, edges, free, 128, "unbiased")) < 0.015
    assert _mean_deviance(MNIST, edges, free, 128, "none") > 0.15


def test_the_corrected_likelihood_is_unbiased_with_the_batch_standardization_counted() -> None:
    """c1, q1 = c1 + e/2 Gaussian at batch 16: E[nll(q1 | c1)] = 1/2 log(2 pi e sigma^2 / Var q1), sigma^2 / Var = 0.2.

    Dividing by the batch variance biases log(RSS / TSS) by psi((N - 1)/2) - psi((N - p)/2) (module
    docstring); correcting RSS alone, -psi((N - p)/2) - log(2 / N), would leave +0.066 nats here."""
    spec = get_spec("cont,cont")
    population = 2 * (0.5 * np.log(2 * np.pi) + 0.5) + 0.5 * np.log(0.2)  # q2 has no parents: nll = 1/2 log(2 pi e)
    g = torch.Generator().manual_seed(0)
    means = {}
    for correction in CORRECTIONS:
        loss = StructuralLoss(spec, {"q1": ("c1",)}, form="likelihood", floor=1e-6, correction=correction)
        draws = []
        for _ in range(3000):
            c = torch.randn(16, 2, generator=g)
            draws.append(loss(c, c + 0.5 * torch.randn(16, 2, generator=g)))
        means[correction] = torch.stack(draws).mean().item() - population
    assert abs(means["unbiased"]) < 0.015  # standard error 0.004
    assert means["none"] < -0.02  # expected 1/2 (psi(7) - psi(7.5)) = -0.037


def test_jackknife_equals_refitting_without_each_sample() -> None:
    g = torch.Generator().manual_seed(0)
    child = F.softmax(2 * torch.randn(20, 4, generator=g), 1)
    parent = F.softmax(3 * torch.randn(20, 3, generator=g), 1)
    nll = categorical_nll(child, [parent]).item()
    loo = [categorical_nll(child[torch.arange(20) != i], [parent[torch.arange(20) != i]]).item() for i in range(20)]
    expected = nll - 19 * (np.mean(loo) - nll)
    assert categorical_nll(child, [parent], correct=True).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("spec", [CONT3, MNIST], ids=["cont3", "mnist"])
def test_the_correction_vanishes_at_large_batch(form: str, spec) -> None:
    parents = Graph.parse("c1->q1, c2->q2, c3->q3, q1->q3, q2->q3", spec).parents()
    draw = _collider_scm if spec is CONT3 else _mnist_scm
    small, large = draw(64, torch.Generator().manual_seed(1)), draw(20_000, torch.Generator().manual_seed(2))
    corrected, in_sample = (StructuralLoss(spec, parents, form=form, correction=c) for c in ("unbiased", "none"))
    assert abs(corrected(*large) - in_sample(*large)).item() < 1e-3
    assert abs(corrected(*small) - in_sample(*small)).item() > 0.01


@pytest.mark.parametrize("form", ["likelihood", "deviance"])
@pytest.mark.parametrize("spec", [CONT3, MNIST], ids=["cont3", "mnist"])
def test_the_correction_leaves_the_gradient_unchanged(form: str, spec) -> None:
    """A constant shift per continuous family (no floor binds here); detached for categorical ones."""
    parents = Graph.parse("c1->q1, c2->q2, c3->q3, q1->q3, q2->q3", spec).parents()
    c, q = (_collider_scm if spec is CONT3 else _mnist_scm)(64, torch.Generator().manual_seed(3))
    grads, values = [], []
    for correction in CORRECTIONS:
        q_out = q.clone().requires_grad_(True)
        value = StructuralLoss(spec, parents, form=form, correction=correction)(c, q_out)
        value.backward()
        grads.append(q_out.grad)
        values.append(value.item())
    assert abs(values[0] - values[1]) > 0.02
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_an_unknown_correction_is_refused() -> None:
    with pytest.raises(ValueError, match="struct correction"):
        StructuralLoss(CONT3, COLLIDER.parents(), correction="aic")


# ---- the batched implementation against the family-by-family one ---------------------------


def _reference_loss(
    spec, parents, form, c, q_out, floor=0.05, ridge=1e-4, alpha=0.1, edge_cap=1.0, correction="unbiased"
):
    """R_G computed family by family, each fit on its own [parents, 1] (the implementation before the
    batched solve), as the oracle of values and gradients."""
    correct = correction == "unbiased"
    values = {}
    for code, ci, qi in zip(spec.codes, spec.split(c.float()), spec.split(q_out.float())):
        i = code.name[1:]
        if code.kind == "categorical":
            values["c" + i], values["q" + i] = ci, F.softmax(qi, dim=1)
        else:
            values["c" + i], values["q" + i] = _standardize(ci), _standardize(qi)

    def nll(v, pa):
        if spec.code(v).kind == "categorical":
            return categorical_nll(values[v], [values[u] for u in pa], alpha, correct)
        child = values[v][:, 0]
        x = torch.cat([values[u] for u in pa], 1) if pa else child.new_zeros(len(child), 0)
        var = residual_variance(child, x, ridge)
        if correct:
            p = 1 + sum(spec.code(u).dim - (spec.code(u).kind == "categorical") for u in pa)
            var = var * np.exp(log_variance_shift(len(child), p))
        return 0.5 * torch.log(var.clamp_min(floor)) + 0.5 * np.log(2 * np.pi) + 0.5

    loss = StructuralLoss(spec, parents, form, floor, ridge, alpha, edge_cap, correction)
    total = torch.zeros(())
    for fam in loss.families:
        graph_nll = nll(fam.node, fam.parents)
        if form in ("likelihood", "both"):
            total = total + graph_nll
        if form in ("deviance", "both", "perfect_map"):
            total = total + graph_nll - nll(fam.node, fam.full)
        if form == "perfect_map":
            for u in fam.parents:
                cmi = nll(fam.node, tuple(p for p in fam.parents if p != u)) - graph_nll
                total = total - cmi.clamp_max(edge_cap)
    return total


def _standardize(x):
    x = x - x.mean(0, keepdim=True)
    return x / torch.sqrt(x.pow(2).mean(0, keepdim=True) + 1e-8)


def _random_dag(spec, seed: int) -> dict[str, tuple[str, ...]]:
    """A random graph over spec's q nodes (edges only forward in a random order) plus random ci->qi;
    a categorical q node gets only categorical parents (the graphs the toolkit accepts)."""
    rng = np.random.default_rng(seed)
    n = len(spec.codes)
    order = [f"q{i + 1}" for i in rng.permutation(n)]
    parents = {}
    for position, v in enumerate(order):
        allowed = [
            u for u in order[:position] if spec.code(v).kind == "continuous" or spec.code(u).kind == "categorical"
        ]
        pa = [u for u in allowed if rng.random() < 0.5]
        pa += [f"c{v[1:]}"] if rng.random() < 0.7 else []
        parents[v] = tuple(pa)
    return parents


@pytest.mark.parametrize(
    "spec_text", ["cont,cont,cont", "mnist", "cat10,cont,cont,cont", "cat4,cat3,cont", "cat4,cat4"]
)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("correction", CORRECTIONS)
def test_batched_fits_equal_family_by_family_values_and_gradients(spec_text: str, form: str, correction: str) -> None:
    """The one-solve implementation gives the family-by-family values to 1e-6 and the same gradients,
    over random graphs, batch sizes 64 and 128, on codes with real dependences (the one-hot parents
    and the ridge included)."""
    spec = get_spec(spec_text)
    for seed, batch in enumerate((64, 128, 64, 128)):
        parents = _random_dag(spec, seed) if seed else preset("independent", spec).parents()
        g = torch.Generator().manual_seed(seed)
        _, c = spec.sample(batch, g)
        q = c * 3 + 0.5 * torch.randn(batch, spec.code_dim, generator=g)  # Q reads its codes, noisily
        q[:, -1] += q[:, 0] - 2 * q[:, 1]  # and one code depends on others
        q_ref, q_new = q.clone().requires_grad_(), q.clone().requires_grad_()
        expected = _reference_loss(spec, parents, form, c, q_ref, correction=correction)
        got = StructuralLoss(spec, parents, form, correction=correction)(c, q_new)
        assert got.item() == pytest.approx(expected.item(), abs=1e-6 * max(1.0, abs(expected.item())))
        expected.backward()
        got.backward()
        # fp32: a deviance's gradient is a difference of two fits' gradients, so its rounding error
        # is ~1e-5 of the largest gradient (measured up to 1.6e-5); a wrong column or a missing
        # term is off by O(1) of it
        scale = q_ref.grad.abs().max().item()
        assert (q_new.grad - q_ref.grad).abs().max().item() <= 1e-4 * max(scale, 1e-3)


def test_each_distinct_fit_is_computed_once() -> None:
    """A graph whose families are the saturated model's plans one fit per node for its deviance."""
    spec = get_spec("mnist")
    saturated = {f.node: f.full for f in StructuralLoss(spec, {}, "deviance").families}
    complete = StructuralLoss(spec, saturated, "deviance")
    assert len(complete.fits) == len(spec.codes)
    collider = StructuralLoss(spec, Graph.parse("q1->q3, q2->q3", spec).parents(), "deviance")
    assert len(collider.fits) == 2 * len(spec.codes)


def test_the_plan_is_float32_whatever_the_default_dtype() -> None:
    """R_G computes in fp32 (its inputs are cast); its planned constants must be too, or a process
    with a float64 default dtype fails in the solve."""
    spec = get_spec("mnist")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        loss = StructuralLoss(spec, Graph.parse("q1->q3, q2->q3", spec).parents())
        _, c = spec.sample(64, torch.Generator().manual_seed(0))
        assert torch.isfinite(loss(c, torch.randn(64, spec.code_dim)))
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("spec_text", ["cont,cont,cont", "mnist", "cat4,cat3,cont"])
def test_stacked_losses_equal_each_graph_alone(spec_text: str) -> None:
    """K graphs of one spec (different edges and forms, so different numbers of fits, categorical
    tables and edges) in one StackedStructuralLoss give each graph's own value and gradient."""
    spec = get_spec(spec_text)
    forms = ["deviance", "perfect_map", "likelihood", "both", "deviance"]
    losses = [StructuralLoss(spec, _random_dag(spec, seed), form) for seed, form in enumerate(forms)]
    losses.append(StructuralLoss(spec, {}, "deviance"))  # the empty graph: fewest fits
    g = torch.Generator().manual_seed(7)
    cs = torch.stack([spec.sample(64, g)[1] for _ in losses])
    qs = cs * 3 + 0.5 * torch.randn(cs.shape, generator=g)
    qs[..., -1] += qs[..., 0] - 2 * qs[..., 1]
    q_stacked, q_alone = qs.clone().requires_grad_(), qs.clone().requires_grad_()
    stacked = StackedStructuralLoss(losses)(cs, q_stacked)
    alone = torch.stack([loss(c, q) for loss, c, q in zip(losses, cs, q_alone)])
    assert stacked.shape == (len(losses),)
    assert torch.allclose(stacked, alone, rtol=0, atol=1e-6)
    stacked.sum().backward()
    alone.sum().backward()
    assert (q_stacked.grad - q_alone.grad).abs().max() <= 1e-6 * max(q_alone.grad.abs().max().item(), 1.0)


def test_grad_child_keeps_the_value_and_never_moves_a_code_through_its_role_as_a_parent() -> None:
    """The deviance of the independent graph on cat10,cont,cont: q1's own fits (q1 | c1) are its
    graph and saturated fits alike, so q1 enters the deviance only as a parent of q2's and q3's saturated fits. With the
    parents detached its logits get no gradient at all; with ``all`` they do."""
    graph = Graph.parse("c1->q1, c2->q2, c3->q3", MNIST)
    gen = torch.Generator().manual_seed(3)
    c = torch.cat(
        [F.one_hot(torch.randint(0, 10, (128,), generator=gen), 10).float(), torch.rand(128, 2, generator=gen)], 1
    )
    base = c + 0.3 * torch.randn(128, 12, generator=gen)
    values, grads = {}, {}
    for grad in ("all", "child"):
        q = base.clone().requires_grad_()
        loss = StructuralLoss(MNIST, graph.parents(), form="deviance", grad=grad)(c, q)
        loss.backward()
        values[grad], grads[grad] = loss.item(), q.grad
    assert values["child"] == pytest.approx(values["all"], abs=1e-6)
    assert grads["all"][:, :10].abs().max() > 1e-4  # the saturated fits move q1 through its softmax
    assert grads["child"][:, :10].abs().max() == 0.0
    assert grads["child"][:, 10:].abs().max() > 1e-4  # q2, q3 still move as children
    with pytest.raises(ValueError, match="unknown struct grad 'parents'; expected one of all, child"):
        StructuralLoss(MNIST, graph.parents(), grad="parents")


# ---- a pooled fit --------------------------------------------------------------------------


def test_a_pooled_fits_first_call_is_the_uncorrected_batch_fit() -> None:
    """Bias-corrected like Adam's moments: the pool of one batch is that batch, in value and gradient."""
    parents = Graph.parse("c1->q1, c2->q2, c3->q3, q1->q3, q2->q3", MNIST).parents()
    c, q = _mnist_scm(128, torch.Generator().manual_seed(4))
    values, grads = [], []
    for options in ({"fit": "batch", "correction": "none"}, {"fit": "pooled", "pool_decay": 0.9}):
        q_out = q.clone().requires_grad_()
        value = StructuralLoss(MNIST, parents, form="deviance", **options)(c, q_out)
        value.backward()
        values.append(value.item())
        grads.append(q_out.grad)
    assert values[1] == pytest.approx(values[0], rel=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)


def test_a_pooled_fit_leaves_a_batch_that_obeys_the_graph_almost_no_gradient() -> None:
    """The independent graph of cat10,cont,cont, exactly true: the batch fit's saturated families
    chase each batch's noise and its gradient does too; fitted on a pool of 300 batches, both fits
    predict alike and the gradient is a small fraction of it. A violated graph still costs as much."""
    graph = Graph.parse("c1->q1, c2->q2, c3->q3", MNIST).parents()

    def independent(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        _, c = MNIST.sample(n, g)
        return c, torch.cat(
            [3 * c[:, :10] + torch.randn(n, 10, generator=g), c[:, 10:] + 0.3 * torch.randn(n, 2, generator=g)], 1
        )

    def dependent(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        c, q = independent(n, g)
        q[:, 11] += 0.8 * q[:, 10]  # q3 follows q2: the graph is violated
        return c, q

    def grad_norm(loss: StructuralLoss, c: torch.Tensor, q: torch.Tensor) -> tuple[float, float]:
        q_out = q.clone().requires_grad_()
        value = loss(c, q_out)
        value.backward()
        return value.item(), q_out.grad.norm().item()

    for draw in (independent, dependent):
        g = torch.Generator().manual_seed(5)
        pooled = StructuralLoss(MNIST, graph, form="deviance", fit="pooled", pool_decay=0.99)
        for _ in range(300):
            pooled(*draw(128, g))
        batch = StructuralLoss(MNIST, graph, form="deviance")
        tests = [draw(128, g) for _ in range(20)]
        on_pool = np.array([grad_norm(pooled, *t) for t in tests])
        on_batch = np.array([grad_norm(batch, *t) for t in tests])
        if draw is independent:
            assert np.median(on_pool[:, 1] / on_batch[:, 1]) < 0.3
            assert abs(on_pool[:, 0].mean()) < 0.01
        else:
            assert on_pool[:, 0].mean() > 0.2 and on_pool[:, 0].mean() == pytest.approx(on_batch[:, 0].mean(), rel=0.2)
            assert np.median(on_pool[:, 1] / on_batch[:, 1]) > 0.5


def test_a_pooled_fits_pool_is_its_state() -> None:
    """Saved after some calls and loaded into a fresh loss, the pool makes the next call the same; a
    fresh pool does not."""
    parents = COLLIDER.parents()
    g = torch.Generator().manual_seed(6)
    batches = [_collider_scm(64, g) for _ in range(6)]
    first = StructuralLoss(CONT3, parents, form="deviance", fit="pooled")
    for b in batches[:5]:
        first(*b)
    second = StructuralLoss(CONT3, parents, form="deviance", fit="pooled")
    second.load_state_dict(first.state_dict())
    fresh = StructuralLoss(CONT3, parents, form="deviance", fit="pooled")
    resumed, uninterrupted, restarted = (loss(*batches[5]).item() for loss in (second, first, fresh))
    assert resumed == uninterrupted
    assert abs(restarted - uninterrupted) > 1e-4
    assert StructuralLoss(CONT3, parents).state_dict() == {}


def test_a_bad_fit_or_pool_decay_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown struct fit 'pool'; expected one of batch, pooled"):
        StructuralLoss(CONT3, COLLIDER.parents(), fit="pool")
    for decay in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"struct pool decay must be in \(0, 1\), got {decay}"):
            StructuralLoss(CONT3, COLLIDER.parents(), fit="pooled", pool_decay=decay)
