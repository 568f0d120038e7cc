"""Search spaces (docs/design.md section 5): one contract suite over every space, plus known answers.

The checks here are written independently of the spaces' own constraint code: a proposal is
valid when the Graph builds, networkx and pgmpy agree it is acyclic, and the required,
forbidden, max_parents, cross-edge and categorical rules hold edge by edge.
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
from pathlib import Path

import networkx as nx
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gan.latents import LatentSpec, get_spec
from search_spaces import SPACES, Constraints, SearchSpace, enumerate_dags, make_space
from structsearch.graph import Graph, preset
from structsearch.scoring import to_pgmpy

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPEC_NAMES = {"shapes": "cont,cont,cont", "mnist": "mnist"}  # mnist: c1 categorical(10)
SPACE_IDS = ["ordered", "ordered-cross", "fixed-order", "candidates", "brute-force", "classes"]
TIGHT = Constraints(forbidden=(("q1", "q3"), ("q3", "q2")), max_parents=1)
CANDIDATE_LINES = [
    "independent",
    "c1->q1, c2->q2, c3->q3, q1->q3",
    "c1->q1, c2->q2, c3->q3, q1->q2, q2->q3",
    "c1->q1, c2->q2, c3->q3, q1->q2",
    "c1->q1, c2->q2, c3->q3, q1->q3, q2->q3",
    "c1->q1, c2->q2, c3->q3, q2->q3, c1->q3",
]
ALL_NAMES = re.compile(r"prio_q\d+|edge_q\d+_q\d+|edge_c\d+_q\d+|graph")


def _spec(name: str) -> LatentSpec:
    return get_spec(SPEC_NAMES[name])


def _required(spec: LatentSpec, constraints: Constraints) -> set[tuple[str, str]]:
    if constraints.required is None:
        return {(f"c{i}", f"q{i}") for i in range(1, len(spec.codes) + 1)}
    return set(constraints.required)


def assert_valid(graph: Graph, spec: LatentSpec, constraints: Constraints) -> None:
    """The rules, checked edge by edge without the spaces' own helpers."""
    edges = set(graph.edges)
    Graph(spec, graph.edges)  # the Foundation's validator
    assert nx.is_directed_acyclic_graph(graph.to_networkx()), graph.key
    to_pgmpy(graph)  # pgmpy refuses cycles
    assert _required(spec, constraints) <= edges, graph.key
    assert not edges & set(constraints.forbidden), graph.key
    for u, v in edges:
        assert not (spec.code(v).kind == "categorical" and spec.code(u).kind == "continuous"), (u, v)
        if u[0] == "c" and u[1:] != v[1:] and not constraints.cross_edges:
            assert (u, v) in _required(spec, constraints), (u, v)
    if constraints.max_parents is not None:
        for v in graph.q_nodes:
            assert sum(1 for u, w in edges if w == v and u[0] == "q") <= constraints.max_parents, graph.key


def _candidates_file(tmp_path: Path, spec: LatentSpec, constraints: Constraints) -> Path:
    """A tiny candidates file holding the listed graphs that obey the rules."""
    lines = []
    for text in CANDIDATE_LINES:
        graph = preset(text, spec) if text == "independent" else Graph.parse(text, spec)
        try:
            assert_valid(graph, spec, constraints)
        except AssertionError:
            continue
        lines.append(text)
    path = tmp_path / "candidates.txt"
    path.write_text("# ablation graphs\n" + "\n".join(lines) + "\n")
    return path


def build(space_id: str, spec: LatentSpec, constraints: Constraints, tmp_path: Path) -> SearchSpace:
    if space_id == "ordered":
        return make_space("ordered", spec, constraints)
    if space_id == "ordered-cross":
        return make_space("ordered", spec, constraints, cross_edges=True)
    if space_id == "fixed-order":
        return make_space("fixed-order", spec, constraints, order=("q1", "q3", "q2"))
    if space_id == "candidates":
        return make_space("candidates", spec, constraints, path=_candidates_file(tmp_path, spec, constraints))
    return make_space(space_id, spec, constraints)


def run_random(space: SearchSpace, n_trials: int = 50, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n_trials):
        trial = study.ask()
        graph = space.suggest(trial)
        trial.set_user_attr("key", graph.key)
        study.tell(trial, 0.0)
    return study.trials


# ---- the contract suite ----------------------------------------------------------------------


@pytest.mark.parametrize("tight", [False, True], ids=["default", "tight"])
@pytest.mark.parametrize("spec_name", list(SPEC_NAMES))
@pytest.mark.parametrize("space_id", SPACE_IDS)
def test_every_proposal_obeys_the_rules(space_id: str, spec_name: str, tight: bool, tmp_path: Path) -> None:
    spec = _spec(spec_name)
    constraints = TIGHT if tight else Constraints()
    space = build(space_id, spec, constraints, tmp_path)
    constraints = space.constraints  # cross_edges may have been switched on
    possible = set(space.possible_edges())
    trials = run_random(space)
    for t in trials:
        graph = Graph.parse(t.user_attrs["key"], spec) if t.user_attrs["key"] else Graph(spec, ())
        assert_valid(graph, spec, constraints)
        assert set(graph.edges) <= possible
        again = space.suggest(optuna.trial.FixedTrial(t.params))  # the same params, the same graph
        assert again == graph
        assert space.suggest(optuna.trial.FixedTrial(space.params_for(graph))) == graph
    # the same names with the same distributions on every trial, so TPE/GP/NSGA-II can learn
    assert all(t.distributions == trials[0].distributions for t in trials)
    assert all(ALL_NAMES.fullmatch(name) for name in trials[0].params)
    assert len({t.user_attrs["key"] for t in trials}) > 1, "the space never varies"
    assert "\n" not in space.describe()
    listed = space.all_graphs()  # the whole space: what a budget counts and a grid enumerates
    assert {t.user_attrs["key"] for t in trials} <= {g.key for g in listed}
    assert all(space.suggest(optuna.trial.FixedTrial(space.params_for(g))) == g for g in listed)


@pytest.mark.parametrize("spec_name", list(SPEC_NAMES))
@pytest.mark.parametrize("space_id", SPACE_IDS)
def test_same_seed_same_graphs(space_id: str, spec_name: str, tmp_path: Path) -> None:
    space = build(space_id, _spec(spec_name), Constraints(), tmp_path)
    first = [t.user_attrs["key"] for t in run_random(space, 20, seed=3)]
    assert first == [t.user_attrs["key"] for t in run_random(space, 20, seed=3)]
    assert first != [t.user_attrs["key"] for t in run_random(space, 20, seed=4)]


EXPECTED_NAMES = {
    ("ordered", "shapes"): "prio_q1 prio_q2 prio_q3 edge_q1_q2 edge_q1_q3 edge_q2_q3",
    ("ordered-cross", "shapes"): "prio_q1 prio_q2 prio_q3 edge_q1_q2 edge_q1_q3 edge_q2_q3 "
    "edge_c1_q2 edge_c1_q3 edge_c2_q1 edge_c2_q3 edge_c3_q1 edge_c3_q2",
    # mnist: a continuous c cannot point into categorical q1
    ("ordered-cross", "mnist"): "prio_q1 prio_q2 prio_q3 edge_q1_q2 edge_q1_q3 edge_q2_q3 "
    "edge_c1_q2 edge_c1_q3 edge_c2_q3 edge_c3_q2",
    ("fixed-order", "shapes"): "edge_q1_q2 edge_q1_q3 edge_q2_q3",
    # mnist, order q1 < q3 < q2: every pair still joinable forwards
    ("fixed-order", "mnist"): "edge_q1_q2 edge_q1_q3 edge_q2_q3",
    ("candidates", "shapes"): "graph",
    ("brute-force", "mnist"): "graph",
}


@pytest.mark.parametrize(("space_id", "spec_name"), list(EXPECTED_NAMES))
def test_param_names_are_the_stable_ones(space_id: str, spec_name: str, tmp_path: Path) -> None:
    space = build(space_id, _spec(spec_name), Constraints(), tmp_path)
    for t in run_random(space, 10):
        assert set(t.params) == set(EXPECTED_NAMES[space_id, spec_name].split())


def test_fixed_order_never_asks_for_a_backwards_categorical_pair() -> None:
    space = make_space("fixed-order", _spec("mnist"), order="q2, q1, q3")  # q2 -> q1 would break the rule
    assert set(run_random(space, 5)[0].params) == {"edge_q1_q3", "edge_q2_q3"}


# ---- the ordered space on arbitrary params ---------------------------------------------------

ORDERED_CASES = [
    (spec_name, cross, tight) for spec_name in SPEC_NAMES for cross in (False, True) for tight in (False, True)
]


@pytest.mark.parametrize(("spec_name", "cross", "tight"), ORDERED_CASES)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_ordered_is_valid_for_any_params(spec_name: str, cross: bool, tight: bool, data: st.DataObject) -> None:
    spec = _spec(spec_name)
    space = make_space("ordered", spec, TIGHT if tight else Constraints(), cross_edges=cross)
    names = sorted(space.params_for(preset("independent", spec)))
    params = {
        name: data.draw(st.floats(allow_nan=False) if name.startswith("prio_") else st.booleans(), label=name)
        for name in names
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FixedTrial warns about priorities outside [0, 1]
        graph = space.suggest(optuna.trial.FixedTrial(params))
    assert_valid(graph, spec, space.constraints)


# ---- brute force: the 25 labelled DAGs on three nodes ----------------------------------------


def _all_q_dags(spec: LatentSpec) -> set[str]:
    """Every subset of the six directed q-q edges that is acyclic and obeys the categorical rule."""
    q_edges = [(u, v) for u, v in itertools.permutations(("q1", "q2", "q3"), 2)]
    keys = set()
    for mask in itertools.product((False, True), repeat=len(q_edges)):
        chosen = [e for e, keep in zip(q_edges, mask) if keep]
        if not nx.is_directed_acyclic_graph(nx.DiGraph(chosen)):
            continue
        if any(spec.code(v).kind == "categorical" and spec.code(u).kind == "continuous" for u, v in chosen):
            continue
        keys.add(preset("independent", spec).with_edges(add=chosen).key)
    return keys


def test_enumerate_dags_finds_the_25_dags_on_three_nodes() -> None:
    graphs = enumerate_dags(_spec("shapes"), Constraints())
    assert len(graphs) == 25
    assert {g.key for g in graphs} == _all_q_dags(_spec("shapes"))
    # mnist: q1 categorical, so q2 and q3 can only be its children: 2 * 2 * 3 graphs
    assert {g.key for g in enumerate_dags(_spec("mnist"))} == _all_q_dags(_spec("mnist"))
    assert len(enumerate_dags(_spec("mnist"))) == 12


def test_brute_force_visits_all_25_with_a_grid_sampler() -> None:
    space = make_space("brute-force", _spec("shapes"))
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"graph": list(space.keys)}, seed=0))
    seen: set[str] = set()

    def objective(trial: optuna.trial.Trial) -> float:
        seen.add(space.suggest(trial).key)
        return 0.0

    study.optimize(objective, n_trials=100)  # the grid sampler stops the study after 25
    assert len(study.trials) == 25
    assert seen == _all_q_dags(_spec("shapes"))
    assert {space.suggest(optuna.trial.FixedTrial({"graph": key})).key for key in space.keys} == seen


# ---- params_for round-trips --------------------------------------------------------------------


@pytest.mark.parametrize("spec_name", list(SPEC_NAMES))
@pytest.mark.parametrize("space_name", ["ordered", "brute-force"])
def test_params_for_round_trips_every_dag(space_name: str, spec_name: str) -> None:
    spec = _spec(spec_name)
    space = make_space(space_name, spec)
    for graph in enumerate_dags(spec):
        params = space.params_for(graph)
        assert params is not None, graph.key
        assert space.suggest(optuna.trial.FixedTrial(params)) == graph


@pytest.mark.parametrize("order", [("q1", "q2", "q3"), ("q3", "q1", "q2")])
def test_fixed_order_round_trips_exactly_the_graphs_along_its_order(order: tuple[str, ...]) -> None:
    spec = _spec("shapes")
    space = make_space("fixed-order", spec, order=order)
    expressible = 0
    for graph in enumerate_dags(spec):
        params = space.params_for(graph)
        forwards = all(order.index(u) < order.index(v) for u, v in graph.q_edges)
        assert (params is not None) == forwards, graph.key
        if params is not None:
            expressible += 1
            assert space.suggest(optuna.trial.FixedTrial(params)) == graph
    assert expressible == 8  # each of the 3 forward pairs on or off


def test_params_for_refuses_what_the_space_cannot_express(tmp_path: Path) -> None:
    spec = _spec("shapes")
    collider = preset("collider", spec)
    assert make_space("ordered", spec, Constraints(forbidden=(("q1", "q3"),))).params_for(collider) is None
    assert make_space("ordered", spec, Constraints(max_parents=1)).params_for(collider) is None
    assert make_space("ordered", spec).params_for(preset("entangled-inputs", spec)) is None  # cross edges off
    assert make_space("ordered", spec).params_for(preset("empty", spec)) is None  # lacks ci -> qi
    candidates = build("candidates", spec, Constraints(), tmp_path)
    assert candidates.params_for(preset("chain", spec)) is not None
    assert candidates.params_for(preset("fork", spec)) is None


def test_enqueued_seed_graph_is_the_first_trial() -> None:
    spec = _spec("mnist")
    space = make_space("ordered", spec, cross_edges=True)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seed_graph = preset("collider", spec).with_edges(add=[("c1", "q2")])
    study.enqueue_trial(space.params_for(seed_graph))
    assert space.suggest(study.ask()) == seed_graph


# ---- constraints -------------------------------------------------------------------------------


@pytest.mark.parametrize("space_id", SPACE_IDS)
def test_forbidden_edge_never_appears(space_id: str, tmp_path: Path) -> None:
    spec = _spec("shapes")
    free = {e for t in run_random(build(space_id, spec, Constraints(), tmp_path), 60) for e in _edges(t, spec)}
    assert ("q1", "q3") in free  # so the check below can fail
    forbid = Constraints(forbidden=(("q1", "q3"),))
    space = build(space_id, spec, forbid, tmp_path)
    edges = {e for t in run_random(space, 60) for e in _edges(t, spec)}
    assert ("q1", "q3") not in edges
    assert ("q1", "q3") not in space.possible_edges()


@pytest.mark.parametrize("space_id", SPACE_IDS)
def test_max_parents_caps_q_parents(space_id: str, tmp_path: Path) -> None:
    spec = _spec("shapes")

    def most_q_parents(space: SearchSpace) -> int:
        graphs = [Graph(spec, tuple(_edges(t, spec))) for t in run_random(space, 60)]
        return max(sum(1 for _, w in g.q_edges if w == v) for g in graphs for v in g.q_nodes)

    assert most_q_parents(build(space_id, spec, Constraints(), tmp_path)) == 2
    capped = build(space_id, spec, Constraints(max_parents=1), tmp_path)
    assert most_q_parents(capped) == 1


def _edges(trial: optuna.trial.FrozenTrial, spec: LatentSpec) -> list[tuple[str, str]]:
    key = trial.user_attrs["key"]
    return list(Graph.parse(key, spec).edges) if key else []


def test_max_parents_keeps_the_earliest_parents() -> None:
    space = make_space("ordered", _spec("shapes"), Constraints(max_parents=1))
    params = {"prio_q1": 0.2, "prio_q2": 0.1, "prio_q3": 0.9, "edge_q1_q2": False, "edge_q1_q3": True}
    graph = space.suggest(optuna.trial.FixedTrial({**params, "edge_q2_q3": True}))
    assert graph.q_edges == (("q2", "q3"),)  # q2 (priority 0.1) comes before q1 (0.2)


def test_categorical_q_nodes_come_first_in_ordered() -> None:
    space = make_space("ordered", _spec("mnist"))  # q1 categorical, q2 and q3 continuous
    params = {"prio_q1": 0.9, "prio_q2": 0.1, "prio_q3": 0.5, "edge_q1_q2": True, "edge_q1_q3": True}
    graph = space.suggest(optuna.trial.FixedTrial({**params, "edge_q2_q3": True}))
    # priorities alone would give q2 -> q1, which the categorical rule forbids: q1 goes first
    assert graph.q_edges == (("q1", "q2"), ("q1", "q3"), ("q2", "q3"))


def test_required_q_edges_are_kept_and_orient_the_rest() -> None:
    spec = _spec("shapes")
    constraints = Constraints(required=(("c1", "q1"), ("c2", "q2"), ("c3", "q3"), ("q3", "q1")))
    space = make_space("ordered", spec, constraints)
    assert "edge_q1_q3" not in space.params_for(preset("independent", spec).with_edges(add=[("q3", "q1")]))
    for t in run_random(space, 40):
        assert ("q3", "q1") in _edges(t, spec)
        assert_valid(Graph(spec, tuple(_edges(t, spec))), spec, constraints)


INVALID = [
    (dict(required=(("c1", "q1"),), forbidden=(("c1", "q1"),)), "both required and forbidden"),
    (dict(forbidden=(("c2", "q2"),)), "both required .* and forbidden: c2->q2"),
    (dict(required=(("q2", "q3"), ("q3", "q2"))), "invalid required edges: cycle q2 -> q3 -> q2"),
    (dict(required=(("c1", "q9"),)), "invalid required edges: unknown node 'q9'"),
    (dict(required=(("q2", "q1"),)), "categorical node q1 cannot have continuous parent q2"),
    (dict(forbidden=(("q4", "q1"),)), "forbidden edge q4->q1 names a node not in this spec"),
    (dict(max_parents=-1), "max_parents must be a non-negative integer"),
    (dict(required=(("q1", "q3"), ("q2", "q3")), max_parents=1), "q3 2 q parents .*max_parents=1"),
    (dict(required=("c1q1",)), "malformed required edge 'c1q1'"),
]


@pytest.mark.parametrize(("kwargs", "message"), INVALID)
def test_invalid_constraints_raise_a_clear_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        make_space("ordered", _spec("mnist"), Constraints(**kwargs))
    assert "\n" not in str(err.value)


def test_the_classes_space_has_one_dag_per_markov_class() -> None:
    from gan import dag

    space = make_space("classes", _spec("shapes"))
    classes = [dag.markov_class(g.q_edges) for g in space.all_graphs()]
    assert len(classes) == len(set(classes)) == 11  # the Markov classes of 3-node DAGs
    everything = {dag.markov_class(g.q_edges) for g in make_space("brute-force", _spec("shapes")).all_graphs()}
    assert set(classes) == everything  # every class has its representative
    collider = next(g for g in space.all_graphs() if g.q_edges == (("q1", "q3"), ("q2", "q3")))
    assert space.cpdag(collider) == ((("q1", "q3"), ("q2", "q3")), ())
    chain = next(g for g in space.all_graphs() if dag.markov_equivalent(g.q_edges, (("q1", "q2"), ("q2", "q3"))))
    assert space.cpdag(chain) == ((), (("q1", "q2"), ("q2", "q3")))


def test_make_space_refuses_unknown_names_and_options(tmp_path: Path) -> None:
    spec = _spec("shapes")
    assert set(SPACES) == {"ordered", "fixed-order", "candidates", "brute-force", "classes"}
    with pytest.raises(ValueError, match="unknown search space 'greedy'; accepted: ordered, fixed-order"):
        make_space("greedy", spec)
    with pytest.raises(ValueError, match="takes no option 'path'"):
        make_space("ordered", spec, path="x.txt")
    with pytest.raises(ValueError, match="must list every q node once"):
        make_space("fixed-order", spec, order=("q1", "q2"))
    with pytest.raises(ValueError, match="required edge q3->q1 points backwards"):
        make_space("fixed-order", spec, Constraints(required=(("q3", "q1"),)), order=("q1", "q2", "q3"))
    with pytest.raises(ValueError, match="would examine"):
        make_space("brute-force", get_spec("cont,cont,cont,cont,cont,cont"))
    with pytest.raises(ValueError, match="does not exist"):
        make_space("candidates", spec, path=tmp_path / "missing.txt")


def test_candidates_file_formats_and_errors(tmp_path: Path) -> None:
    spec = _spec("shapes")
    path = tmp_path / "graphs.json"
    path.write_text(
        json.dumps(
            [
                {"edges": ["c1->q1", "c2->q2", "c3->q3"]},
                ["c1->q1", "c2->q2", "c3->q3", "q1->q2"],
                [["c1", "q1"], ["c2", "q2"], ["c3", "q3"], ["q2", "q3"]],
                "c1->q1, c2->q2, c3->q3, q1->q2",  # a duplicate: dropped
            ]
        )
    )
    space = make_space("candidates", spec, path=path)
    assert space.keys == (
        "c1->q1, c2->q2, c3->q3",
        "c1->q1, c2->q2, c3->q3, q1->q2",
        "c1->q1, c2->q2, c3->q3, q2->q3",
    )
    bad = tmp_path / "bad.txt"
    bad.write_text("independent\nq1->q2, q2->q1\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: cycle"):
        make_space("candidates", spec, path=bad)
    lacking = tmp_path / "lacking.txt"
    lacking.write_text("c1->q1, q1->q2\n")
    with pytest.raises(ValueError, match="candidate 0 .* lacks required edge c2->q2"):
        make_space("candidates", spec, path=lacking)
