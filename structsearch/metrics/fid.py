"""A classifier-feature FID: Frechet distance in the features of a small CNN trained per dataset.

FID (Heusel et al. 2017) compares Gaussians fitted to features of real and generated images:

    FID = ||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)).

The standard FID uses Inception-v3 pool3 features; no Inception weights can be downloaded here,
so the features are the penultimate layer (``feature_dim`` = 128, after ReLU) of
:class:`FeatureNet`, a 2-conv + FC classifier trained on the dataset's labels or ground-truth
factors. The numbers are therefore comparable only within one dataset and one feature-net
version, never with published FIDs. Use ``FID_N_SAMPLES`` images per side (fewer bias FID up).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg
from torch import nn

log = logging.getLogger(__name__)

FID_N_SAMPLES = 10_000
DEFAULT_CACHE_DIR = Path("~/.cache/structsearch/fid")
# Feature-net versions, part of the cache file name. labels v2: trained on the training split
# (v1 trained on the test images that FID then compares against).
VERSIONS = {"factors": "v1", "labels": "v2"}
Batch = tuple[torch.Tensor, torch.Tensor]  # images (B, C, H, W), targets (B, n_heads) int64


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)), as pytorch-fid computes it.

    A singular product (non-finite sqrtm) is retried with ``eps`` added to both diagonals; an
    imaginary part from round-off is dropped, a large one (> 1e-3 on the diagonal) is an error.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # Singular covariances are common (dead ReLU features): the checks below handle them.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            log.warning("FID: singular covariance product; adding %g to the diagonals", eps)
            offset = np.eye(len(sigma1)) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm has an imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


class FeatureNet(nn.Module):
    """Conv(4, s2) -> ReLU -> Conv(4, s2) -> ReLU -> AvgPool to 4x4 -> FC -> ReLU = features,
    then one linear softmax head per target (a label, or each ground-truth factor).

    Any image size works: (B, C, H, W) -> features (B, feature_dim), logits [(B, k) per head].
    """

    def __init__(self, in_channels: int, head_sizes: Sequence[int], feature_dim: int = 128, width: int = 32):
        super().__init__()
        self.config = dict(in_channels=in_channels, head_sizes=list(head_sizes), feature_dim=feature_dim, width=width)
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim),
            nn.ReLU(),
        )
        self.heads = nn.ModuleList(nn.Linear(feature_dim, k) for k in head_sizes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.features(x)
        return [head(h) for head in self.heads]


def _as_2d(targets: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(targets).to("cpu", torch.int64)  # numpy, or a tensor on any device
    return t[:, None] if t.ndim == 1 else t  # (N, n_heads)


@torch.no_grad()
def accuracy(net: FeatureNet, images: torch.Tensor, targets: np.ndarray | torch.Tensor, batch_size: int = 500) -> float:
    """Mean over heads of the classification accuracy."""
    net.eval()
    device = next(net.parameters()).device
    t = _as_2d(targets)
    correct = torch.zeros(t.shape[1])
    for i in range(0, len(images), batch_size):
        logits = net(images[i : i + batch_size].to(device))
        pred = torch.stack([lg.argmax(dim=1).cpu() for lg in logits], dim=1)
        correct += (pred == t[i : i + batch_size]).sum(dim=0)
    return float((correct / len(images)).mean())


def fit(net: FeatureNet, next_batch: Callable[[], Batch], n_steps: int, lr: float = 1e-3) -> FeatureNet:
    """Adam on the sum of the heads' cross-entropies, one ``next_batch()`` per step."""
    device = next(net.parameters()).device
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for step in range(n_steps):
        x, t = next_batch()
        logits = net(x.to(device))
        loss = sum(F.cross_entropy(lg, t[:, h].to(device)) for h, lg in enumerate(logits))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 500 == 0 or step == n_steps - 1:
            log.info("feature net step %d/%d loss %.4f", step + 1, n_steps, loss.item())
    net.eval()
    return net


def train_feature_net(
    images: torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    n_steps: int = 2000,
    batch_size: int = 128,
    lr: float = 1e-3,
    test_fraction: float = 0.1,
    seed: int = 0,
    device: str | torch.device = "cpu",
    test: tuple[torch.Tensor, np.ndarray | torch.Tensor] | None = None,
) -> tuple[FeatureNet, float]:
    """Train a :class:`FeatureNet` on ``images`` (N, C, H, W) and ``targets``: (N,) int labels or
    (N, n_factors) int factor classes (one head per column). Returns the net (eval mode) and its
    accuracy (mean over heads) on ``test`` (images, targets) when given, else on a held-out
    ``test_fraction`` of the rows."""
    t = _as_2d(targets)
    rng = np.random.default_rng(seed)
    order = torch.as_tensor(rng.permutation(len(images)), device=images.device)
    n_test = 0 if test is not None else max(1, int(len(images) * test_fraction))
    held_out, train = order[:n_test], order[n_test:]

    def next_batch() -> Batch:
        idx = train[torch.as_tensor(rng.integers(len(train), size=batch_size), device=images.device)]
        return images[idx], t[idx.cpu()]

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head_sizes = [int(k) + 1 for k in t.max(dim=0).values]
        net = FeatureNet(images.shape[1], head_sizes).to(device)
    fit(net, next_batch, n_steps, lr)
    x_test, t_test = test if test is not None else (images[held_out], t[held_out.cpu()])
    acc = accuracy(net, x_test, t_test)
    log.info("feature net: test accuracy %.4f on %d images", acc, len(x_test))
    return net, acc


@torch.no_grad()
def features(images: torch.Tensor, net: FeatureNet, batch_size: int = 500) -> torch.Tensor:
    """The net's features (N, D) of ``images``, in batches on the net's device, eval mode; on the CPU."""
    net.eval()
    device = next(net.parameters()).device
    return torch.cat(
        [net.features(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)]
    )


def feature_stats(images: torch.Tensor, net: FeatureNet, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of the net's features of ``images``, float64."""
    f = features(images, net, batch_size).double().numpy()
    return f.mean(axis=0), np.cov(f, rowvar=False)


def fid(real_images: torch.Tensor, fake_images: torch.Tensor, net: FeatureNet, batch_size: int = 500) -> float:
    """Classifier-feature FID between two image sets (N, C, H, W) in the same value range as the
    net's training images ([-1, 1]); pass ``FID_N_SAMPLES`` of each for comparable numbers."""
    return frechet_distance(*feature_stats(real_images, net, batch_size), *feature_stats(fake_images, net, batch_size))


def _factor_batches(dataset: Any, batch_size: int, rng: np.random.Generator) -> Callable[[], Batch]:
    def next_batch() -> Batch:
        f = np.asarray(dataset.sample_factors(batch_size, rng), dtype=np.int64)
        return dataset.observations_from_factors(f).float(), torch.as_tensor(f)

    return next_batch


def load_or_train_feature_net(
    dataset: Any,
    cache_dir: str | Path | None = None,
    version: str | None = None,
    device: str | torch.device = "cpu",
    n_steps: int = 2000,
    batch_size: int = 128,
    seed: int = 0,
) -> tuple[FeatureNet, dict[str, Any]]:
    """The dataset's feature net from ``cache_dir/<name>-<version>.pt``, trained and saved if absent.

    ``cache_dir`` defaults to ``~/.cache/structsearch/fid``; the version (default
    :data:`VERSIONS`) changes whenever the architecture or the training does, since FIDs from
    different nets are not comparable.

    Factor datasets (with ``factor_sizes``) train one head per factor on fresh samples every
    step and test on 2,000 more. Labelled datasets (``n_classes``) train on their training split
    (``train_images()``) and test on ``test_images(10_000)``, the images FID compares against.
    Returns the net (eval mode, on ``device``) and info: test_accuracy, path, cached.
    """
    kind = "factors" if getattr(dataset, "factor_sizes", None) else "labels"
    version = version or VERSIONS[kind]
    path = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / f"{dataset.name}-{version}.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = FeatureNet(**saved["config"])
        net.load_state_dict(saved["state_dict"])
        log.info("feature net loaded from %s (test accuracy %.4f)", path, saved["test_accuracy"])
        return net.to(device).eval(), dict(test_accuracy=saved["test_accuracy"], path=str(path), cached=True)
    if kind == "factors":
        rng = np.random.default_rng(seed)
        x_test, t_test = _factor_batches(dataset, 2_000, rng)()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = FeatureNet(x_test.shape[1], list(dataset.factor_sizes)).to(device)
        fit(net, _factor_batches(dataset, batch_size, rng), n_steps)
        acc = accuracy(net, x_test, t_test)
    elif getattr(dataset, "n_classes", None):
        images, labels = dataset.train_images()
        test = dataset.test_images(10_000)
        net, acc = train_feature_net(images.float(), labels, n_steps, batch_size, seed=seed, device=device, test=test)
    else:
        raise ValueError(f"dataset {dataset.name!r} has neither factor_sizes nor n_classes to train a feature net on")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(dict(state_dict=state, config=net.config, test_accuracy=acc, n_steps=n_steps), tmp)
    os.replace(tmp, path)  # atomic: a parallel worker never reads half a file
    log.info("feature net for %s trained (test accuracy %.4f), saved to %s", dataset.name, acc, path)
    return net, dict(test_accuracy=acc, path=str(path), cached=False)
