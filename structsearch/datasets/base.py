"""The one interface every dataset offers to training, evaluation and the metrics.

Images live on the dataset's device as tensors and batches are drawn by indexing (no DataLoader
workers, see docs/design.md section 7). Every image a dataset hands out is float32 in [-1, 1], shape
(B, C, H, W), because G ends in tanh.

Where files are looked for, in order: the ``data_dir`` argument (``--data-dir``), the environment
variable ``STRUCTSEARCH_DATA``, then ``~/.cache/structsearch/<name>/``; in each of the first two,
files may sit in a ``<name>/`` subfolder (looked at first) or directly in the folder.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from gan.latents import SPECS, LatentSpec

DATA_ENV = "STRUCTSEARCH_DATA"


class DatasetError(Exception):
    """User-facing error; its str() is a complete message the CLI prints before exiting 2."""


def cache_dir(name: str) -> Path:
    """Where downloads of dataset ``name`` go: ``~/.cache/structsearch/<name>/``."""
    return Path.home() / ".cache" / "structsearch" / name


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders to look in for dataset ``name``'s files, in order of preference."""
    dirs: list[Path] = []
    for root in (data_dir, os.environ.get(DATA_ENV) or None):
        if root is not None:
            root = Path(root).expanduser()
            dirs += [root / name, root]  # the named subfolder first: MNIST and Fashion-MNIST share file names
    dirs.append(cache_dir(name))
    return list(dict.fromkeys(dirs))  # drop repeats, keep order


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] -> float32 in [-1, 1]."""
    return images.float().div_(127.5).sub_(1.0)


class Dataset(ABC):
    """Images (and labels or factors) resident on ``device``.

    Subclasses set the class attributes and implement ``_train_images`` and ``test_images``;
    factor datasets (dsprites, shapes) also implement the factor methods, and datasets whose
    images have known factor values or labels implement the anchor methods (``anchor_codes``,
    ``_anchor_values``).
    """

    name: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    spec_name: str  # default latent spec, a key of gan.latents.SPECS
    n_train: int
    n_test: int
    n_classes: int | None = None
    factor_names: tuple[str, ...] = ()
    factor_sizes: tuple[int, ...] = ()
    true_edges: tuple[tuple[str, str], ...] | None = None
    has_pairs: bool = False  # offers intervention pairs: sample_pair_batch, test_pairs (shapes)

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)

    @property
    def spec(self) -> LatentSpec:
        """The default latent spec for this dataset."""
        return SPECS[self.spec_name]

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B, C, H, W) float32 training images in [-1, 1], uniform with replacement.

        ``generator`` must live on ``self.device``; the same generator state gives the same batch.
        """
        index = torch.randint(self.n_train, (batch_size,), generator=generator, device=self.device)
        return self._train_images(index)

    @abstractmethod
    def _train_images(self, index: torch.Tensor) -> torch.Tensor:
        """Training images at ``index`` (B,) (int64 on device) -> (B, C, H, W) in [-1, 1]."""

    @abstractmethod
    def test_images(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first ``n`` held-out images (all when None) in [-1, 1], and their labels (N,) or None."""

    def train_images_at(self, index: torch.Tensor) -> torch.Tensor:
        """Training images at ``index`` (B,) (int64 on the device) -> (B, C, H, W) in [-1, 1]."""
        return self._train_images(index)

    def train_images(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first ``n`` training images (all when None) in [-1, 1] and their labels (N,) or None:
        the fixed training split of datasets that have one (labelled ones: MNIST, Fashion-MNIST)."""
        raise DatasetError(f"{self.name}: no fixed training split to list; draw batches with sample()")

    # Factor datasets only ------------------------------------------------------------------------

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, n_factors) int64 factor classes drawn from the dataset's own factor distribution."""
        raise self._no_factors()

    def observations_from_factors(self, factors: np.ndarray) -> torch.Tensor:
        """Factor classes (n, n_factors) -> images (n, C, H, W) float32 in [-1, 1] on device."""
        raise self._no_factors()

    def test_factors(self, n: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """The first ``n`` held-out images and their factor classes (N, n_factors) int64."""
        raise self._no_factors()

    # Anchors: images whose codes are known (semi-supervision, docs/design.md section 8) -----------

    def anchor_codes(self, spec: LatentSpec) -> dict[int, int]:
        """The codes of ``spec`` this dataset can anchor, tied code i <-> its known value:
        ``{code position: column of _anchor_values}``; DatasetError when it can anchor none."""
        raise DatasetError(
            f"dataset {self.name!r} has neither factor values nor labels to anchor codes with; "
            "anchors (--anchor-labels) work on shapes, dsprites, mnist and fashion-mnist"
        )

    def _anchor_values(self, split: Literal["train", "test"], index: np.ndarray) -> np.ndarray:
        """(M, n_columns) known values of the training images at ``index`` (``train``) or of the
        test images at ``index`` (``test``, positions in :meth:`test_images`' order): a class for a
        column that anchors a categorical code, a value in [-1, 1] for one that anchors a continuous code."""
        raise NotImplementedError(f"{type(self).__name__} anchors codes but defines no _anchor_values")

    def anchor_targets(
        self, spec: LatentSpec, index: np.ndarray, split: Literal["train", "test"] = "train"
    ) -> tuple[torch.Tensor, tuple[bool, ...]]:
        """Q's targets for the images at ``index``: (targets (M, code_dim) float32 on the device, in
        Q's layout (a categorical code's known class one-hot, a continuous code's known value), mask:
        one bool per code, True for the anchored ones; the unanchored codes' columns are 0)."""
        codes = self.anchor_codes(spec)
        values = np.asarray(self._anchor_values(split, np.asarray(index, dtype=np.int64)), dtype=np.float64)
        columns = []
        for i, code in enumerate(spec.codes):
            if i not in codes:
                columns.append(torch.zeros(len(values), code.dim))
            elif code.kind == "categorical":
                classes = torch.from_numpy(values[:, codes[i]].astype(np.int64))
                columns.append(F.one_hot(classes, code.n_classes).float())
            else:
                columns.append(torch.from_numpy(values[:, codes[i]]).float().view(-1, 1))
        mask = tuple(i in codes for i in range(len(spec.codes)))
        return torch.cat(columns, 1).to(self.device), mask

    # Datasets with intervention pairs only (has_pairs) ---------------------------------------------

    def sample_pair_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, x') training pairs, each (B, C, H, W): x' is x after a perfect intervention on one
        unrecorded factor, the other exogenous noise held fixed."""
        raise self._no_pairs()

    def test_pairs(self, n: int | None = None):
        """The first ``n`` held-out intervention pairs (a ``shapes.Pairs``)."""
        raise self._no_pairs()

    def _no_pairs(self) -> DatasetError:
        return DatasetError(f"dataset {self.name!r} has no intervention pairs; use shapes")

    def _no_factors(self) -> DatasetError:
        return DatasetError(
            f"dataset {self.name!r} has no ground-truth factors; "
            "use a factor dataset (dsprites, shapes) for disentanglement metrics"
        )

    def _check_factors(self, factors: np.ndarray) -> np.ndarray:
        """Validate (n, n_factors) classes against ``factor_sizes``; return them as int64."""
        factors = np.asarray(factors)
        if factors.ndim != 2 or factors.shape[1] != len(self.factor_sizes):
            raise DatasetError(
                f"{self.name}: factors must have shape (n, {len(self.factor_sizes)}) "
                f"for {', '.join(self.factor_names)}; got {factors.shape}"
            )
        factors = factors.astype(np.int64, copy=False)
        bad = (factors < 0) | (factors >= np.asarray(self.factor_sizes))
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DatasetError(
                f"{self.name}: factor {self.factor_names[col]} has {self.factor_sizes[col]} classes, "
                f"got class {factors[row, col]} in row {row}"
            )
        return factors

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, image_shape={self.image_shape}, "
            f"n_train={self.n_train}, n_test={self.n_test}, device={str(self.device)!r})"
        )


def first_n(n: int | None, total: int) -> int:
    """How many of ``total`` items a ``test_*(n)`` or ``train_images(n)`` call returns."""
    if n is None:
        return total
    if n < 0:
        raise DatasetError(f"asked for {n} images; expected a count >= 0")
    return min(n, total)
