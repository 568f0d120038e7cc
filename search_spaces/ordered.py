"""The ``ordered`` space (the default): a priority per q node plus a boolean per node pair.

Per trial the space suggests ``prio_qi`` in [0, 1] for every q node and ``edge_qi_qj`` (i < j)
for every q pair that may be joined, plus ``edge_ci_qj`` for every optional input edge. The q
nodes are put in one total order and every switched-on q pair points from the earlier node to
the later one, so every proposal is acyclic (docs/design.md section 5).

The order is Kahn's topological sort of the precedence constraints, taking the ready node with
the lowest ``(priority, index)`` first. The precedence constraints are the required q-q edges and
"every categorical q node before every continuous one", which is how the categorical rule holds:
a categorical/continuous pair can only be joined categorical -> continuous. Without required q-q
edges or categorical codes the order is simply by increasing priority.

A switched-on pair whose direction is forbidden is dropped. ``max_parents`` rule: a q node keeps
its required q parents, then its other q parents in order (earliest, i.e. lowest priority,
first) until it has ``max_parents``; the later ones are dropped.
"""

from __future__ import annotations

from abc import abstractmethod

import optuna

from gan.dag import topological_order
from gan.latents import LatentSpec
from search_spaces.base import (
    BOOL_CHOICES,
    Constraints,
    SearchSpace,
    edge_param,
    prio_param,
    sorted_edges,
)
from structsearch.graph import Edge, Graph, node_order


class OrientedSpace(SearchSpace):
    """Shared by ``ordered`` and ``fixed-order``: a q order plus one boolean per joinable pair."""

    def __init__(self, spec: LatentSpec, constraints: Constraints | None = None) -> None:
        super().__init__(spec, constraints)
        n = len(spec.codes)
        self.q_nodes = tuple(f"q{i}" for i in range(1, n + 1))
        self.inputs = [  # optional c -> q edges, one boolean each
            (f"c{i}", f"q{j}")
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if (f"c{i}", f"q{j}") not in self.required and self.constraints.allows(spec, f"c{i}", f"q{j}")
        ]
        self.q_required = [e for e in self.required if e[0][0] == "q"]
        required_pairs = {frozenset(e) for e in self.q_required}
        self.pairs = [  # (a, b) with a before b by index; one boolean each
            (a, b)
            for k, a in enumerate(self.q_nodes)
            for b in self.q_nodes[k + 1 :]
            if frozenset((a, b)) not in required_pairs and self._directions(a, b)
        ]

    @abstractmethod
    def _directions(self, a: str, b: str) -> list[Edge]:
        """The directions in which the optional pair a, b may ever be joined."""

    @abstractmethod
    def _order(self, trial: optuna.trial.BaseTrial) -> tuple[str, ...]:
        """The total order of the q nodes for this trial (suggesting what it needs)."""

    def _propose(self, trial: optuna.trial.BaseTrial) -> Graph:
        order = self._order(trial)
        on = [p for p in self.pairs if trial.suggest_categorical(edge_param(*p), BOOL_CHOICES)]
        inputs = [e for e in self.inputs if trial.suggest_categorical(edge_param(*e), BOOL_CHOICES)]
        return Graph(self.spec, tuple(self.required) + tuple(inputs) + tuple(self._q_edges(order, on)))

    def _q_edges(self, order: tuple[str, ...], on: list[Edge]) -> list[Edge]:
        """Orient the switched-on pairs along ``order``, drop forbidden ones, apply ``max_parents``."""
        pos = {v: k for k, v in enumerate(order)}
        oriented = [(a, b) if pos[a] < pos[b] else (b, a) for a, b in on]
        oriented = [(u, v) for u, v in oriented if self.constraints.allows(self.spec, u, v)]
        cap = self.constraints.max_parents
        if cap is None:
            return oriented
        kept = []
        for v in self.q_nodes:
            n_required = sum(1 for e in self.q_required if e[1] == v)
            parents = sorted((u for u, w in oriented if w == v), key=pos.__getitem__)
            kept += [(u, v) for u in parents[: max(cap - n_required, 0)]]
        return kept

    def possible_edges(self) -> list[Edge]:
        pair_edges = [e for a, b in self.pairs for e in self._directions(a, b)]
        return sorted_edges(list(self.required) + self.inputs + pair_edges)

    def _edge_params(self, graph: Graph) -> dict[str, object]:
        edges = set(graph.edges)
        params: dict[str, object] = {edge_param(a, b): (a, b) in edges or (b, a) in edges for a, b in self.pairs}
        params.update({edge_param(*e): e in edges for e in self.inputs})
        return params

    def _describe_edges(self) -> str:
        return (
            f"{len(self.pairs)} q pairs, {len(self.inputs)} optional input edges; "
            f"{self.constraints.describe(self.spec)}"
        )


class OrderedSpace(OrientedSpace):
    """Priorities order the q nodes; a boolean per pair says whether it is joined."""

    name = "ordered"
    options = ("cross_edges",)

    def _directions(self, a: str, b: str) -> list[Edge]:
        return [(u, v) for u, v in ((a, b), (b, a)) if self.constraints.allows(self.spec, u, v)]

    def _precedence(self) -> list[Edge]:
        """Pairs (u, v) where u must come before v: required q-q edges, categorical before continuous."""
        cat = [q for q in self.q_nodes if self.spec.code(q).kind == "categorical"]
        cont = [q for q in self.q_nodes if q not in cat]
        return self.q_required + [(u, v) for u in cat for v in cont]

    def _order(self, trial: optuna.trial.BaseTrial) -> tuple[str, ...]:
        prio = {q: float(trial.suggest_float(prio_param(q), 0.0, 1.0)) for q in self.q_nodes}
        return tuple(topological_order(self.q_nodes, self._precedence(), key=lambda v: (prio[v], node_order(v))))

    def params_for(self, graph: Graph) -> dict[str, object] | None:
        if graph.spec != self.spec or self.constraints.violations(graph):
            return None
        try:
            order = topological_order(self.q_nodes, list(graph.q_edges) + self._precedence())
        except ValueError:  # the graph contradicts the precedence rules: this space cannot express it
            return None
        n = len(order)
        params: dict[str, object] = {prio_param(q): (order.index(q) + 0.5) / n for q in self.q_nodes}
        params.update(self._edge_params(graph))
        return params if self._roundtrips(params, graph) else None

    def describe(self) -> str:
        return f"ordered: priority per q node, {self._describe_edges()}"
