"""Structure recovery: match learned codes to ground-truth factors, then compare graphs.

Codes carry no names of their own, so before a trial's graph over q nodes can be compared with
the true graph over factors, code i (node ``q{i+1}``) is renamed to the factor it tracks best:
a one-to-one (Hungarian) matching on absolute rank correlation. The structural Hamming distance
then counts the node pairs whose edge differs (missing, extra or reversed: 1 each).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

log = logging.getLogger(__name__)

Edge = tuple[str, str]


def abs_correlation(
    codes: np.ndarray, factors: np.ndarray, method: Literal["spearman", "pearson"] = "spearman"
) -> np.ndarray:
    """|corr(code_i, factor_j)|: (n_codes, n_factors); 0 where a column is constant.

    Spearman's rho is Pearson's r of the ranks (ties get their average rank).
    """
    x = np.asarray(codes, dtype=np.float64)
    y = np.asarray(factors, dtype=np.float64)
    if method == "spearman":
        x, y = rankdata(x, axis=0), rankdata(y, axis=0)
    elif method != "pearson":
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    nx, ny = np.linalg.norm(x, axis=0), np.linalg.norm(y, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = (x.T @ y) / np.outer(nx, ny)
    return np.nan_to_num(np.abs(corr), nan=0.0)


def match_codes(
    codes: np.ndarray, factors: np.ndarray, method: Literal["spearman", "pearson"] = "spearman"
) -> list[int]:
    """result[i] = the factor matched to code i (node q{i+1}), or -1 if code i is unmatched.

    Maximizes sum_i |corr(code_i, factor_result[i])| over one-to-one matchings
    (scipy's ``linear_sum_assignment``); with n_codes != n_factors the surplus stays unmatched.
    """
    corr = abs_correlation(codes, factors, method)
    rows, cols = linear_sum_assignment(corr, maximize=True)
    result = [-1] * corr.shape[0]
    for i, j in zip(rows, cols):
        result[i] = int(j)
    log.debug("matched codes to factors %s (|corr| %s)", result, np.round(corr[rows, cols], 3).tolist())
    return result


def _q_edges(edges: Iterable[Sequence[str] | str]) -> set[Edge]:
    """The q-to-q edges as (parent, child); any edge with a ``c`` endpoint is dropped.

    An edge is a (parent, child) pair or a string "parent->child".
    """
    out = set()
    for edge in edges:
        parent, child = (s.strip() for s in edge.split("->")) if isinstance(edge, str) else edge
        if not (str(parent).startswith("c") or str(child).startswith("c")):
            out.add((str(parent), str(child)))
    return out


def _rename(node: str, matching: Sequence[int]) -> str:
    """q{i+1} -> q{matching[i]+1}; an unmatched or unknown code gets a name no factor has."""
    if not (node.startswith("q") and node[1:].isdigit()):
        raise ValueError(f"expected a q node like 'q3', got {node!r}")
    i = int(node[1:]) - 1
    if i < len(matching) and matching[i] >= 0:
        return f"q{matching[i] + 1}"
    return f"unmatched_{node}"


def shd(
    graph_edges: Iterable[Sequence[str] | str], true_edges: Iterable[Sequence[str] | str], matching: Sequence[int]
) -> int:
    """Structural Hamming distance between a trial's q-to-q graph and the true factor graph.

    The trial's nodes are renamed q{i+1} -> q{matching[i]+1} first (``matching`` as returned by
    :func:`match_codes`). Over unordered node pairs {u, v}: 0 if both graphs agree (no edge, or
    the same direction), else 1 (a missing, an extra or a reversed edge). Edges touching a ``c``
    node are ignored; edges of an unmatched code count as extra.
    """
    renamed = {(_rename(u, matching), _rename(v, matching)) for u, v in _q_edges(graph_edges)}
    truth = _q_edges(true_edges)
    pairs = {tuple(sorted(e)) for e in renamed | truth}
    return sum(((u, v) in renamed, (v, u) in renamed) != ((u, v) in truth, (v, u) in truth) for u, v in pairs)
