"""Scores of a trained model (DESIGN.md section 4), all label-free unless said otherwise.

* ``struct_bic`` -- pgmpy delta-BIC (graph's q part minus the saturated graph, per row) of Q's
  codes on held-out REAL images: do the features Q extracts from data obey the graph? Higher is
  better; it can only see structure among features Q actually extracts.
* ``agreement`` -- the deviance of the graph on fresh generated (c, q): does the model obey its
  own graph? Lower is better (0: every conditional independence holds).
* ``info`` -- how well Q recovers the codes on generated images: accuracy for categorical codes,
  for continuous ones the R^2 of the best linear read-back of c_k from q_k (corr(c_k, q_k)^2, so
  the Gaussian mutual information is -1/2 log(1 - info)); ``info`` is their mean, ``info_min``
  the worst code (a collapsed code has low info), ``info/cK`` each code. Until issue 7 it was
  the calibrated 1 - MSE(q_k, c_k) / Var(c_k), which also charged Q for the scale of its output:
  trained Q heads output 0.2-0.6 times the codes' spread, so a code with corr^2 0.64 scored
  -0.04 there and counted as collapsed (docs/results.md, recovery benchmark).
* ``cat_acc`` (labelled data) -- the categorical code as an unsupervised classifier of real test
  images, with the best one-to-one class matching (scipy's ``linear_sum_assignment``).
* ``bic_gen`` -- diagnostic only, never an objective: the graph's own BIC per row on generated
  (c, q). A prototype showed it ranks collapsed models first.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from gan.latents import LatentSpec
from gan.structure import StructuralLoss
from gan.train import evaluating
from structsearch.graph import Graph
from structsearch.scoring import bic, delta_bic, make_table

INFO_VERSION = 2  # of the ``info`` scores: 1 was the calibrated 1 - MSE/Var (see the module doc)

SampleLatents = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]

# Computed for every run (cat_acc where the data has labels and the spec a categorical code).
BASE_SCORES = frozenset({"struct_bic", "agreement", "info", "info_min", "cat_acc", "bic_gen"})
# Direction of every base score an objective may name (bic_gen is deliberately absent).
DIRECTIONS: dict[str, str] = {
    "struct_bic": "maximize",
    "agreement": "minimize",
    "info": "maximize",
    "info_min": "maximize",
    "cat_acc": "maximize",
}


@torch.no_grad()
def q_codes(D: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Q's raw outputs (N, code_dim) on images, in batches, eval mode."""
    with evaluating(D):
        return torch.cat([D.q(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]).float()


def code_columns(spec: LatentSpec, flat: torch.Tensor, prefix: str) -> dict[str, np.ndarray]:
    """(N, code_dim) -> {"q1": classes or values, ...}: categorical as argmax class, continuous as value."""
    columns = {}
    for code, part in zip(spec.codes, spec.split(flat)):
        name = prefix + code.name[1:]
        columns[name] = part.argmax(1).cpu().numpy() if code.kind == "categorical" else part[:, 0].cpu().numpy()
    return columns


@torch.no_grad()
def generated_codes(
    G, D, spec: LatentSpec, n: int, seed: int, device: torch.device, sample: SampleLatents | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh (c, q_out) pairs from a seeded draw of ``sample(n, generator) -> (z, c)``, the prior G was
    trained with (``Trainer.sample_latents``); the spec's independent prior when None."""
    rng = torch.Generator(device).manual_seed(seed)
    z, c = sample(n, rng) if sample else spec.sample(n, rng, device)
    with evaluating(G):
        images = torch.cat([G(z[i : i + 500], c[i : i + 500]) for i in range(0, n, 500)])
    return c, q_codes(D, images)


def info_scores(spec: LatentSpec, c: torch.Tensor, q_out: torch.Tensor) -> dict[str, float]:
    per_code = {}
    for code, ci, qi in zip(spec.codes, spec.split(c), spec.split(q_out)):
        if code.kind == "categorical":
            per_code[code.name] = (qi.argmax(1) == ci.argmax(1)).float().mean().item()
        else:
            per_code[code.name] = readback_r2(ci[:, 0], qi[:, 0])
    return {"info": float(np.mean(list(per_code.values()))), "info_min": min(per_code.values())} | {
        f"info/{k}": v for k, v in per_code.items()
    }


def readback_r2(c: torch.Tensor, q: torch.Tensor) -> float:
    """R^2 of the least-squares line c ~ a q + b, i.e. corr(c, q)^2 (0 for a constant q, NaN for a
    non-finite one)."""
    c, q = c.double() - c.double().mean(), q.double() - q.double().mean()
    denom = (c @ c) * (q @ q)
    if not torch.isfinite(denom):
        return float("nan")
    return float((c @ q) ** 2 / denom) if denom > 0 else 0.0


def matched_accuracy(predicted: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Accuracy of a clustering under the best one-to-one matching of clusters to labels."""
    confusion = np.zeros((k, max(k, int(labels.max()) + 1)), dtype=np.int64)
    np.add.at(confusion, (predicted, labels), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return float(confusion[rows, cols].sum() / len(labels))


def compute_scores(
    G,
    D,
    spec: LatentSpec,
    graph: Graph,
    dataset,
    n_eval: int = 2000,
    seed: int = 0,
    sample: SampleLatents | None = None,
) -> dict[str, float]:
    """Every score of section 4 that the dataset allows, as a flat dict (``sample``: the run's code prior)."""
    device = next(G.parameters()).device
    scores: dict[str, float] = {}

    real, labels = dataset.test_images(n_eval)
    q_real = q_codes(D, real.to(device))
    scores["struct_bic"] = delta_bic(graph, make_table(code_columns(spec, q_real, "q"), spec))

    c, q_gen = generated_codes(G, D, spec, n_eval, seed, device, sample)
    agreement = StructuralLoss(spec, graph.parents(), form="deviance", floor=1e-6)(c, q_gen)
    scores["agreement"] = float(agreement)
    scores |= info_scores(spec, c, q_gen)
    table = make_table(code_columns(spec, c, "c") | code_columns(spec, q_gen, "q"), spec)
    scores["bic_gen"] = bic(graph, table) / len(table)

    categorical = [code for code in spec.codes if code.kind == "categorical"]
    if labels is not None and categorical and getattr(dataset, "n_classes", None):
        first = spec.codes.index(categorical[0])
        part = spec.split(q_real)[first]
        scores["cat_acc"] = matched_accuracy(
            part.argmax(1).cpu().numpy(), labels.cpu().numpy(), categorical[0].n_classes
        )
    return scores
