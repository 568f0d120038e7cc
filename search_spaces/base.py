"""What every search space shares: the constraints on graphs and the ``SearchSpace`` contract.

A search space turns one Optuna trial into one graph that is valid by construction (docs/design.md
section 5). Constraints are applied inside the space, never by rejecting proposals:

* required edges (``ci -> qi`` for every code unless given) are in every proposal;
* forbidden edges are in none;
* ``max_parents`` caps the number of q parents of every q node;
* ``cross_edges`` allows ``ci -> qj`` for ``i != j``;
* the categorical rule (a categorical q node has no continuous parent) always holds.

Every proposal is checked once more: building the :class:`Graph` validates it (acyclicity
included, once), and the space re-checks the constraints (a violation is a bug in the space,
hence ``RuntimeError``). The tests hold every space's proposals against pgmpy's ``DAG``, the
reference validator.

Parameter names are stable so that studies resume and samplers learn: ``prio_q2`` (priority of a
q node), ``edge_q1_q3`` (an unordered q pair, smaller index first), ``edge_c1_q3`` (an input
edge), ``graph`` (the canonical key of a listed graph). Every trial of a space suggests the same
names with the same distributions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass

import optuna

from gan.latents import LatentSpec
from structsearch.graph import Edge, Graph, GraphError, node_order

GRAPH_PARAM = "graph"
BOOL_CHOICES = (False, True)


def prio_param(q: str) -> str:
    """Name of the priority parameter of q node ``q`` (``prio_q2``)."""
    return f"prio_{q}"


def edge_param(u: str, v: str) -> str:
    """Name of the boolean parameter of a node pair (``edge_q1_q3``, ``edge_c1_q3``)."""
    if u[0] == v[0] == "q" and node_order(v) < node_order(u):
        u, v = v, u  # a q pair is unordered: smaller index first
    return f"edge_{u}_{v}"


def sorted_edges(edges: Iterable[Edge]) -> list[Edge]:
    return sorted(set(edges), key=lambda e: (node_order(e[0]), node_order(e[1])))


def format_edges(edges: Iterable[Edge]) -> str:
    return ", ".join(f"{u}->{v}" for u, v in sorted_edges(edges)) or "none"


def cat_blocked(spec: LatentSpec, u: str, v: str) -> bool:
    """True when ``u -> v`` would give a categorical node a continuous parent."""
    return spec.code(v).kind == "categorical" and spec.code(u).kind == "continuous"


def q_parent_counts(edges: Iterable[Edge]) -> dict[str, list[str]]:
    counts: dict[str, list[str]] = {}
    for u, v in edges:
        if u[0] == "q":
            counts.setdefault(v, []).append(u)
    return counts


def _as_edges(items: Iterable[object], field: str) -> tuple[Edge, ...]:
    """Normalize ``[("c1", "q1")]``, ``[["c1", "q1"]]`` or ``["c1->q1"]`` to a tuple of pairs."""
    if isinstance(items, str):
        items = [s for s in items.replace(";", ",").split(",") if s.strip()]
    edges = []
    for item in items:
        if isinstance(item, str) and "->" in item:
            pair = tuple(s.strip() for s in item.split("->"))
        elif isinstance(item, (list, tuple)) and all(isinstance(n, str) for n in item):
            pair = tuple(item)
        else:
            pair = ()
        if len(pair) != 2 or not all(pair):
            raise ValueError(f"malformed {field} edge {item!r}; expected ('u', 'v') or 'u->v', e.g. 'c1->q1'")
        edges.append(pair)
    return tuple(edges)


@dataclass(frozen=True)
class Constraints:
    """Rules every graph a space proposes obeys (applied inside the space, not by rejection)."""

    required: tuple[Edge, ...] | None = None
    """Edges in every graph; None means ``ci -> qi`` for every code."""
    forbidden: tuple[Edge, ...] = ()
    """Edges in no graph."""
    max_parents: int | None = None
    """Maximum number of q parents of a q node (c parents do not count); None for no cap."""
    cross_edges: bool = False
    """Allow input edges ``ci -> qj`` with ``i != j``."""

    def __post_init__(self) -> None:
        if self.required is not None:
            object.__setattr__(self, "required", _as_edges(self.required, "required"))
        object.__setattr__(self, "forbidden", _as_edges(self.forbidden, "forbidden"))
        if self.max_parents is not None and (
            isinstance(self.max_parents, bool) or not isinstance(self.max_parents, int) or self.max_parents < 0
        ):
            raise ValueError(f"max_parents must be a non-negative integer or None, got {self.max_parents!r}")
        clash = set(self.required or ()) & set(self.forbidden)
        if clash:
            raise ValueError(f"edges both required and forbidden: {format_edges(clash)}")

    def required_edges(self, spec: LatentSpec) -> tuple[Edge, ...]:
        """The required edges for this spec (the default is ``ci -> qi`` for every code)."""
        if self.required is None:
            return tuple((f"c{i}", f"q{i}") for i in range(1, len(spec.codes) + 1))
        return tuple(sorted_edges(self.required))

    def validate(self, spec: LatentSpec) -> tuple[Edge, ...]:
        """Check the constraints against a spec; returns the required edges.

        Raises ValueError (one line) when a forbidden edge names an unknown node, a required edge is
        also forbidden, the required edges do not form a valid graph, or they alone exceed
        ``max_parents``.
        """
        required = self.required_edges(spec)
        nodes = set(Graph(spec, ()).nodes)
        for u, v in self.forbidden:
            if u not in nodes or v not in nodes:
                raise ValueError(
                    f"forbidden edge {u}->{v} names a node not in this spec; nodes are c1..c{len(spec.codes)}, q1..q{len(spec.codes)}"
                )
        clash = set(required) & set(self.forbidden)
        if clash:
            raise ValueError(
                f"edges both required (by default every ci->qi) and forbidden: {format_edges(clash)}; "
                f"give required= explicitly without them"
            )
        try:
            Graph(spec, required)
        except GraphError as err:
            raise ValueError(f"invalid required edges: {err}") from None
        if self.max_parents is not None:
            for v, ps in q_parent_counts(required).items():
                if len(ps) > self.max_parents:
                    raise ValueError(
                        f"required edges give {v} {len(ps)} q parents ({', '.join(sorted(ps, key=node_order))}), "
                        f"more than max_parents={self.max_parents}"
                    )
        return required

    def allows(self, spec: LatentSpec, u: str, v: str) -> bool:
        """Whether an optional edge ``u -> v`` may ever appear (required edges aside)."""
        if (u, v) in self.forbidden or cat_blocked(spec, u, v):
            return False
        return not (u[0] == "c" and u[1:] != v[1:] and not self.cross_edges)

    def violations(self, graph: Graph) -> list[str]:
        """Every way ``graph`` breaks these constraints, as readable phrases (empty when none)."""
        required = set(self.required_edges(graph.spec))
        problems = [f"lacks required edge {u}->{v}" for u, v in sorted_edges(required - set(graph.edges))]
        problems += [f"has forbidden edge {u}->{v}" for u, v in sorted_edges(set(graph.edges) & set(self.forbidden))]
        if not self.cross_edges:
            cross = {(u, v) for u, v in graph.edges if u[0] == "c" and u[1:] != v[1:]} - required
            problems += [f"has cross edge {u}->{v} but cross_edges is off" for u, v in sorted_edges(cross)]
        if self.max_parents is not None:
            for v, ps in sorted(q_parent_counts(graph.edges).items(), key=lambda kv: node_order(kv[0])):
                if len(ps) > self.max_parents:
                    problems.append(f"gives {v} {len(ps)} q parents, more than max_parents={self.max_parents}")
        return problems

    def describe(self, spec: LatentSpec) -> str:
        cap = "none" if self.max_parents is None else str(self.max_parents)
        return (
            f"required {format_edges(self.required_edges(spec))}; forbidden {format_edges(self.forbidden)}; "
            f"max_parents {cap}; cross_edges {'on' if self.cross_edges else 'off'}"
        )


class SearchSpace(ABC):
    """Turns an Optuna trial into a valid :class:`Graph` (see the module docstring)."""

    name: str = ""
    options: tuple[str, ...] = ()  # the keyword options ``make_space`` may pass on

    def __init__(self, spec: LatentSpec, constraints: Constraints | None = None) -> None:
        self.spec = spec
        self.constraints = constraints or Constraints()
        self.required = self.constraints.validate(spec)

    @abstractmethod
    def _propose(self, trial: optuna.trial.BaseTrial) -> Graph:
        """Suggest this space's parameters and build the graph they encode."""

    def suggest(self, trial: optuna.trial.BaseTrial) -> Graph:
        """Suggest this space's parameters on ``trial``; returns the valid graph they encode."""
        graph = self._propose(trial)
        problems = self.constraints.violations(graph)
        if problems:  # the space is built to make this impossible
            raise RuntimeError(f"search space {self.name!r} proposed {graph.key!r}, which {'; '.join(problems)}")
        return graph

    @abstractmethod
    def describe(self) -> str:
        """One line for logs and MLflow params."""

    @abstractmethod
    def possible_edges(self) -> list[Edge]:
        """Every edge the space can ever propose, required ones included, sorted."""

    @abstractmethod
    def params_for(self, graph: Graph) -> dict[str, object] | None:
        """Trial params that make ``suggest`` return ``graph`` (for ``study.enqueue_trial``), or None."""

    def all_graphs(self, limit: int | None = None) -> list[Graph]:
        """Every graph this space can propose, sparsest first (ValueError naming the size and the
        limit when the space has more edge combinations than ``limit``, default ``MAX_COMBINATIONS``)."""
        from search_spaces.brute_force import MAX_COMBINATIONS, enumerate_dags

        graphs = enumerate_dags(self.spec, self.constraints, limit or MAX_COMBINATIONS)
        return [g for g in graphs if self.params_for(g) is not None]

    def _roundtrips(self, params: dict[str, object], graph: Graph) -> bool:
        """Whether ``params`` really encode ``graph`` (guards ``params_for`` against edge cases)."""
        return self._propose(optuna.trial.FixedTrial(params)) == graph
