"""Dataset registry: ``get_dataset(name, ...)`` returns a ``Dataset`` resident on a device.

    ds = get_dataset("mnist", data_dir="/data", device="cuda")
    x = ds.sample(64, torch.Generator(ds.device).manual_seed(0))  # (64, 1, 28, 28) in [-1, 1]

Names: see ``DATASETS``. Options beyond the common ones go to the dataset (``shapes``: graph,
n_train, n_test, n_levels, noise; ``dsprites``: source, n_test).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from structsearch.datasets import dsprites, mnist, shapes
from structsearch.datasets.base import DATA_ENV, Dataset, DatasetError, cache_dir, search_dirs

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "Dataset",
    "DatasetError",
    "cache_dir",
    "get_dataset",
    "list_datasets",
    "search_dirs",
]


@dataclass(frozen=True)
class _Entry:
    description: str
    load: Callable[..., Dataset]  # (data_dir, device, seed, download, **options) -> Dataset
    image_shape: tuple[int, int, int]
    n_train: int
    n_test: int
    targets: str  # labels or factors, for the listing
    where: Callable[[str | os.PathLike | None], str]  # data_dir -> where the files are, without reading them
    options: tuple[str, ...] = ()  # dataset-specific keyword options


def _load_idx(name: str) -> Callable[..., Dataset]:
    def load(data_dir, device, seed, download) -> Dataset:
        return mnist.IdxDataset(name, data_dir=data_dir, device=device, download=download)

    return load


def _load_dsprites(data_dir, device, seed, download, **options) -> Dataset:
    return dsprites.DSprites(data_dir=data_dir, device=device, seed=seed, download=download, **options)


def _load_shapes(data_dir, device, seed, download, **options) -> Dataset:
    return shapes.Shapes(device=device, seed=seed, **options)


def _factor_text(names: tuple[str, ...], sizes: tuple[int, ...]) -> str:
    return "factors " + ", ".join(f"{n}({k})" for n, k in zip(names, sizes, strict=True))


_ENTRIES: dict[str, _Entry] = {
    "mnist": _Entry(
        "MNIST handwritten digits, 28x28 grayscale, 10 classes",
        _load_idx("mnist"),
        (1, 28, 28),
        60000,
        10000,
        "labels (10 classes)",
        lambda data_dir: mnist.describe("mnist", data_dir),
    ),
    "fashion-mnist": _Entry(
        "Fashion-MNIST clothing images, 28x28 grayscale, 10 classes",
        _load_idx("fashion-mnist"),
        (1, 28, 28),
        60000,
        10000,
        "labels (10 classes)",
        lambda data_dir: mnist.describe("fashion-mnist", data_dir),
    ),
    "dsprites": _Entry(
        "dSprites 64x64 binary sprites, 5 ground-truth factors (DeepMind's file or rendered)",
        _load_dsprites,
        (1, 64, 64),
        dsprites.N_IMAGES,
        10000,
        _factor_text(dsprites.FACTOR_NAMES, dsprites.FACTOR_SIZES),
        dsprites.describe,
        ("source", "n_test"),
    ),
    "shapes": _Entry(
        "synthetic 32x32 rings whose 3 factors follow a known causal graph (default collider)",
        _load_shapes,
        (1, 32, 32),
        20000,
        2000,
        _factor_text(shapes.FACTOR_NAMES, (16, 16, 16)) + "; true graph q1->q3, q2->q3",
        lambda data_dir: "procedural",
        ("graph", "n_train", "n_test", "n_levels", "noise"),
    ),
}

DATASETS: dict[str, str] = {name: entry.description for name, entry in _ENTRIES.items()}


def _entry(name: str) -> _Entry:
    if name not in _ENTRIES:
        raise DatasetError(f"unknown dataset {name!r}; expected one of {', '.join(_ENTRIES)}")
    return _ENTRIES[name]


def get_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    download: bool = True,
    **options: Any,
) -> Dataset:
    """Load (or render) dataset ``name`` onto ``device``.

    Args:
        data_dir: first folder to look in (``--data-dir``); then $STRUCTSEARCH_DATA, then
            ~/.cache/structsearch/<name>/.
        seed: fixes whatever is random in the data (shapes' factors, dsprites' test subset).
        download: fetch missing MNIST / Fashion-MNIST files (dsprites only with source="deepmind").
        options: dataset-specific, e.g. ``graph="chain"`` for shapes.

    Raises:
        DatasetError: unknown name or option, files missing and not downloadable, bad checksum.
    """
    entry = _entry(name)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        accepted = ", ".join(entry.options) or "none"
        raise DatasetError(f"{name}: unknown option(s) {', '.join(unknown)}; accepted: {accepted}")
    return entry.load(data_dir, device, seed, download, **options)


def list_datasets(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """One row per dataset, from metadata and file lookups only (nothing is loaded or downloaded)."""
    return [
        {
            "name": name,
            "description": entry.description,
            "image_shape": entry.image_shape,
            "n_train": entry.n_train,
            "n_test": entry.n_test,
            "targets": entry.targets,
            "files": entry.where(data_dir),
        }
        for name, entry in _ENTRIES.items()
    ]
