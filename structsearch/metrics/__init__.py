"""Scores of a trained model against ground truth: disentanglement (disentanglement_lib's
protocols), structure recovery (code matching + SHD) and a classifier-feature FID."""

from __future__ import annotations

from structsearch.metrics.disentanglement import dci, mig, modularity, sap
from structsearch.metrics.fid import (
    FID_N_SAMPLES,
    FeatureNet,
    feature_stats,
    fid,
    frechet_distance,
    load_or_train_feature_net,
    train_feature_net,
)
from structsearch.metrics.protocols import (
    ALL_METRICS,
    all_disentanglement,
    beta_vae_score,
    factor_vae_score,
    generate_factor_codes,
)
from structsearch.metrics.structure import match_codes, shd

__all__ = [
    "ALL_METRICS",
    "FID_N_SAMPLES",
    "FeatureNet",
    "all_disentanglement",
    "beta_vae_score",
    "dci",
    "factor_vae_score",
    "feature_stats",
    "fid",
    "frechet_distance",
    "generate_factor_codes",
    "load_or_train_feature_net",
    "match_codes",
    "mig",
    "modularity",
    "sap",
    "shd",
    "train_feature_net",
]
