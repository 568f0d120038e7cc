"""Disentanglement scores on arrays of codes and ground-truth factors.

Every function takes ``codes`` (N, n_codes) float and ``factors`` (N, n_factors) int (factor
classes) and reimplements one metric of google-research's disentanglement_lib (Apache-2.0),
``disentanglement_lib/evaluation/metrics/*.py``, with its defaults (20-bin histograms, its
classifiers). disentanglement_lib lays arrays out as (n_dims, N); here rows are samples.

Where a metric needs a train/test split, the rows are shuffled with ``seed`` and the first
``ceil(train_fraction * N)`` rows train. The default fraction, 2/3, is the 10,000 train / 5,000
test of disentanglement_lib's unsupervised_study_v1 metric configs.
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
from scipy import stats
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import mutual_info_score, roc_auc_score
from sklearn.svm import LinearSVC

log = logging.getLogger(__name__)

TRAIN_FRACTION = 10_000 / 15_000


def _check(codes: np.ndarray, factors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes = np.asarray(codes, dtype=np.float64)
    factors = np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError(f"need codes (N, n_codes) and factors (N, n_factors), got {codes.shape} and {factors.shape}")
    return codes, factors.astype(np.int64)


def split(
    codes: np.ndarray, factors: np.ndarray, train_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded shuffle, then the first ceil(train_fraction * N) rows train (disentanglement_lib's
    ``utils.split_train_test`` without the shuffle, which its i.i.d. samples did not need)."""
    order = np.random.default_rng(seed).permutation(len(codes))
    n_train = int(math.ceil(len(codes) * train_fraction))
    if not 0 < n_train < len(codes):
        raise ValueError(f"train_fraction={train_fraction} leaves an empty split of {len(codes)} rows")
    tr, te = order[:n_train], order[n_train:]
    return codes[tr], factors[tr], codes[te], factors[te]


def histogram_discretize(codes: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Each code into ``n_bins`` equal-width bins over its own range: (N, n_codes) int.

    ``np.digitize(x, np.histogram(x, n_bins)[1][:-1])``, as ``utils._histogram_discretize``.
    """
    out = np.zeros(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        out[:, i] = np.digitize(codes[:, i], np.histogram(codes[:, i], n_bins)[1][:-1])
    return out


def discrete_mutual_info(discrete_codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """m[i, j] = I(code_i; factor_j) in nats from the joint histogram: (n_codes, n_factors)."""
    m = np.zeros((discrete_codes.shape[1], factors.shape[1]))
    for i in range(discrete_codes.shape[1]):
        for j in range(factors.shape[1]):
            m[i, j] = mutual_info_score(factors[:, j], discrete_codes[:, i])
    return m


def mig(codes: np.ndarray, factors: np.ndarray, n_bins: int = 20) -> float:
    """Mutual Information Gap (Chen et al. 2018), as disentanglement_lib ``metrics/mig.py``.

    MIG = mean_j (I(z_(1); v_j) - I(z_(2); v_j)) / H(v_j), where z_(1), z_(2) are the codes with
    the largest and second largest mutual information with factor v_j, after discretizing each
    code into ``n_bins`` histogram bins. 1 when each factor is read by one code alone.
    Factors with zero entropy (constant) are skipped; with one code the gap is I(z_(1); v_j).
    """
    codes, factors = _check(codes, factors)
    m = discrete_mutual_info(histogram_discretize(codes, n_bins), factors)
    entropy = np.array([mutual_info_score(f, f) for f in factors.T])
    top = np.sort(m, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros(m.shape[1])
    keep = entropy > 0
    if not keep.all():
        log.warning("MIG skips %d constant factors", int((~keep).sum()))
    return float(np.mean((top[0, keep] - second[keep]) / entropy[keep]))


def _entropy_score(p: np.ndarray, base: int) -> np.ndarray:
    """1 - H(p) / log(base) per column of p (normalized along axis 0), as dci.py."""
    return 1.0 - stats.entropy(p + 1e-11, base=base)


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """Disentanglement and completeness of an importance matrix R (n_codes, n_factors).

    D = sum_i rho_i (1 - H_K(R_i. / sum R_i.)), rho_i = sum_j R_ij / sum R (K = n_factors);
    C = sum_j rho_j (1 - H_L(R_.j / sum R_.j)), rho_j = sum_i R_ij / sum R (L = n_codes).
    """
    weights = importance if importance.sum() > 0 else np.ones_like(importance)
    per_code = _entropy_score(importance.T, base=importance.shape[1])
    per_factor = _entropy_score(importance, base=importance.shape[0])
    d = np.sum(per_code * weights.sum(axis=1) / weights.sum())
    c = np.sum(per_factor * weights.sum(axis=0) / weights.sum())
    return float(d), float(c)


def dci(
    codes: np.ndarray, factors: np.ndarray, train_fraction: float = TRAIN_FRACTION, seed: int = 0
) -> dict[str, float]:
    """DCI (Eastwood & Williams 2018), as disentanglement_lib ``metrics/dci.py``.

    One sklearn ``GradientBoostingClassifier()`` (its defaults) per factor predicts the factor
    from all codes; |feature_importances_| form R (n_codes, n_factors), scored by
    :func:`dci_from_importance`. Informativeness is the classifiers' mean accuracy (train, test).
    """
    codes, factors = _check(codes, factors)
    x_tr, y_tr, x_te, y_te = split(codes, factors, train_fraction, seed)
    importance = np.zeros((codes.shape[1], factors.shape[1]))
    acc_tr, acc_te = [], []
    for j in range(factors.shape[1]):
        model = GradientBoostingClassifier(random_state=seed).fit(x_tr, y_tr[:, j])
        importance[:, j] = np.abs(model.feature_importances_)
        acc_tr.append(np.mean(model.predict(x_tr) == y_tr[:, j]))
        acc_te.append(np.mean(model.predict(x_te) == y_te[:, j]))
    d, c = dci_from_importance(importance)
    return dict(
        disentanglement=d,
        completeness=c,
        informativeness_train=float(np.mean(acc_tr)),
        informativeness_test=float(np.mean(acc_te)),
    )


def sap(codes: np.ndarray, factors: np.ndarray, train_fraction: float = TRAIN_FRACTION, seed: int = 0) -> float:
    """SAP score (Kumar et al. 2018), discrete factors, as disentanglement_lib ``metrics/sap_score.py``.

    S[i, j] = test accuracy of ``LinearSVC(C=0.01, class_weight="balanced")`` predicting factor j
    from code i alone; SAP = mean_j (largest - second largest S[., j]).
    """
    codes, factors = _check(codes, factors)
    x_tr, y_tr, x_te, y_te = split(codes, factors, train_fraction, seed)
    score = np.zeros((codes.shape[1], factors.shape[1]))
    with warnings.catch_warnings():
        # Same solver budget as disentanglement_lib; an unconverged SVM is part of that protocol.
        warnings.simplefilter("ignore", ConvergenceWarning)
        for i in range(codes.shape[1]):
            for j in range(factors.shape[1]):
                if np.ptp(x_tr[:, i]) == 0 or len(np.unique(y_tr[:, j])) < 2:
                    continue  # LinearSVC cannot fit one class; a constant code predicts nothing
                clf = LinearSVC(C=0.01, class_weight="balanced", random_state=seed)
                clf.fit(x_tr[:, i : i + 1], y_tr[:, j])
                score[i, j] = np.mean(clf.predict(x_te[:, i : i + 1]) == y_te[:, j])
    top = np.sort(score, axis=0)[::-1]
    second = top[1] if len(top) > 1 else np.zeros(score.shape[1])
    return float(np.mean(top[0] - second))


def modularity_from_mi(mi: np.ndarray) -> float:
    """Modularity (Ridgeway & Mozer 2018) of a mutual-information matrix (n_codes, n_factors).

    Per code i: delta_i = (sum_j m_ij^2 - max_j m_ij^2) / (max_j m_ij^2 (K - 1)),
    modularity_i = 1 - delta_i (0 for a code with no information); the score is the mean over codes.
    """
    sq = np.square(mi)
    top = sq.max(axis=1)
    k = max(sq.shape[1] - 1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per_code = 1.0 - (sq.sum(axis=1) - top) / (top * k)
    per_code[top == 0] = 0.0
    return float(np.mean(per_code))


def _explicitness(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray) -> tuple[float, float]:
    """Macro one-vs-rest ROC-AUC of sklearn's default ``LogisticRegression`` on all codes."""
    clf = LogisticRegression().fit(x_tr, y_tr)

    def auc(x: np.ndarray, y: np.ndarray) -> float:
        onehot = (y[:, None] == clf.classes_[None, :]).astype(int)  # (N, n_classes)
        proba = clf.predict_proba(x)  # (N, n_classes)
        seen = (onehot.sum(axis=0) > 0) & (onehot.sum(axis=0) < len(y))  # AUC needs both labels
        return float(roc_auc_score(onehot[:, seen], proba[:, seen], average="macro"))

    return auc(x_tr, y_tr), auc(x_te, y_te)


def modularity(
    codes: np.ndarray,
    factors: np.ndarray,
    n_bins: int = 20,
    train_fraction: float = TRAIN_FRACTION,
    seed: int = 0,
) -> dict[str, float]:
    """Modularity and explicitness, as disentanglement_lib ``metrics/modularity_explicitness.py``.

    Modularity uses the ``n_bins`` histogram mutual information on the train rows
    (:func:`modularity_from_mi`). Explicitness is the mean over factors of the macro ROC-AUC of
    a logistic regression from all codes (standardized with train statistics) to the factor.
    """
    codes, factors = _check(codes, factors)
    x_tr, y_tr, x_te, y_te = split(codes, factors, train_fraction, seed)
    mi = discrete_mutual_info(histogram_discretize(x_tr, n_bins), y_tr)
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std[std == 0] = 1.0  # a constant code stays constant instead of becoming NaN
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    tr, te = zip(*(_explicitness(x_tr, y_tr[:, j], x_te, y_te[:, j]) for j in range(factors.shape[1])))
    return dict(
        modularity=modularity_from_mi(mi),
        explicitness_train=float(np.mean(tr)),
        explicitness_test=float(np.mean(te)),
    )
