"""The ``brute-force`` space: every graph of a small space, enumerated up front.

:func:`enumerate_dags` lists every graph that obeys the constraints: the required edges, any
acyclic choice of q-q edges (each q pair: absent, or one of its allowed directions), and any
subset of the optional input edges (``ci -> qi`` that are not required, plus ``ci -> qj`` when
``cross_edges`` is on). With three continuous codes, ``ci -> qi`` required and no cross edges,
that is the 25 labelled DAGs on three nodes. The space is then the ``candidates`` space over
that list: one ``graph`` parameter chosen by ``suggest_categorical`` over canonical keys, so a
``GridSampler`` or enough random trials visit them all.
"""

from __future__ import annotations

import itertools
import math

from gan.dag import is_acyclic
from gan.latents import LatentSpec
from search_spaces.base import Constraints, q_parent_counts, sorted_edges
from search_spaces.candidates import CandidatesSpace
from structsearch.graph import Edge, Graph, node_order

MAX_COMBINATIONS = 200_000
"""Enumeration refuses spaces with more edge combinations than this (5 codes have 59,049)."""


def _pair_options(spec: LatentSpec, constraints: Constraints, required: tuple[Edge, ...]) -> list[list[Edge | None]]:
    """Per q pair: the single required edge, or None (absent) plus every allowed direction."""
    n = len(spec.codes)
    options = []
    for i, j in itertools.combinations(range(1, n + 1), 2):
        a, b = f"q{i}", f"q{j}"
        fixed = [e for e in ((a, b), (b, a)) if e in required]
        allowed = [(u, v) for u, v in ((a, b), (b, a)) if constraints.allows(spec, u, v)]
        options.append(fixed or [None, *allowed])
    return options


def enumerate_dags(
    spec: LatentSpec, constraints: Constraints | None = None, limit: int = MAX_COMBINATIONS
) -> list[Graph]:
    """Every graph obeying ``constraints``, sparsest first (then by canonical key).

    Raises ValueError naming the size when the space has more than ``limit`` edge combinations.
    """
    constraints = constraints or Constraints()
    required = constraints.validate(spec)
    n = len(spec.codes)
    pairs = _pair_options(spec, constraints, required)
    inputs = [
        (f"c{i}", f"q{j}")
        for i in range(1, n + 1)
        for j in range(1, n + 1)
        if (f"c{i}", f"q{j}") not in required and constraints.allows(spec, f"c{i}", f"q{j}")
    ]
    size = math.prod(len(o) for o in pairs) * 2 ** len(inputs)
    if size > limit:
        raise ValueError(
            f"enumerating the graphs over {spec.describe()} would examine {size:,} edge combinations "
            f"(limit {limit:,}); use the 'ordered' space with a sampler other than grid, or tighten the constraints"
        )
    cap = constraints.max_parents
    graphs = []
    for choice in itertools.product(*pairs):
        q_edges = [e for e in choice if e is not None]
        if not is_acyclic(q_edges + list(required)):
            continue
        if cap is not None and any(len(ps) > cap for ps in q_parent_counts(q_edges + list(required)).values()):
            continue
        for mask in itertools.product((False, True), repeat=len(inputs)):
            chosen = [e for e, keep in zip(inputs, mask) if keep]
            graphs.append(Graph(spec, tuple(required) + tuple(q_edges) + tuple(chosen)))
    return sorted(
        graphs, key=lambda g: (len(g.edges), [(node_order(u), node_order(v)) for u, v in sorted_edges(g.edges)])
    )


class BruteForceSpace(CandidatesSpace):
    """The ``candidates`` space over every graph :func:`enumerate_dags` lists."""

    name = "brute-force"
    options = ("cross_edges",)

    def __init__(self, spec: LatentSpec, constraints: Constraints | None = None) -> None:
        super().__init__(spec, constraints, graphs=enumerate_dags(spec, constraints))

    def describe(self) -> str:
        return f"{self.name}: all {len(self.keys)} graphs; {self.constraints.describe(self.spec)}"
