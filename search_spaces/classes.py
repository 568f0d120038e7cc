"""The ``classes`` space: one graph per Markov equivalence class of the q part.

Markov-equivalent DAGs over the q nodes (same skeleton, same v-structures) fit any table of Q's
codes equally well under a score-equivalent score such as ``struct_bic``'s BIC, so a search scored
by one needs to train only one DAG per class: over three q nodes that is 11 classes instead of 25
DAGs. The space lists every graph :func:`enumerate_dags` allows, groups them by the Markov class
of their q part (and by their input edges ``ci -> qj``, which the q class does not see), and keeps
the first graph of each group (the sparsest, then the first by canonical key) as its
representative. :meth:`ClassesSpace.cpdag` gives a representative's class as a CPDAG.

It is an approximation for training: the regularizer also sees the ``ci -> qi`` edges, and with
them two DAGs of one q class are not Markov-equivalent over all nodes (``c2 -> q2 <- q1`` is a
v-structure of q1 -> q2 but not of q2 -> q1), so they can train differently (docs/results.md
measures how much). Only a score-equivalent objective may drive this space
(:data:`SCORE_EQUIVALENT`).
"""

from __future__ import annotations

from gan import dag
from gan.latents import LatentSpec
from search_spaces.base import Constraints
from search_spaces.brute_force import enumerate_dags
from search_spaces.candidates import CandidatesSpace
from structsearch.graph import Edge, Graph

SCORE_EQUIVALENT = ("struct_bic",)
"""Objectives that give Markov-equivalent q parts the same value on one table of codes."""


def class_key(graph: Graph) -> tuple:
    """What two graphs of one group share: the q part's Markov class and the input edges."""
    inputs = frozenset(e for e in graph.edges if e[0][0] == "c")
    return dag.markov_class(graph.q_edges), inputs


class ClassesSpace(CandidatesSpace):
    """The ``candidates`` space over one representative graph per Markov class of the q part."""

    name = "classes"
    options = ("cross_edges",)

    def __init__(self, spec: LatentSpec, constraints: Constraints | None = None) -> None:
        representatives: dict[tuple, Graph] = {}
        for graph in enumerate_dags(spec, constraints):
            representatives.setdefault(class_key(graph), graph)
        super().__init__(spec, constraints, graphs=list(representatives.values()))

    def cpdag(self, graph: Graph) -> tuple[tuple[Edge, ...], tuple[Edge, ...]]:
        """The q part of ``graph``'s class: (compelled edges, undirected pairs)."""
        return dag.cpdag(graph.q_edges, graph.q_nodes)

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.keys)} Markov classes of the q part, one DAG each; "
            f"{self.constraints.describe(self.spec)}"
        )
