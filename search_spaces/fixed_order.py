"""The ``fixed-order`` space: a given topological order of the q nodes plus edge booleans.

Only the joins the order allows get a parameter: ``edge_qi_qj`` (i < j, whatever the direction)
for every pair whose forward direction along the order is neither forbidden nor against the
categorical rule, plus ``edge_ci_qj`` for every optional input edge. With q nodes in the given
order every proposal is acyclic. The ``max_parents`` rule is the ``ordered`` space's: required q
parents first, then the earliest parents in the order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import optuna

from gan.latents import LatentSpec
from search_spaces.base import Constraints
from search_spaces.ordered import OrientedSpace
from structsearch.graph import Edge, Graph


class FixedOrderSpace(OrientedSpace):
    """Edges only point forward along a fixed order of the q nodes (default q1, q2, ...)."""

    name = "fixed-order"
    options = ("order", "cross_edges")

    def __init__(
        self, spec: LatentSpec, constraints: Constraints | None = None, order: Sequence[str] | str | None = None
    ) -> None:
        q_nodes = tuple(f"q{i}" for i in range(1, len(spec.codes) + 1))
        if isinstance(order, str):
            order = [s for s in re.split(r"[\s,<>-]+", order) if s]  # "q1,q3,q2" or "q1 -> q3 -> q2"
        self.order = tuple(order) if order is not None else q_nodes
        if sorted(self.order) != sorted(q_nodes) or len(set(self.order)) != len(self.order):
            raise ValueError(f"order {', '.join(self.order)} must list every q node once: {', '.join(q_nodes)}")
        self._pos = {v: k for k, v in enumerate(self.order)}
        super().__init__(spec, constraints)
        for u, v in self.q_required:
            if self._pos[u] > self._pos[v]:
                raise ValueError(f"required edge {u}->{v} points backwards along order {', '.join(self.order)}")

    def _directions(self, a: str, b: str) -> list[Edge]:
        u, v = (a, b) if self._pos[a] < self._pos[b] else (b, a)
        return [(u, v)] if self.constraints.allows(self.spec, u, v) else []

    def _order(self, trial: optuna.trial.BaseTrial) -> tuple[str, ...]:
        return self.order

    def params_for(self, graph: Graph) -> dict[str, object] | None:
        if graph.spec != self.spec or self.constraints.violations(graph):
            return None
        if any(self._pos[u] > self._pos[v] for u, v in graph.q_edges):
            return None
        params = self._edge_params(graph)
        return params if self._roundtrips(params, graph) else None

    def describe(self) -> str:
        return f"fixed-order: order {' < '.join(self.order)}, {self._describe_edges()}"
