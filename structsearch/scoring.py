"""BIC-style scores of a graph on a table of codes, with pgmpy (the project's only pgmpy import).

A table is a DataFrame with one column per node (``q1``, ``q2``, ... and, for generated data,
``c1``, ...): continuous codes as floats, categorical codes as integer classes. Categorical
columns become pandas categories so that pgmpy's conditional-Gaussian scores treat them as
discrete. Scores decompose into local scores of (node, parents), as pgmpy's do.

* :func:`bic` -- the graph's BIC (``BICGauss`` for an all-continuous table, else
  ``BICCondGauss``) over the nodes present in the table.
* :func:`delta_bic` -- DESIGN.md section 4's ``struct_bic``: BIC of the graph's q part minus the
  BIC of the saturated graph (every q node has every earlier q node, in the graph's own
  topological order, as a parent) on the same table, per row. Being relative to the saturated
  model on the same table, codes that become deterministic do not inflate it; higher is better.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from pgmpy.base import DAG
from pgmpy.structure_score import BICCondGauss, BICGauss, LogLikelihoodGauss

from gan.latents import LatentSpec
from structsearch.graph import Graph

logger = logging.getLogger(__name__)


def to_pgmpy(graph: Graph) -> DAG:
    """The graph as a pgmpy ``DAG`` (pgmpy refuses a cycle itself: the reference validator)."""
    dag = DAG()
    dag.add_nodes_from(graph.nodes)
    dag.add_edges_from(graph.edges)
    return dag


def make_table(columns: Mapping[str, np.ndarray], spec: LatentSpec) -> pd.DataFrame:
    """A scoring table: categorical codes as pandas categories of their k classes, others as float."""
    data = {}
    for name, values in columns.items():
        code = spec.code(name)
        if code.kind == "categorical":
            data[name] = pd.Categorical(np.asarray(values, dtype=np.int64), categories=range(code.n_classes))
        else:
            data[name] = np.asarray(values, dtype=np.float64).reshape(-1)
    return pd.DataFrame(data)


def _scorer(table: pd.DataFrame) -> BICGauss | BICCondGauss:
    discrete = any(isinstance(t, pd.CategoricalDtype) for t in table.dtypes)
    return BICCondGauss(table) if discrete else BICGauss(table)


def score_families(families: Mapping[str, Sequence[str]], table: pd.DataFrame) -> float:
    """Sum of pgmpy BIC local scores of (node, parents) over the given families."""
    scorer = _scorer(table)
    return float(sum(scorer.local_score(v, tuple(ps)) for v, ps in families.items()))


def bic(graph: Graph, table: pd.DataFrame) -> float:
    """BIC of the graph restricted to the table's columns (nodes absent from the table are dropped)."""
    present = set(table.columns)
    families = {v: tuple(u for u in ps if u in present) for v, ps in _all_parents(graph).items() if v in present}
    return score_families(families, table)


def saturated_q_families(graph: Graph) -> dict[str, tuple[str, ...]]:
    """Every q node with every earlier q node (graph's topological order) as parents."""
    order = graph.topological_q_order()
    return {v: tuple(order[:i]) for i, v in enumerate(order)}


def delta_bic(graph: Graph, table: pd.DataFrame) -> float:
    """(BIC(q part of graph) - BIC(saturated q graph)) / N on a table of q columns."""
    q_families = {v: tuple(u for u in ps if u.startswith("q")) for v, ps in graph.parents().items()}
    n = len(table)
    return (score_families(q_families, table) - score_families(saturated_q_families(graph), table)) / n


def gauss_loglik(table: pd.DataFrame, families: Mapping[str, Sequence[str]]) -> float:
    """pgmpy's linear-Gaussian log-likelihood of the given families (the regularizer's oracle)."""
    scorer = LogLikelihoodGauss(table)
    return float(sum(scorer.local_score(v, tuple(ps)) for v, ps in families.items()))


def _all_parents(graph: Graph) -> dict[str, tuple[str, ...]]:
    pa = {c: () for c in graph.c_nodes}
    pa.update(graph.parents())
    return pa
