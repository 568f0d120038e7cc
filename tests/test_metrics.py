"""Known-answer tests for structsearch.metrics (disentanglement_lib's way: representations whose
scores are known), the classifier-feature FID, code matching and SHD."""

from __future__ import annotations

import functools
import importlib

import numpy as np
import pytest
import torch

from structsearch import metrics
from structsearch.metrics import (
    FeatureNet,
    beta_vae_score,
    dci,
    factor_vae_score,
    fid,
    frechet_distance,
    generate_factor_codes,
    load_or_train_feature_net,
    match_codes,
    mig,
    modularity,
    sap,
    shd,
    train_feature_net,
)

SIZES = (5, 6, 7, 8)
K = len(SIZES)
N_CODES = 450  # 300 train / 150 test, as 10,000 / 5,000


class IdentityFactors:
    """Independent uniform factors whose observation is the factor vector itself: (n, K, 1, 1)."""

    name = "identity-factors"
    factor_sizes = SIZES

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(k, size=n) for k in self.factor_sizes], axis=1)

    def observations_from_factors(self, factors: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(factors, dtype=torch.float32)[:, :, None, None]


def identity(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)  # (B, K): one continuous code per factor


def permuted(x: torch.Tensor) -> np.ndarray:
    return x.flatten(1).numpy()[:, [2, 0, 3, 1]]  # numpy output is accepted too


def rotated(x: torch.Tensor) -> torch.Tensor:
    """Codes 0 and 1 mixed by a 45 degree rotation: invertible, but each code reads two factors."""
    z = x.flatten(1).clone()
    z[:, 0], z[:, 1] = (x[:, 0, 0, 0] + x[:, 1, 0, 0]) / 2**0.5, (x[:, 0, 0, 0] - x[:, 1, 0, 0]) / 2**0.5
    return z


def noise(x: torch.Tensor) -> np.ndarray:
    return np.random.default_rng(len(x) + int(x.sum())).normal(size=(len(x), K))


def missing_one(x: torch.Tensor) -> torch.Tensor:
    z = x.flatten(1).clone()
    z[:, 2] = 0.0  # factor 2 is not represented: a constant code
    return z


REPRESENTATIONS = dict(identity=identity, permuted=permuted, rotated=rotated, noise=noise)


@pytest.fixture(scope="module")
def data() -> IdentityFactors:
    return IdentityFactors()


def codes_of(represent, data: IdentityFactors) -> tuple[np.ndarray, np.ndarray]:
    return generate_factor_codes(represent, data, N_CODES, seed=0)


@functools.cache
def array_scores(name: str) -> dict[str, float]:
    """The array-level scores of one representation of this file, computed once (DCI's
    gradient-boosted trees take seconds)."""
    z, f = codes_of(REPRESENTATIONS[name], IdentityFactors())
    scores = dict(mig=mig(z, f), sap=sap(z, f))
    scores.update({f"dci_{k}": v for k, v in dci(z, f).items()})
    scores.update({f"modularity_{k}": v for k, v in modularity(z, f).items()})
    return scores


def test_generate_factor_codes_shapes_and_identity(data):
    codes, factors = codes_of(identity, data)
    assert codes.shape == (N_CODES, K) and factors.shape == (N_CODES, K)
    np.testing.assert_array_equal(codes, factors)
    for j, k in enumerate(SIZES):
        assert set(np.unique(factors[:, j])) == set(range(k))


def test_identity_scores_near_one(data):
    s = array_scores("identity")
    assert s["mig"] > 0.9
    assert s["dci_disentanglement"] > 0.95 and s["dci_completeness"] > 0.95
    assert s["dci_informativeness_test"] > 0.95
    assert s["sap"] > 0.25
    assert s["modularity_modularity"] > 0.95 and s["modularity_explicitness_test"] > 0.95
    scores = metrics.all_disentanglement(identity, data, seed=0, scale=0.02, metrics=["factorvae", "betavae"])
    assert scores["factorvae"] == 1.0 and scores["factorvae_n_active_dims"] == K
    assert scores["betavae"] == 1.0


def test_all_disentanglement_keys(data, monkeypatch):
    protocols = importlib.import_module("structsearch.metrics.protocols")
    fake_dci = dict(disentanglement=0.1, completeness=0.2, informativeness_train=0.3, informativeness_test=0.4)
    monkeypatch.setattr(protocols, "dci", lambda *args: fake_dci)  # the real one is tested above
    scores = metrics.all_disentanglement(identity, data, seed=0, scale=0.01)
    assert {"mig", "sap", "modularity", "factorvae", "betavae"} <= set(scores)
    assert {f"dci_{k}": v for k, v in fake_dci.items()}.items() <= scores.items()
    assert {f"time/{m}" for m in metrics.ALL_METRICS} | {"time/codes"} <= set(scores)
    assert all(np.isfinite(v) for v in scores.values())
    subset = metrics.all_disentanglement(identity, data, seed=0, scale=0.01, metrics=["mig", "sap"])
    assert set(subset) == {"mig", "sap", "time/codes", "time/mig", "time/sap"}
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.all_disentanglement(identity, data, metrics=["nope"])


def test_permuted_codes_give_the_same_scores(data):
    assert array_scores("permuted") == pytest.approx(array_scores("identity"), abs=1e-6)
    kw = dict(n_train=200, n_eval=100, n_variance_estimate=500)
    assert factor_vae_score(permuted, data, 1, **kw) == factor_vae_score(identity, data, 1, **kw)
    assert beta_vae_score(permuted, data, 1, n_train=200, n_eval=100)["eval_accuracy"] == 1.0


def test_rotation_of_two_codes_drops_mig_and_dci():
    a, r = array_scores("identity"), array_scores("rotated")
    assert r["mig"] < a["mig"] - 0.3  # two of four factors lose their gap: MIG falls by about half
    assert r["dci_disentanglement"] < a["dci_disentanglement"] - 0.1


def test_noise_scores_near_zero(data):
    s = array_scores("noise")
    assert abs(s["mig"]) < 0.05 and abs(s["sap"]) < 0.05 and s["dci_disentanglement"] < 0.1
    fv = factor_vae_score(noise, data, 0, n_train=500, n_eval=500, n_variance_estimate=500)
    assert fv["eval_accuracy"] == pytest.approx(1 / K, abs=0.08)


def test_factor_vae_missing_factor_scores_k_minus_one_over_k(data):
    fv = factor_vae_score(missing_one, data, 0, n_train=500, n_eval=500, n_variance_estimate=500)
    assert fv["n_active_dims"] == K - 1  # the constant code is pruned (std < 0.05)
    assert fv["eval_accuracy"] == pytest.approx((K - 1) / K, abs=0.06)
    assert fv["train_accuracy"] == pytest.approx((K - 1) / K, abs=0.06)


def test_factor_vae_all_codes_collapsed_scores_zero(data):
    fv = factor_vae_score(lambda x: torch.zeros(len(x), K), data, 0, n_train=20, n_eval=20, n_variance_estimate=50)
    assert fv == dict(train_accuracy=0.0, eval_accuracy=0.0, n_active_dims=0)


# --- FID -------------------------------------------------------------------------------------


def test_frechet_distance_known_answers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 6)) @ rng.normal(size=(6, 6))
    mu, sigma = x.mean(axis=0), np.cov(x, rowvar=False)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    delta = np.arange(6) / 6
    assert frechet_distance(mu, sigma, mu + delta, sigma) == pytest.approx(delta @ delta)
    assert frechet_distance([0.0], [[1.0]], [0.0], [[4.0]]) == pytest.approx(1.0)  # 1 + 4 - 2*2
    shifts = [frechet_distance(mu, sigma, *_stats(x + s)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert shifts[0] < 1e-6 and np.all(np.diff(shifts) > 0)


def _stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.cov(x, rowvar=False)


def test_frechet_distance_singular_covariance_is_finite():
    x = np.random.default_rng(1).normal(size=(50, 20))
    x[:, 5:] = 0.0  # rank 5 of 20, as dead ReLU features give
    d = frechet_distance(*_stats(x), *_stats(x + 0.1))
    assert np.isfinite(d) and d == pytest.approx(0.1**2 * 20, abs=1e-3)  # the covariances cancel


def blocks(factors: np.ndarray) -> torch.Tensor:
    """8x8 images in [-1, 1], a bright 2x2 block at row 2 f0, column 2 f1: (n, 1, 8, 8)."""
    x = -torch.ones(len(factors), 1, 8, 8)
    for n, (r, c) in enumerate(factors):
        x[n, 0, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2] = 1.0
    return x


def test_fid_of_feature_net_is_zero_on_itself_and_grows_with_shift():
    torch.manual_seed(0)
    net = FeatureNet(1, [4]).eval()  # untrained: a fixed random feature map
    x = blocks(np.random.default_rng(0).integers(4, size=(400, 2)))
    assert fid(x, x, net, batch_size=128) == pytest.approx(0.0, abs=1e-5)
    shifted = [fid(x, x + s, net, batch_size=128) for s in (0.25, 0.5, 1.0)]
    assert shifted[0] > 1e-3 and np.all(np.diff(shifted) > 0)


def test_train_feature_net_learns_an_easy_task():
    f = np.random.default_rng(0).integers(4, size=(600, 2))
    net, acc = train_feature_net(blocks(f), f, n_steps=80, batch_size=64)
    assert acc > 0.95
    assert net(blocks(f[:3]))[1].shape == (3, 4)  # one head per factor
    _, acc_labels = train_feature_net(blocks(f), 4 * f[:, 0] + f[:, 1], n_steps=80, batch_size=64)
    assert acc_labels > 0.9  # (N,) labels: one 16-way head


class Blocks:
    """A tiny factor dataset with the interface load_or_train_feature_net reads."""

    name = "blocks"
    factor_sizes = (4, 4)
    n_classes = None

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(k, size=n) for k in self.factor_sizes], axis=1)

    def observations_from_factors(self, factors: np.ndarray) -> torch.Tensor:
        return blocks(factors)


class LabelledBlocks:
    """A labelled dataset whose test labels are a permutation of the true ones: a net trained on
    the test split learns them, a net trained on the training split scores near 0 on them."""

    name = "labelled-blocks"
    n_classes = 16

    def train_images(self, n: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        f = np.random.default_rng(0).integers(4, size=(n or 2000, 2))
        return blocks(f), 4 * f[:, 0] + f[:, 1]

    def test_images(self, n: int) -> tuple[torch.Tensor, np.ndarray]:
        f = np.random.default_rng(1).integers(4, size=(min(n, 500), 2))
        return blocks(f), (4 * f[:, 0] + f[:, 1] + 1) % 16


def test_labelled_feature_net_trains_on_the_training_split_and_tests_on_the_test_split(tmp_path):
    _, info = load_or_train_feature_net(LabelledBlocks(), tmp_path, n_steps=150, batch_size=64)
    assert info["path"].endswith("labelled-blocks-v2.pt")
    assert info["test_accuracy"] < 0.2  # the test labels are shifted by one: training never saw them


@pytest.mark.parametrize("dataset", [Blocks(), LabelledBlocks()], ids=["factors", "labels"])
def test_feature_net_cache_loads_instead_of_training(dataset, tmp_path, monkeypatch):
    net, info = load_or_train_feature_net(dataset, tmp_path, version="t", n_steps=40, batch_size=32)
    path = tmp_path / f"{dataset.name}-t.pt"
    assert not info["cached"] and path.exists() and 0 <= info["test_accuracy"] <= 1

    def no_training(*args, **kwargs):
        raise AssertionError("trained again instead of loading the cache")

    # the module, not the function ``metrics.fid`` that shadows it in the package namespace
    monkeypatch.setattr(importlib.import_module("structsearch.metrics.fid"), "fit", no_training)
    again, info2 = load_or_train_feature_net(dataset, tmp_path, version="t", n_steps=40)
    assert info2["cached"] and info2["test_accuracy"] == info["test_accuracy"]
    for (k, v), (k2, v2) in zip(net.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


# --- structure recovery ----------------------------------------------------------------------

TRUE = [("q1", "q2"), ("q1", "q3"), ("q2", "q3")]
MATCHING = [2, 0, 1]  # code 1 -> factor 3, code 2 -> factor 1, code 3 -> factor 2


def test_shd_zero_for_the_true_graph_under_a_permuted_matching():
    # factor a -> b appears as code(a) -> code(b), code(f) = the code matched to f
    trial = [("q2", "q3"), ("q2", "q1"), ("q3", "q1"), ("c1", "q1"), ("c2", "q2"), ("c3", "q3"), ("c1", "q2")]
    assert shd(trial, TRUE, MATCHING) == 0
    assert shd(trial, TRUE, [0, 1, 2]) > 0  # the matching matters
    assert shd(["q2->q3", "q2 -> q1", "q3->q1"], ["q1->q2", "q1->q3", "q2->q3"], MATCHING) == 0


def test_shd_counts_a_reversed_and_a_missing_edge():
    trial = [("q3", "q2"), ("q3", "q1"), ("c1", "q1")]  # q2->q3 reversed, q2->q1 missing
    assert shd(trial, TRUE, MATCHING) == 2
    assert shd(trial + [("q1", "q4")], TRUE, MATCHING + [-1]) == 3  # an unmatched code's edge is extra
    assert shd([], TRUE, MATCHING) == 3 and shd([], [], MATCHING) == 0


def test_match_codes_recovers_a_permutation_of_noisy_factors():
    rng = np.random.default_rng(0)
    factors = rng.integers(6, size=(500, 4))
    perm = [2, 0, 3, 1]  # code i reads factor perm[i], monotone but nonlinear and noisy
    codes = np.tanh(factors[:, perm] / 3.0) * np.array([1, -1, 1, -1]) + 0.1 * rng.normal(size=(500, 4))
    assert match_codes(codes, factors) == perm
    assert match_codes(codes, factors, method="pearson") == perm
    extra = np.column_stack([codes, rng.normal(size=500)])
    assert match_codes(extra, factors) == perm + [-1]
    assert sorted(match_codes(codes[:, :2], factors)) == sorted(perm[:2])
