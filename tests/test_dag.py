"""The graph-algorithm layer (gan/dag.py): orders, cycles, Markov classes, known answers."""

from __future__ import annotations

import pytest

from gan import dag

NODES3 = ("q1", "q2", "q3")
CHAIN = (("q1", "q2"), ("q2", "q3"))
COLLIDER = (("q1", "q3"), ("q2", "q3"))
COMPLETE = (("q1", "q2"), ("q1", "q3"), ("q2", "q3"))


def test_topological_order_breaks_ties_by_index_or_key() -> None:
    assert dag.topological_order(NODES3, [("q3", "q1")]) == ["q2", "q3", "q1"]
    assert dag.topological_order(["q2", "q10", "q1"], []) == ["q1", "q2", "q10"]  # q2 before q10
    prio = {"q1": 0.9, "q2": 0.1, "q3": 0.5}
    assert dag.topological_order(NODES3, [], key=lambda v: prio[v]) == ["q2", "q3", "q1"]
    assert dag.parents_order({"q1": ("q2", "c1"), "q2": (), "q3": ("q1",)}) == ["q2", "q1", "q3"]  # c1 ignored


def test_a_cycle_is_named_from_its_smallest_node() -> None:
    assert dag.find_cycle([("q3", "q1"), ("q1", "q2"), ("q2", "q3")]) == ["q1", "q2", "q3", "q1"]
    assert dag.find_cycle(CHAIN) is None and dag.is_acyclic(CHAIN)
    with pytest.raises(ValueError, match="cycle q1 -> q2 -> q1"):
        dag.topological_order(NODES3, [("q1", "q2"), ("q2", "q1")])


def test_all_dags_are_the_labelled_dags() -> None:
    dags = dag.all_dags(NODES3)
    assert len(dags) == len(set(dags)) == 25 and dags[0] == ()
    assert sum(len(d) == 3 for d in dags) == 6  # the 3! topological orders of a complete DAG
    assert (("q1", "q2"), ("q2", "q3"), ("q3", "q1")) not in dags
    assert len(dag.all_dags(("q1", "q2", "q3", "q4"))) == 543  # OEIS A003024


def test_markov_equivalence() -> None:
    assert dag.markov_equivalent(CHAIN, (("q2", "q1"), ("q3", "q2")))  # reversed
    assert dag.markov_equivalent(CHAIN, (("q2", "q1"), ("q2", "q3")))  # the fork at q2
    assert not dag.markov_equivalent(CHAIN, COLLIDER)  # another skeleton, and a v-structure at q3
    assert not dag.markov_equivalent(CHAIN, (("q1", "q2"), ("q3", "q2")))  # same skeleton, a v-structure
    assert dag.markov_equivalent(COMPLETE, (("q3", "q2"), ("q3", "q1"), ("q2", "q1")))
    classes = {dag.markov_class(d) for d in dag.all_dags(NODES3)}
    assert len(classes) == 11  # Markov equivalence classes of 3-node DAGs
    assert len({dag.markov_class(d) for d in dag.all_dags(("q1", "q2", "q3", "q4"))}) == 185


def test_cpdag_keeps_only_the_compelled_edges() -> None:
    assert dag.cpdag(COLLIDER, NODES3) == (COLLIDER, ())  # a v-structure is compelled
    assert dag.cpdag(CHAIN, NODES3) == ((), CHAIN)  # chain, reversed chain and fork are one class
    assert dag.cpdag(COMPLETE, NODES3) == ((), COMPLETE)
    # q1 -> q3 <- q2 compels q3 -> q4 (Meek's first rule): no new v-structure may appear at q4
    directed, undirected = dag.cpdag(COLLIDER + (("q3", "q4"),), ("q1", "q2", "q3", "q4"))
    assert directed == (("q1", "q3"), ("q2", "q3"), ("q3", "q4")) and undirected == ()
