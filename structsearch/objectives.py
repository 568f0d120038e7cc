"""Objectives a search may name, their directions, what they need, and the scores beyond the base set.

The base scores (:mod:`structsearch.evaluate`) are label-free and computed for every run. The
others need ground truth or a trained feature net and are computed only when asked for:

* ``fid`` -- classifier-feature FID (comparable only within one dataset), any labelled or
  factor dataset;
* ``mig``, ``dci``, ``sap``, ``modularity``, ``factorvae``, ``betavae`` -- disentanglement_lib's
  protocols on Q's codes, datasets with ground-truth factors;
* ``shd`` -- structural Hamming distance between the graph's q part and the true factor graph
  after matching codes to factors, datasets with a known factor graph (``shapes``).

``bic_gen`` is deliberately not an objective: a prototype showed it ranks collapsed models first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import numpy as np
import torch

from gan.latents import LatentSpec
from gan.train import evaluating
from structsearch.evaluate import BASE_SCORES, DIRECTIONS, SampleLatents
from structsearch.graph import Graph

logger = logging.getLogger(__name__)

DISENTANGLEMENT = ("mig", "dci", "sap", "modularity", "factorvae", "betavae")
EXTRA_DIRECTIONS = {"fid": "minimize", "shd": "minimize"} | {m: "maximize" for m in DISENTANGLEMENT}
OBJECTIVES: dict[str, str] = DIRECTIONS | EXTRA_DIRECTIONS
# The key under which each disentanglement metric reports its headline number.
HEADLINE = {"dci": "dci_disentanglement"}


def direction(name: str) -> str:
    if name == "bic_gen":
        raise ValueError(
            "bic_gen is a diagnostic, not an objective: it ranks codes that collapse onto their parents first"
        )
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; expected one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def check_objectives(names: Iterable[str], dataset, spec: LatentSpec) -> None:
    """Refuse objectives the dataset cannot compute, naming what each needs."""
    has_factors = bool(getattr(dataset, "factor_names", ()))
    for name in names:
        direction(name)
        if name == "cat_acc" and not (
            getattr(dataset, "n_classes", None) and any(c.kind == "categorical" for c in spec.codes)
        ):
            raise ValueError(
                f"objective cat_acc needs a labelled dataset and a categorical code; {dataset.name} with {spec.describe()} has not both"
            )
        if name in DISENTANGLEMENT and not has_factors:
            raise ValueError(f"objective {name} needs ground-truth factors (dsprites, shapes); {dataset.name} has none")
        if name == "shd" and not getattr(dataset, "true_edges", None):
            raise ValueError(f"objective shd needs a known factor graph (shapes); {dataset.name} has none")
        if name == "fid" and not (has_factors or getattr(dataset, "n_classes", None)):
            raise ValueError(
                f"objective fid needs labels or factors to train its feature net; {dataset.name} has neither"
            )


def available_metrics(dataset, spec: LatentSpec, text: str) -> list[str]:
    """The extra metrics named in ``text`` (``all``: every one the dataset allows; ``none``: no extra)."""
    if text.strip() in ("", "none"):
        return []
    if text == "all":
        names = []
        for name in (*DISENTANGLEMENT, "shd", "fid"):
            try:
                check_objectives([name], dataset, spec)
            except ValueError:
                continue
            names.append(name)
        return names
    names = [n.strip() for n in text.split(",") if n.strip()]
    check_objectives(names, dataset, spec)
    return names


def represent_with(D: torch.nn.Module, spec: LatentSpec):
    """images -> Q's codes as a float array (continuous means; categorical codes as their argmax)."""

    def represent(images: torch.Tensor) -> np.ndarray:
        device = next(D.parameters()).device
        with evaluating(D):
            out = D.q(images.to(device).float())
        parts = [
            p.argmax(1, keepdim=True).float() if c.kind == "categorical" else p
            for c, p in zip(spec.codes, spec.split(out))
        ]
        return torch.cat(parts, 1).cpu().numpy()

    return represent


def extra_scores(
    G,
    D,
    graph: Graph,
    dataset,
    names: Iterable[str],
    n_eval: int = 2000,
    seed: int = 0,
    scale: float = 0.2,
    sample: SampleLatents | None = None,
    seconds: dict[str, float] | None = None,
) -> dict[str, float]:
    """The requested scores beyond :data:`BASE_SCORES` (see the module docstring); ``sample`` draws
    (z, c) from the run's code prior (FID's generated images); ``seconds``, when given, receives
    the time of each metric (``time/<name>``; the disentanglement metrics share one code sample,
    timed as ``time/codes``)."""
    from structsearch import metrics

    names = [n for n in names if n not in BASE_SCORES]
    spec, out = graph.spec, {}
    represent = represent_with(D, spec)
    wanted = [m for m in DISENTANGLEMENT if m in names]
    if wanted:
        scores = metrics.all_disentanglement(represent, dataset, seed=seed, scale=scale, metrics=wanted)
        out |= {k: v for k, v in scores.items() if not k.startswith("time/")}
        timings = {k: v for k, v in scores.items() if k.startswith("time/")}
        out |= {m: scores[HEADLINE.get(m, m)] for m in wanted}
    else:
        timings = {}
    if "shd" in names:
        started = time.perf_counter()
        codes, factors = metrics.generate_factor_codes(represent, dataset, n_eval, np.random.default_rng(seed))
        matching = metrics.match_codes(codes, factors)
        out["shd"] = float(metrics.shd(graph.q_edges, dataset.true_edges, matching))
        logger.info("shd %d with code->factor matching %s", out["shd"], matching)
        timings["time/shd"] = time.perf_counter() - started
    if "fid" in names:
        started = time.perf_counter()
        n_fid = max(n_eval, round(metrics.FID_N_SAMPLES * scale))  # 10,000 at the comparable scale
        out["fid"] = fid_score(G, spec, dataset, n_fid, seed, sample)
        timings["time/fid"] = time.perf_counter() - started
    if seconds is not None:
        seconds.update(timings)
    return out


def fid_score(G, spec: LatentSpec, dataset, n: int, seed: int, sample: SampleLatents | None = None) -> float:
    from structsearch import metrics

    device = next(G.parameters()).device
    net, _ = metrics.load_or_train_feature_net(dataset, device=device)
    real, _ = dataset.test_images(n)
    rng = torch.Generator(device).manual_seed(seed)
    z, c = sample(len(real), rng) if sample else spec.sample(len(real), rng, device)
    with evaluating(G):
        fake = torch.cat([G(z[i : i + 500], c[i : i + 500]) for i in range(0, len(real), 500)])
    return float(metrics.fid(real.to(device), fake, net))
