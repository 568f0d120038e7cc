"""The project's one graph-algorithm layer: node order, topological order, cycles (networkx-backed).

Nodes are code nodes named ``c1, c2, ...`` (inputs of G) and ``q1, q2, ...`` (what Q reads back),
as in docs/design.md section 2. Every module that needs a topological order, an acyclicity check,
a cycle to name or a Markov equivalence class uses these functions; gan/ may import this module and stays free of
structsearch, optuna, mlflow and pgmpy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

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


# ---- Markov equivalence ----------------------------------------------------------------------


def all_dags(nodes: Sequence[str]) -> list[tuple[Edge, ...]]:
    """Every labelled DAG over ``nodes`` (25 over 3, 543 over 4), sparsest first, then by sorted edges."""
    pairs = list(itertools.combinations(nodes, 2))
    dags = []
    for choice in itertools.product((0, 1, -1), repeat=len(pairs)):
        edges = tuple(sorted((u, v) if c == 1 else (v, u) for (u, v), c in zip(pairs, choice) if c))
        if is_acyclic(edges):
            dags.append(edges)
    return sorted(dags, key=lambda e: (len(e), e))


def markov_class(edges: Iterable[Edge]) -> tuple[frozenset, frozenset]:
    """(skeleton, v-structures): equal exactly for Markov-equivalent DAGs (Verma and Pearl 1990).

    The skeleton is the set of unordered adjacent pairs; a v-structure a -> v <- b with a and b not
    adjacent is ({a, b}, v).
    """
    edges = list(edges)
    skeleton = frozenset(frozenset(e) for e in edges)
    parents: dict[str, list[str]] = {}
    for u, v in edges:
        parents.setdefault(v, []).append(u)
    v_structures = frozenset(
        (frozenset((a, b)), v)
        for v, ps in parents.items()
        for a, b in itertools.combinations(sorted(ps), 2)
        if frozenset((a, b)) not in skeleton
    )
    return skeleton, v_structures


def markov_equivalent(a: Iterable[Edge], b: Iterable[Edge]) -> bool:
    return markov_class(a) == markov_class(b)


def cpdag(edges: Iterable[Edge], nodes: Sequence[str]) -> tuple[tuple[Edge, ...], tuple[Edge, ...]]:
    """The class of a DAG as a CPDAG: (directed edges, undirected pairs as sorted (u, v)).

    An edge is directed when every DAG of the class orients it the same way (a compelled edge),
    found by enumerating the class among :func:`all_dags` (fine for the few nodes of a latent spec).
    """
    key = markov_class(edges)
    members = [d for d in all_dags(nodes) if markov_class(d) == key]
    common = set(members[0]).intersection(*members[1:])
    directed = tuple(sorted(common, key=lambda e: (node_order(e[0]), node_order(e[1]))))
    undirected = {tuple(sorted(e, key=node_order)) for e in key[0]} - {tuple(sorted(e, key=node_order)) for e in common}
    return directed, tuple(sorted(undirected, key=lambda e: (node_order(e[0]), node_order(e[1]))))
