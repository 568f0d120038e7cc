"""The project's one graph-algorithm layer: node order, topological order, cycles (networkx-backed).

Nodes are code nodes named ``c1, c2, ...`` (inputs of G) and ``q1, q2, ...`` (what Q reads back),
as in docs/design.md section 2. Every module that needs a topological order, an acyclicity check
or a cycle to name uses these functions; gan/ may import this module and stays free of
structsearch, optuna, mlflow and pgmpy.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping

import networkx as nx

Edge = tuple[str, str]


def node_order(node: str) -> tuple[int, int]:
    """Sort key: c nodes before q nodes, then by index (q2 before q10)."""
    return (0 if node[0] == "c" else 1, int(node[1:]))


def topological_order(
    nodes: Iterable[str], edges: Iterable[Edge], key: Callable[[str], Hashable] = node_order
) -> list[str]:
    """Parents before children; among the nodes that are ready, the smallest ``key`` first.

    Edges between nodes outside ``nodes`` are ignored. Raises ValueError naming a cycle.
    """
    nodes = list(nodes)
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from((u, v) for u, v in edges if u in g and v in g)
    cycle = find_cycle(g.edges)
    if cycle:
        raise ValueError(f"cycle {' -> '.join(cycle)}")
    return list(nx.lexicographical_topological_sort(g, key=key))


def parents_order(parents: Mapping[str, Iterable[str]], key: Callable[[str], Hashable] = node_order) -> list[str]:
    """:func:`topological_order` of the nodes of a ``{node: parents}`` mapping (other parents ignored)."""
    return topological_order(parents, [(u, v) for v, ps in parents.items() for u in ps], key)


def find_cycle(edges: Iterable[Edge]) -> list[str] | None:
    """A cycle as a closed path named from its smallest node (``["q1", "q2", "q1"]``), or None."""
    try:
        cycle = nx.find_cycle(nx.DiGraph(list(edges)))
    except nx.NetworkXNoCycle:
        return None
    path = [u for u, _ in cycle]
    start = path.index(min(path, key=node_order))
    return path[start:] + path[:start] + [path[start]]


def is_acyclic(edges: Iterable[Edge]) -> bool:
    return find_cycle(edges) is None
