"""The graph value type: a DAG over the input codes ``ci`` and the extracted codes ``qi``.

Per docs/design.md section 2 a latent spec with codes c1..cK gives 2K nodes: ``ci``, the code fed
to G, and ``qi``, the code Q reads back from the generated image. Edges ``ci -> qj`` say which
inputs control which extracted feature; edges ``qi -> qj`` say which extracted features cause
which. A graph is validated once, when it is built; afterwards it is an immutable value whose
canonical ``key`` (sorted edge list) identifies the experiment.

Rules (each refused with a one-line :class:`GraphError` naming the offending edge or cycle):
nodes exist in the spec; ``c`` nodes are roots; no self-loops; acyclic; a categorical ``q``
node has no continuous parent (conditional linear Gaussian networks).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import networkx as nx

from gan.dag import Edge, find_cycle, node_order, topological_order
from gan.latents import LatentSpec, get_spec

_NODE = re.compile(r"([cq])([1-9]\d*)")


class GraphError(ValueError):
    """A graph the rules refuse; the message is one line naming what is wrong."""


@dataclass(frozen=True)
class Graph:
    """An immutable, validated DAG over the c and q nodes of a latent spec."""

    spec: LatentSpec
    edges: tuple[Edge, ...]

    def __post_init__(self) -> None:
        edges = tuple(sorted(set(self.edges), key=lambda e: (node_order(e[1]), node_order(e[0]))))
        object.__setattr__(self, "edges", edges)
        _validate(self.spec, edges)

    # ---- views -----------------------------------------------------------------------------

    @property
    def c_nodes(self) -> tuple[str, ...]:
        return tuple(f"c{i + 1}" for i in range(len(self.spec.codes)))

    @property
    def q_nodes(self) -> tuple[str, ...]:
        return tuple(f"q{i + 1}" for i in range(len(self.spec.codes)))

    @property
    def nodes(self) -> tuple[str, ...]:
        return self.c_nodes + self.q_nodes

    @cached_property
    def key(self) -> str:
        """Canonical text form: the sorted edge list, e.g. ``c1->q1, c2->q2, q1->q2``."""
        return ", ".join(f"{u}->{v}" for u, v in sorted(self.edges, key=lambda e: (node_order(e[0]), node_order(e[1]))))

    def parents(self) -> dict[str, tuple[str, ...]]:
        """Parents of every q node (c nodes are roots), sorted; the form gan/ consumes."""
        pa: dict[str, list[str]] = {q: [] for q in self.q_nodes}
        for u, v in self.edges:
            pa[v].append(u)
        return {v: tuple(sorted(ps, key=node_order)) for v, ps in pa.items()}

    @property
    def q_edges(self) -> tuple[Edge, ...]:
        """The q-to-q part of the graph: the structure among extracted features."""
        return tuple(e for e in self.edges if e[0][0] == "q")

    def topological_q_order(self) -> tuple[str, ...]:
        """A topological order of the q nodes, ties broken by index (deterministic)."""
        return tuple(topological_order(self.q_nodes, self.q_edges))

    def q_subgraph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.q_nodes)
        g.add_edges_from(self.q_edges)
        return g

    def to_networkx(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from(self.edges)
        return g

    def with_edges(self, add: Iterable[Edge] = (), remove: Iterable[Edge] = ()) -> Graph:
        drop = set(remove)
        return Graph(self.spec, tuple(e for e in self.edges if e not in drop) + tuple(add))

    # ---- serialization ---------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "codes": [str(c) for c in self.spec.codes],
            "noise_dim": self.spec.noise_dim,
            "edges": [f"{u}->{v}" for u, v in _sorted_pairs(self.edges)],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_dot(self) -> str:
        """Graphviz text: c nodes (inputs, green) on one rank, q nodes (extracted, red) on another."""
        lines = ["digraph structsearch {", "  rankdir=BT;"]
        lines.append(
            "  { rank=same; "
            + " ".join(f'{c} [color="#2e7d32", style=filled, fillcolor="#c8e6c9"];' for c in self.c_nodes)
            + " }"
        )
        lines.append(
            "  { rank=same; "
            + " ".join(f'{q} [color="#c62828", style=filled, fillcolor="#ffcdd2"];' for q in self.q_nodes)
            + " }"
        )
        lines += [f"  {u} -> {v};" for u, v in _sorted_pairs(self.edges)]
        lines.append("}")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.key or "(no edges)"

    # ---- construction ----------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, spec: LatentSpec) -> Graph:
        """Parse ``"c1->q1, c2->q2, q1->q3"``; chains ``q1->q2->q3`` are allowed."""
        edges: list[Edge] = []
        for item in (s.strip() for s in re.split(r"[,;\n]", text)):
            if not item:
                continue
            edges += _parse_pairs(item)
        return cls(spec, tuple(edges))

    @classmethod
    def from_dict(cls, data: Mapping, spec: LatentSpec | None = None) -> Graph:
        """Build from ``{"codes": [...], "noise_dim": N, "edges": ["c1->q1", ...]}``.

        ``codes`` may be omitted when ``spec`` is given; when both are present they must agree.
        """
        if not isinstance(data, Mapping) or "edges" not in data:
            raise GraphError('graph JSON must be an object with an "edges" list, e.g. {"edges": ["c1->q1"]}')
        if "codes" in data:
            codes = data["codes"]
            if not (isinstance(codes, str) or isinstance(codes, list) and all(isinstance(c, str) for c in codes)):
                raise GraphError(f'"codes" must be a list of strings like ["cat10", "cont"], got {json.dumps(codes)}')
            text = ",".join(codes) if isinstance(codes, list) else codes
            noise = data.get("noise_dim", spec.noise_dim if spec else 0)
            if isinstance(noise, float) and noise.is_integer():
                noise = int(noise)
            if isinstance(noise, bool) or not isinstance(noise, int) or noise < 0:
                raise GraphError(f'"noise_dim" must be a whole number >= 0, got {json.dumps(noise)}')
            try:
                own = LatentSpec.parse(f"{text};noise={noise}")
            except ValueError as err:
                raise GraphError(f"bad codes in graph JSON: {err}") from None
            if spec is not None and own.codes != spec.codes:
                raise GraphError(f"graph JSON declares codes {own.describe()} but the run uses {spec.describe()}")
            spec = spec or own
        if spec is None:
            raise GraphError('graph JSON has no "codes"; give the latent spec (--codes)')
        edges = data["edges"]
        if not isinstance(edges, list):
            raise GraphError(f'"edges" must be a list, got {type(edges).__name__}')
        pairs: list[Edge] = []
        for e in edges:
            if isinstance(e, str):
                pairs += _parse_pairs(e)
            elif isinstance(e, (list, tuple)) and len(e) == 2 and all(isinstance(n, str) for n in e):
                pairs.append((e[0], e[1]))
            else:
                raise GraphError(f"malformed edge {e!r} in graph JSON; expected 'u->v' or [u, v]")
        return cls(spec, tuple(pairs))

    @classmethod
    def from_json(cls, text: str, spec: LatentSpec | None = None) -> Graph:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise GraphError(f"malformed graph JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
        return cls.from_dict(data, spec)


def _parse_pairs(text: str) -> list[Edge]:
    nodes = [n.strip() for n in text.split("->")]
    if len(nodes) < 2 or any(not n for n in nodes):
        raise GraphError(f"malformed edge {text!r}; expected 'u->v' such as 'c1->q1' or 'q1->q3'")
    return list(zip(nodes, nodes[1:]))


def _sorted_pairs(edges: Iterable[Edge]) -> list[Edge]:
    return sorted(edges, key=lambda e: (node_order(e[0]), node_order(e[1])))


def _validate(spec: LatentSpec, edges: tuple[Edge, ...]) -> None:
    n = len(spec.codes)
    accepted = f"c1..c{n} and q1..q{n}"
    for u, v in edges:
        for node in (u, v):
            m = _NODE.fullmatch(node)
            if m is None or int(m.group(2)) > n:
                raise GraphError(f"unknown node {node!r} in edge {u}->{v}; this spec has nodes {accepted}")
        if u == v:
            raise GraphError(f"self-loop {u}->{v}; an edge must join two different nodes")
        if v[0] == "c":
            raise GraphError(
                f"edge {u}->{v} points into input code {v}; c nodes are roots (their priors are fixed), "
                f"edges may point only into q nodes"
            )
        if spec.code(v).kind == "categorical" and spec.code(u).kind == "continuous":
            raise GraphError(
                f"edge {u}->{v}: categorical node {v} cannot have continuous parent {u} "
                f"(conditional linear Gaussian networks allow only categorical parents of a categorical node)"
            )
    cycle = find_cycle(edges)
    if cycle:
        raise GraphError(f"cycle {' -> '.join(cycle)}; the graph must be acyclic (drop or reverse one of its edges)")


# ---- presets -------------------------------------------------------------------------------


def _identity(spec: LatentSpec) -> list[Edge]:
    return [(f"c{i}", f"q{i}") for i in range(1, len(spec.codes) + 1)]


def _need(spec: LatentSpec, k: int, name: str) -> None:
    if len(spec.codes) < k:
        raise GraphError(f"preset {name!r} needs at least {k} codes; spec has {len(spec.codes)} ({spec.describe()})")


def _preset_edges(name: str, spec: LatentSpec) -> list[Edge]:
    ident = _identity(spec)
    n = len(spec.codes)
    if name == "independent":  # InfoGAN's baseline: each extracted code depends on its own input only
        return ident
    if name == "empty":
        return []
    if name in ("collider", "entangled"):  # the paper's MNIST figure: q1 and q2 lead to q3
        _need(spec, 3, name)
        return ident + [("q1", "q3"), ("q2", "q3")]
    if name == "entangled-inputs":  # the same entanglement through the inputs: c1 and c2 control q3
        _need(spec, 3, name)
        return ident + [("c1", "q3"), ("c2", "q3")]
    if name == "chain":
        _need(spec, 3, name)
        return ident + [("q1", "q2"), ("q2", "q3")]
    if name == "fork":
        _need(spec, 3, name)
        return ident + [("q1", "q2"), ("q1", "q3")]
    if name == "complete":  # every q_i -> q_j, i before j with categorical codes first (scoring's saturated order)
        order = sorted(range(1, n + 1), key=lambda i: spec.codes[i - 1].kind != "categorical")
        return ident + [(f"q{i}", f"q{j}") for a, i in enumerate(order) for j in order[a + 1 :]]
    raise KeyError(name)


PRESETS: dict[str, str] = {
    "independent": "ci->qi for every code (InfoGAN's baseline)",
    "collider": "independent + q1->q3, q2->q3 (the paper's entangled MNIST graph; alias 'entangled')",
    "entangled-inputs": "independent + c1->q3, c2->q3",
    "chain": "independent + q1->q2, q2->q3",
    "fork": "independent + q1->q2, q1->q3",
    "complete": "independent + qi->qj for all i before j, categorical codes first then by index",
    "empty": "no edges",
}


def preset(name: str, spec: LatentSpec) -> Graph:
    try:
        edges = _preset_edges(name, spec)
    except KeyError:
        raise GraphError(f"unknown graph preset {name!r}; presets are {', '.join(PRESETS)}") from None
    return Graph(spec, tuple(edges))


def load_graph(source: str | os.PathLike, spec: LatentSpec | str) -> Graph:
    """A preset name, a ``.json`` file, a text file of edges, or edges as text."""
    spec = get_spec(spec) if isinstance(spec, str) else spec
    text = str(source)
    if text in PRESETS or text == "entangled":
        return preset(text, spec)
    path = Path(text)
    if path.suffix in (".json", ".txt", ".edges") or (("->" not in text) and path.exists()):
        if not path.is_file():
            raise GraphError(
                f"graph file {text!r} does not exist; give a preset ({', '.join(PRESETS)}), a file or edges like 'c1->q1, q1->q2'"
            )
        body = _read_text(path)
        if path.suffix == ".json" or body.lstrip().startswith("{"):
            return Graph.from_json(body, spec)
        return Graph.parse(body, spec)
    if "->" not in text:
        raise GraphError(
            f"unknown graph {text!r}; give a preset ({', '.join(PRESETS)}), a .json file or edges like 'c1->q1, q1->q2'"
        )
    return Graph.parse(text, spec)


def _read_text(path: Path) -> str:
    """A graph file's text: UTF-8, not empty (an empty file is a mistake, not the empty graph)."""
    try:
        body = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise GraphError(
            f"graph file {str(path)!r} is not UTF-8 text (byte {err.object[err.start]:#04x} at position {err.start}); "
            "save it as UTF-8"
        ) from None
    if not body.strip():
        raise GraphError(
            f'graph file {str(path)!r} is empty; write JSON like {{"edges": ["c1->q1"]}} or edges like '
            "'c1->q1, q1->q2', or use the preset 'empty' for a graph with no edges"
        )
    return body
