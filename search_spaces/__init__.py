"""Search spaces: each turns an Optuna trial into a graph that is valid by construction.

docs/design.md section 5. ``make_space("ordered", spec)`` is the entry point; ``SPACES`` names them:

* ``ordered`` (default): a priority per q node plus a boolean per joinable pair;
* ``fixed-order``: a given order of the q nodes plus edge booleans;
* ``candidates``: an explicit list of graphs from a file;
* ``brute-force``: every graph of a small space, enumerated up front;
* ``classes``: one graph per Markov equivalence class of the q part (score-equivalent objectives).

Search spaces import optuna and structsearch's graph model, never mlflow or torch directly.
"""

from __future__ import annotations

from dataclasses import replace

from gan.latents import LatentSpec, get_spec
from search_spaces.base import Constraints, SearchSpace
from search_spaces.brute_force import BruteForceSpace, enumerate_dags
from search_spaces.candidates import CandidatesSpace, load_candidates
from search_spaces.classes import SCORE_EQUIVALENT, ClassesSpace
from search_spaces.fixed_order import FixedOrderSpace
from search_spaces.ordered import OrderedSpace

SPACES: dict[str, type[SearchSpace]] = {
    "ordered": OrderedSpace,
    "fixed-order": FixedOrderSpace,
    "candidates": CandidatesSpace,
    "brute-force": BruteForceSpace,
    "classes": ClassesSpace,
}


def make_space(
    name: str, spec: LatentSpec | str, constraints: Constraints | None = None, **options: object
) -> SearchSpace:
    """Build the search space called ``name``.

    Options: ``cross_edges`` (bool, any space; overrides ``constraints.cross_edges``), ``order``
    (fixed-order: e.g. ``("q1", "q3", "q2")``), ``path`` (candidates: the candidates file).
    """
    if name not in SPACES:
        raise ValueError(f"unknown search space {name!r}; accepted: {', '.join(SPACES)}")
    cls = SPACES[name]
    unknown = sorted(set(options) - set(cls.options))
    if unknown:
        raise ValueError(
            f"search space {name!r} takes no option {', '.join(map(repr, unknown))}; its options are {', '.join(cls.options)}"
        )
    spec = get_spec(spec) if isinstance(spec, str) else spec
    constraints = constraints or Constraints()
    if "cross_edges" in options:
        constraints = replace(constraints, cross_edges=bool(options.pop("cross_edges")))
    return cls(spec, constraints, **options)


__all__ = [
    "SPACES",
    "BruteForceSpace",
    "CandidatesSpace",
    "ClassesSpace",
    "SCORE_EQUIVALENT",
    "Constraints",
    "FixedOrderSpace",
    "OrderedSpace",
    "SearchSpace",
    "enumerate_dags",
    "load_candidates",
    "make_space",
]
