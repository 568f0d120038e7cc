from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gan.latents import get_spec
from structsearch.graph import PRESETS, Graph, GraphError, load_graph, preset
from structsearch.scoring import to_pgmpy

MNIST = get_spec("mnist")  # c1 categorical(10), c2, c3 continuous
CONT3 = get_spec("mnist3")


@pytest.mark.parametrize(
    ("text", "spec", "message"),
    [
        ("c1->q1, q9->q2", CONT3, "unknown node 'q9' in edge q9->q2; this spec has nodes c1..c3 and q1..q3"),
        ("c1->q1, x1->q2", CONT3, "unknown node 'x1'"),
        ("q1->c2", CONT3, "edge q1->c2 points into input code c2"),
        ("c1->c2", CONT3, "edge c1->c2 points into input code c2"),
        ("q2->q2", CONT3, "self-loop q2->q2"),
        ("q1->q2, q2->q3, q3->q1", CONT3, "cycle q1 -> q2 -> q3 -> q1"),
        ("q2->q1", MNIST, "categorical node q1 cannot have continuous parent q2"),
        ("c2->q1", MNIST, "categorical node q1 cannot have continuous parent c2"),
        ("c1->", CONT3, "malformed edge 'c1->'"),
        ("c1 q1", CONT3, "malformed edge 'c1 q1'"),
    ],
)
def test_each_rule_refuses_with_a_one_line_message(text: str, spec, message: str) -> None:
    with pytest.raises(GraphError) as err:
        Graph.parse(text, spec)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_json_is_refused() -> None:
    with pytest.raises(GraphError, match="malformed graph JSON"):
        Graph.from_json("{edges: [", CONT3)
    with pytest.raises(GraphError, match='"edges"'):
        Graph.from_json('{"nodes": []}', CONT3)
    with pytest.raises(GraphError, match="malformed edge 3"):
        Graph.from_json('{"edges": [3]}', CONT3)
    with pytest.raises(GraphError, match="declares codes"):
        Graph.from_json(json.dumps({"codes": ["continuous"], "edges": []}), CONT3)


def test_categorical_child_may_have_categorical_parent() -> None:
    spec = get_spec("cat3,cat4,cont")
    graph = Graph.parse("c1->q1, q1->q2, c2->q2, q2->q3", spec)
    assert graph.parents()["q2"] == ("c2", "q1")


def test_brute_force_over_three_q_nodes_accepts_exactly_the_25_labelled_dags() -> None:
    pairs = [("q1", "q2"), ("q1", "q3"), ("q2", "q3")]
    accepted, keys = 0, set()
    for choice in itertools.product((None, "fwd", "back", "both"), repeat=3):
        edges = []
        for (u, v), c in zip(pairs, choice):
            edges += {None: [], "fwd": [(u, v)], "back": [(v, u)], "both": [(u, v), (v, u)]}[c]
        try:
            graph = Graph(CONT3, tuple(edges))
        except GraphError as err:
            assert str(err).startswith("cycle "), err
            with pytest.raises(ValueError):  # pgmpy, the reference validator, agrees
                from pgmpy.base import DAG

                DAG(edges)
            continue
        accepted += 1
        keys.add(graph.key)
        assert len(to_pgmpy(graph).edges) == len(edges)
    assert accepted == len(keys) == 25


def test_canonical_key_ignores_order_and_duplicates() -> None:
    a = Graph.parse("q2->q3, c1->q1, q1->q3, q1->q3", CONT3)
    b = Graph.parse("q1->q3\nc1->q1;q2->q3", CONT3)
    assert a == b and a.key == b.key == "c1->q1, q1->q3, q2->q3"


def test_chains_parse_into_consecutive_edges() -> None:
    assert Graph.parse("c1->q1->q2->q3", CONT3).key == "c1->q1, q1->q2, q2->q3"


def test_presets() -> None:
    assert preset("independent", MNIST).key == "c1->q1, c2->q2, c3->q3"
    assert preset("collider", CONT3).key == "c1->q1, c2->q2, c3->q3, q1->q3, q2->q3"
    assert load_graph("entangled", CONT3) == preset("collider", CONT3)
    # complete: every q pair joined, categorical codes first so that no edge is continuous -> categorical
    assert preset("complete", MNIST).q_edges == (("q1", "q2"), ("q1", "q3"), ("q2", "q3"))
    assert preset("complete", get_spec("cont,cat10,cont")).q_edges == (("q2", "q1"), ("q1", "q3"), ("q2", "q3"))
    for name in PRESETS:
        preset(name, CONT3)
    with pytest.raises(GraphError, match="unknown graph preset 'nope'; presets are independent"):
        preset("nope", CONT3)
    with pytest.raises(GraphError, match="needs at least 3 codes"):
        preset("collider", get_spec("cont,cont"))


def test_load_graph_reads_files(tmp_path) -> None:
    g = preset("chain", CONT3)
    (tmp_path / "g.json").write_text(g.to_json())
    (tmp_path / "g.txt").write_text("c1->q1\nq1->q2\n")
    assert load_graph(tmp_path / "g.json", CONT3) == g
    assert load_graph(str(tmp_path / "g.txt"), CONT3).key == "c1->q1, q1->q2"
    with pytest.raises(GraphError, match="does not exist"):
        load_graph(tmp_path / "missing.json", CONT3)
    with pytest.raises(GraphError, match="unknown graph 'colider'"):
        load_graph("colider", CONT3)


def test_json_carries_its_codes() -> None:
    g = preset("collider", MNIST)
    back = Graph.from_json(g.to_json())
    assert back == g and back.spec == MNIST


def test_dot_export_lists_every_edge() -> None:
    dot = preset("collider", CONT3).to_dot()
    assert dot.startswith("digraph") and dot.count("->") == 5 and "q1 -> q3;" in dot


def test_topological_order_and_q_part() -> None:
    g = Graph.parse("c1->q1, q3->q1, q2->q3", CONT3)
    assert g.topological_q_order() == ("q2", "q3", "q1")
    assert set(g.q_edges) == {("q3", "q1"), ("q2", "q3")}


node = st.sampled_from(["c1", "c2", "c3", "q1", "q2", "q3"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(node, node), max_size=8))
def test_text_graph_json_graph_round_trips(pairs) -> None:
    text = ", ".join(f"{u}->{v}" for u, v in pairs)
    try:
        g = Graph.parse(text, MNIST)
    except GraphError:
        return
    assert Graph.from_json(g.to_json()) == g
    assert Graph.parse(g.key, MNIST) == g
