"""Model-level disentanglement protocols: sample factors, render them, read the codes back.

A *representation* is a callable from images (B, C, H, W) float tensor to codes (B, n_codes),
numpy or torch (for a GAN: Q's codes of an image; move the images to its device inside the
callable). A *factor dataset* has ``factor_sizes``, ``sample_factors(n, rng)`` -> (n, n_factors)
int64 and ``observations_from_factors(factors)`` -> (n, C, H, W) tensor.

Reimplements disentanglement_lib (Apache-2.0) ``evaluation/metrics/utils.py``
(``generate_batch_factor_code``), ``factor_vae.py`` and ``beta_vae.py``, with the sample counts of
its ``config/unsupervised_study_v1/metric_configs`` as defaults. Training points of FactorVAE and
BetaVAE are drawn exactly as there, but many of them go through the representation in one call
(a batched forward pass, which does not change the statistics and is much faster on a GPU).
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from structsearch.metrics.disentanglement import dci, mig, modularity, sap

log = logging.getLogger(__name__)

Represent = Callable[[torch.Tensor], "np.ndarray | torch.Tensor"]
IMAGES_PER_CALL = 4096  # how many images go through the representation at once, at most
ALL_METRICS = ("mig", "dci", "sap", "modularity", "factorvae", "betavae")


class FactorDataset(Protocol):
    factor_sizes: tuple[int, ...]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def observations_from_factors(self, factors: np.ndarray) -> torch.Tensor: ...


def as_rng(rng_or_seed: int | np.random.Generator) -> np.random.Generator:
    """A Generator as is, or a fresh one seeded with the int."""
    return rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)


def encode(represent: Represent, images: torch.Tensor) -> np.ndarray:
    """Codes of ``images`` as float64 numpy (B, n_codes), without autograd."""
    with torch.no_grad():
        out = represent(images)
    if isinstance(out, torch.Tensor):
        out = out.detach().to("cpu", torch.float64).numpy()
    return np.asarray(out, dtype=np.float64).reshape(len(images), -1)


def encode_factors(represent: Represent, dataset: FactorDataset, factors: np.ndarray) -> np.ndarray:
    """Codes (n, n_codes) of the observations of ``factors`` (n, n_factors)."""
    return encode(represent, dataset.observations_from_factors(factors))


def generate_factor_codes(
    represent: Represent,
    dataset: FactorDataset,
    n: int,
    seed: int | np.random.Generator,
    batch_size: int = 16,
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` i.i.d. (codes (n, n_codes), factors (n, n_factors)) pairs, ``batch_size`` at a time.

    As disentanglement_lib ``utils.generate_batch_factor_code`` (which returns them transposed).
    """
    rng = as_rng(seed)
    codes, factors = [], []
    for start in range(0, n, batch_size):
        f = np.asarray(dataset.sample_factors(min(batch_size, n - start), rng), dtype=np.int64)
        codes.append(encode_factors(represent, dataset, f))
        factors.append(f)
    return np.concatenate(codes), np.concatenate(factors)


def _chunks(n_points: int, per_chunk: int) -> Iterator[int]:
    for start in range(0, n_points, per_chunk):
        yield min(per_chunk, n_points - start)


def _factor_vae_votes(
    represent: Represent,
    dataset: FactorDataset,
    rng: np.random.Generator,
    batch_size: int,
    n_points: int,
    global_var: np.ndarray,
    active: np.ndarray,
) -> np.ndarray:
    """Votes (n_factors, n_codes): per point, fix one random factor over a batch of ``batch_size``;
    the vote goes to the active code of least variance relative to its global variance."""
    n_factors = len(dataset.factor_sizes)
    active_idx = np.flatnonzero(active)
    votes = np.zeros((n_factors, len(global_var)), dtype=np.int64)
    for m in _chunks(n_points, max(1, IMAGES_PER_CALL // batch_size)):
        fixed = rng.integers(n_factors, size=m)  # (m,)
        f = np.asarray(dataset.sample_factors(m * batch_size, rng), dtype=np.int64).reshape(m, batch_size, -1)
        f[np.arange(m), :, fixed] = f[np.arange(m), 0, fixed][:, None]
        z = encode_factors(represent, dataset, f.reshape(m * batch_size, -1)).reshape(m, batch_size, -1)
        local_var = z.var(axis=1, ddof=1)  # (m, n_codes)
        code = active_idx[np.argmin(local_var[:, active] / global_var[active], axis=1)]
        np.add.at(votes, (fixed, code), 1)
    return votes


def factor_vae_score(
    represent: Represent,
    dataset: FactorDataset,
    rng_or_seed: int | np.random.Generator,
    batch_size: int = 64,
    n_train: int = 10_000,
    n_eval: int = 5_000,
    n_variance_estimate: int = 10_000,
    prune_threshold: float = 0.05,
) -> dict[str, float]:
    """FactorVAE score (Kim & Mnih 2018), as disentanglement_lib ``metrics/factor_vae.py``.

    Global variances s_d^2 (ddof=1) from ``n_variance_estimate`` points; codes with s_d <
    ``prune_threshold`` are inactive. A point: fix one factor k over ``batch_size`` samples,
    d* = argmin_d Var_batch(z_d) / s_d^2 over active d, a vote (k, d*). The majority-vote
    classifier d -> k is fit on ``n_train`` points; accuracy = share of votes it gets right.
    Chance is 1 / n_factors; a representation missing one of K factors scores about (K-1)/K.
    """
    rng = as_rng(rng_or_seed)
    z, _ = generate_factor_codes(represent, dataset, n_variance_estimate, rng, batch_size=IMAGES_PER_CALL)
    global_var = z.var(axis=0, ddof=1)  # (n_codes,)
    active = np.sqrt(global_var) >= prune_threshold
    if not active.any():
        log.warning("FactorVAE score: every code has std < %g, score 0", prune_threshold)
        return dict(train_accuracy=0.0, eval_accuracy=0.0, n_active_dims=0)
    train_votes = _factor_vae_votes(represent, dataset, rng, batch_size, n_train, global_var, active)
    classifier = np.argmax(train_votes, axis=0)  # (n_codes,) the factor each code stands for
    columns = np.arange(train_votes.shape[1])
    eval_votes = _factor_vae_votes(represent, dataset, rng, batch_size, n_eval, global_var, active)
    return dict(
        train_accuracy=float(train_votes[classifier, columns].sum() / train_votes.sum()),
        eval_accuracy=float(eval_votes[classifier, columns].sum() / eval_votes.sum()),
        n_active_dims=int(active.sum()),
    )


def _beta_vae_points(
    represent: Represent, dataset: FactorDataset, rng: np.random.Generator, batch_size: int, n_points: int
) -> tuple[np.ndarray, np.ndarray]:
    """Features (n_points, n_codes) = mean_batch |z(x1) - z(x2)| over pairs sharing one random
    factor, and labels (n_points,) = that factor."""
    n_factors = len(dataset.factor_sizes)
    features, labels = [], []
    for m in _chunks(n_points, max(1, IMAGES_PER_CALL // (2 * batch_size))):
        fixed = rng.integers(n_factors, size=m)
        f1 = np.asarray(dataset.sample_factors(m * batch_size, rng), dtype=np.int64).reshape(m, batch_size, -1)
        f2 = np.asarray(dataset.sample_factors(m * batch_size, rng), dtype=np.int64).reshape(m, batch_size, -1)
        f2[np.arange(m), :, fixed] = f1[np.arange(m), :, fixed]
        both = np.concatenate([f1, f2]).reshape(2 * m * batch_size, -1)
        z = encode_factors(represent, dataset, both).reshape(2, m, batch_size, -1)
        features.append(np.abs(z[0] - z[1]).mean(axis=1))
        labels.append(fixed)
    return np.concatenate(features), np.concatenate(labels)


def beta_vae_score(
    represent: Represent,
    dataset: FactorDataset,
    seed: int | np.random.Generator,
    batch_size: int = 64,
    n_train: int = 10_000,
    n_eval: int = 5_000,
) -> dict[str, float]:
    """BetaVAE score (Higgins et al. 2017), as disentanglement_lib ``metrics/beta_vae.py``.

    A point: pairs (x1, x2) of ``batch_size`` samples that share one random factor k; feature
    mean_b |z(x1_b) - z(x2_b)| (n_codes,), label k. sklearn's default ``LogisticRegression`` is
    trained on ``n_train`` points and its accuracy on ``n_eval`` fresh points is the score.
    """
    rng = as_rng(seed)
    x_tr, y_tr = _beta_vae_points(represent, dataset, rng, batch_size, n_train)
    with warnings.catch_warnings():
        # Same solver budget as disentanglement_lib; an unconverged fit is part of that protocol.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(random_state=int(rng.integers(2**31))).fit(x_tr, y_tr)
    x_ev, y_ev = _beta_vae_points(represent, dataset, rng, batch_size, n_eval)
    return dict(train_accuracy=float(model.score(x_tr, y_tr)), eval_accuracy=float(model.score(x_ev, y_ev)))


def all_disentanglement(
    represent: Represent,
    dataset: FactorDataset,
    seed: int = 0,
    scale: float = 1.0,
    metrics: Iterable[str] = ALL_METRICS,
) -> dict[str, float]:
    """Every disentanglement metric, flat keys, with seconds per metric under ``time/<metric>``.

    ``scale`` multiplies every sample count (1.0: disentanglement_lib's 10,000 train / 5,000 test,
    10,000 for FactorVAE's variances; batch sizes stay 64 and 16). MIG, DCI, SAP and modularity
    share one sample of codes, as they do in disentanglement_lib, where each metric restarts its
    random state from the same seed: MIG reads its first 10,000 rows, the others all of it.
    """
    metrics = set(metrics)
    if unknown := metrics - set(ALL_METRICS):
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {ALL_METRICS}")
    n_train, n_test, n_var = (max(2, round(n * scale)) for n in (10_000, 5_000, 10_000))
    rng_codes, rng_fvae, rng_bvae = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3))
    out: dict[str, float] = {}
    t0 = time.perf_counter()
    if metrics & {"mig", "dci", "sap", "modularity"}:
        codes, factors = generate_factor_codes(represent, dataset, n_train + n_test, rng_codes)
        out["time/codes"] = time.perf_counter() - t0
    frac = n_train / (n_train + n_test)
    steps: dict[str, Callable[[], dict[str, float]]] = {
        "mig": lambda: {"mig": mig(codes[:n_train], factors[:n_train])},
        "dci": lambda: {f"dci_{k}": v for k, v in dci(codes, factors, frac, seed).items()},
        "sap": lambda: {"sap": sap(codes, factors, frac, seed)},
        "modularity": lambda: _prefixed(modularity(codes, factors, train_fraction=frac, seed=seed), "modularity"),
        "factorvae": lambda: _prefixed(
            factor_vae_score(represent, dataset, rng_fvae, n_train=n_train, n_eval=n_test, n_variance_estimate=n_var),
            "factorvae",
        ),
        "betavae": lambda: _prefixed(
            beta_vae_score(represent, dataset, rng_bvae, n_train=n_train, n_eval=n_test), "betavae"
        ),
    }
    for name in ALL_METRICS:
        if name in metrics:
            t0 = time.perf_counter()
            scores = steps[name]()
            out.update(scores, **{f"time/{name}": time.perf_counter() - t0})
            log.info("%s (%.1f s): %s", name, out[f"time/{name}"], {k: round(v, 4) for k, v in scores.items()})
    return out


def _prefixed(scores: dict[str, float], name: str) -> dict[str, float]:
    """{'eval_accuracy': a, 'train_accuracy': b} -> {'factorvae': a, 'factorvae_train_accuracy': b}."""
    main = {"factorvae": "eval_accuracy", "betavae": "eval_accuracy", "modularity": "modularity"}[name]
    return {(name if k == main else f"{name}_{k}"): float(v) for k, v in scores.items()}
