from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gan.latents import get_spec
from gan.structure import FORMS, StructuralLoss, categorical_nll, family_loglik
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


def test_floor_bounds_the_likelihood_reward() -> None:
    """With q3 an exact copy of q1, each node's reward stops at -1/2 log(floor)."""
    c = torch.rand(256, 3) * 2 - 1
    q = c.clone()
    q[:, 2] = q[:, 0]
    tight = StructuralLoss(CONT3, COLLIDER.parents(), form="likelihood", floor=1e-4)(c, q)
    floored = StructuralLoss(CONT3, COLLIDER.parents(), form="likelihood", floor=0.05)(c, q)
    half_log_2pi_e = 0.5 * np.log(2 * np.pi) + 0.5
    assert floored.item() == pytest.approx(3 * (half_log_2pi_e + 0.5 * np.log(0.05)), rel=1e-4)
    assert tight < floored - 5


def test_deviance_is_zero_when_the_batch_obeys_the_graph_and_positive_otherwise() -> None:
    independent = preset("independent", CONT3)
    obeying = StructuralLoss(CONT3, independent.parents(), form="deviance")(*_codes(2048, 1, q3_from_parents=False))
    violating = StructuralLoss(CONT3, independent.parents(), form="deviance")(*_codes(2048, 1, q3_from_parents=True))
    assert 0 <= obeying.item() < 0.01
    assert violating.item() > 0.3


def test_deviance_is_zero_for_the_complete_graph() -> None:
    complete = preset("complete", CONT3).with_edges(add=[(f"c{i}", f"q{j}") for i in (1, 2, 3) for j in (1, 2, 3)])
    value = StructuralLoss(CONT3, complete.parents(), form="deviance")(*_codes(512, 2, q3_from_parents=True))
    assert abs(value.item()) < 1e-3


@pytest.mark.parametrize(
    "edges", ["c1->q1, c2->q2, c3->q3", "c1->q1, c2->q2, c3->q3, q1->q3", "c1->q1, q3->q1, c2->q3"]
)
def test_deviance_equals_pgmpy_loglik_ratio_of_the_saturated_graph(edges: str) -> None:
    graph = Graph.parse(edges, CONT3)
    c, q = _codes(1000, 3, q3_from_parents=True, noise=0.3)
    q = q * torch.tensor([2.0, 0.5, 3.0]) + 1.0  # raw, unstandardized values
    deviance = StructuralLoss(CONT3, graph.parents(), form="deviance", floor=1e-9, ridge=0.0)(c.double(), q.double())

    df = pd.DataFrame(
        {
            **{f"c{i + 1}": c[:, i].double().numpy() for i in range(3)},
            **{f"q{i + 1}": q[:, i].double().numpy() for i in range(3)},
        }
    )
    order = graph.topological_q_order()
    full = {v: ("c1", "c2", "c3") + order[:i] for i, v in enumerate(order)}
    expected = (gauss_loglik(df, full) - gauss_loglik(df, graph.parents())) / len(df)
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
    loss = StructuralLoss(CONT3, COLLIDER.parents(), form="perfect_map", floor=1e-9, ridge=0.0, edge_cap=100.0)
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
