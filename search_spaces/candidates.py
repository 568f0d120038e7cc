"""The ``candidates`` space: an explicit list of graphs, one chosen per trial (ablations).

The trial suggests one parameter, ``graph``, with ``suggest_categorical`` over the candidates'
canonical keys (in file order, duplicates dropped), so a ``GridSampler`` or enough random trials
visit every candidate and ``study.enqueue_trial({"graph": key})`` seeds one.

File formats (:func:`load_candidates`):

* text: one graph per line, as edges (``c1->q1, c2->q2, q1->q2``) or a preset name
  (``independent``); blank lines and lines starting with ``#`` are skipped;
* JSON: a list whose items are graph objects (``{"edges": ["c1->q1", ...]}``), edge lists
  (``["c1->q1", "q1->q2"]`` or ``[["c1", "q1"], ...]``) or edge strings as in the text form.

Candidates must obey the constraints; one that does not is refused with a ValueError naming it
(the space corrects nothing silently: pass ``Constraints(required=())`` to list graphs without
the ``ci -> qi`` edges).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import optuna

from gan.latents import LatentSpec
from search_spaces.base import GRAPH_PARAM, Constraints, SearchSpace, sorted_edges
from structsearch.graph import PRESETS, Edge, Graph, GraphError, preset


def _parse_text_graph(text: str, spec: LatentSpec) -> Graph:
    text = text.strip()
    if text in PRESETS or text == "entangled":
        return preset(text, spec)
    return Graph.parse(text, spec)


def _parse_json_item(item: object, spec: LatentSpec) -> Graph:
    if isinstance(item, str):
        return _parse_text_graph(item, spec)
    if isinstance(item, list):
        return Graph.from_dict({"edges": item}, spec)
    if isinstance(item, dict):
        return Graph.from_dict(item, spec)
    raise GraphError(f"expected a graph object, an edge list or an edge string, got {type(item).__name__}")


def load_candidates(path: str | os.PathLike, spec: LatentSpec) -> list[Graph]:
    """Read a candidates file (text or JSON, see the module docstring); errors name file and item."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"candidates file {str(path)!r} does not exist")
    body = path.read_text()
    graphs = []
    if body.lstrip().startswith("{"):
        raise ValueError(f"{path}: expected a JSON list of graphs ([...]), got one JSON object")
    if body.lstrip().startswith("["):
        try:
            items = json.loads(body)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: malformed JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
        for k, item in enumerate(items):
            try:
                graphs.append(_parse_json_item(item, spec))
            except GraphError as err:
                raise ValueError(f"{path}: graph {k}: {err}") from None
    else:
        for lineno, line in enumerate(body.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                graphs.append(_parse_text_graph(line, spec))
            except GraphError as err:
                raise ValueError(f"{path}:{lineno}: {err}") from None
    if not graphs:
        raise ValueError(f"candidates file {str(path)!r} lists no graphs")
    return graphs


class CandidatesSpace(SearchSpace):
    """One categorical choice over a fixed list of graphs, by canonical key."""

    name = "candidates"
    options = ("path", "graphs", "cross_edges")

    def __init__(
        self,
        spec: LatentSpec,
        constraints: Constraints | None = None,
        path: str | os.PathLike | None = None,
        graphs: Iterable[Graph] | None = None,
    ) -> None:
        super().__init__(spec, constraints)
        if (path is None) == (graphs is None):
            raise ValueError(f"search space {self.name!r} needs exactly one of path= (a candidates file) or graphs=")
        self.source = str(path) if path is not None else "given list"
        listed = load_candidates(path, spec) if path is not None else list(graphs)
        self.graphs: dict[str, Graph] = {}
        for k, graph in enumerate(listed):
            if graph.spec != spec:
                raise ValueError(
                    f"candidate {k} ({graph.key}) uses spec {graph.spec.describe()}, not {spec.describe()}"
                )
            problems = self.constraints.violations(graph)
            if problems:
                raise ValueError(f"candidate {k} ({graph.key or 'no edges'}) {'; '.join(problems)}")
            self.graphs.setdefault(graph.key, graph)
        if not self.graphs:
            raise ValueError(f"search space {self.name!r} has no graphs to choose from")
        self.keys = tuple(self.graphs)

    def _propose(self, trial: optuna.trial.BaseTrial) -> Graph:
        return self.graphs[trial.suggest_categorical(GRAPH_PARAM, self.keys)]

    def possible_edges(self) -> list[Edge]:
        return sorted_edges(e for g in self.graphs.values() for e in g.edges)

    def all_graphs(self, limit: int | None = None) -> list[Graph]:
        return list(self.graphs.values())

    def params_for(self, graph: Graph) -> dict[str, object] | None:
        if graph.spec != self.spec or graph.key not in self.graphs:
            return None
        return {GRAPH_PARAM: graph.key}

    def describe(self) -> str:
        return f"{self.name}: {len(self.keys)} graphs from {self.source}; {self.constraints.describe(self.spec)}"
