"""MNIST and Fashion-MNIST: 28x28 grayscale, 60,000 train + 10,000 test, 10 classes.

Files are the four standard IDX files, raw or gzipped, found as described in ``base`` or
downloaded into ``~/.cache/structsearch/<name>/``. Every file is checked against the sha256 of its
decompressed content (gzip output differs between compressors, the content does not) at every
load. Nothing caches the check: a cache keyed on size and mtime let a tampered file with both
restored load unchecked, and the hash (0.03 s for the train images) costs a tenth of the
decompression that loading does anyway.

The images stay resident on the device as uint8 (47 MB for the train split) and are converted to
float32 in [-1, 1] per batch.

Anchors (``--anchor-labels``): the label anchors the first categorical code, which must have 10
classes (class k of the code is digit or garment k); every other code stays unanchored.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from gan.latents import LatentSpec
from structsearch.datasets.base import Dataset, DatasetError, cache_dir, first_n, search_dirs, to_unit_range
from structsearch.datasets.download import fetch_first
from structsearch.datasets.idx import parse_idx, read_bytes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdxFile:
    name: str  # without .gz
    sha256: str  # of the decompressed content
    shape: tuple[int, ...]


@dataclass(frozen=True)
class IdxSource:
    """One IDX dataset: its files (train images, train labels, test images, test labels) and mirrors."""

    name: str
    files: tuple[IdxFile, IdxFile, IdxFile, IdxFile]
    mirrors: tuple[str, ...]  # base URLs serving <file>.gz


def _standard_files(sha256: tuple[str, str, str, str]) -> tuple[IdxFile, IdxFile, IdxFile, IdxFile]:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    shapes = ((60000, 28, 28), (60000,), (10000, 28, 28), (10000,))
    return tuple(IdxFile(n, s, shape) for n, s, shape in zip(names, sha256, shapes, strict=True))  # type: ignore[return-value]


SOURCES: dict[str, IdxSource] = {
    # sha256 of the raw (uncompressed) files of the published MNIST release.
    "mnist": IdxSource(
        "mnist",
        _standard_files(
            (
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
            )
        ),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    ),
    # Checksums computed from the files in Debian's package dataset-fashion-mnist
    # (0.0~git20200523.55506a9-1), decompressed; they agree with other projects' pinned values.
    "fashion-mnist": IdxSource(
        "fashion-mnist",
        _standard_files(
            (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            )
        ),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    ),
}


def _find_in(folder: Path, file: IdxFile) -> Path | None:
    for candidate in (folder / file.name, folder / f"{file.name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_files(source: IdxSource, data_dir: str | os.PathLike | None = None) -> list[Path] | None:
    """The four files from the first folder that has all of them, or None.

    MNIST and Fashion-MNIST share file names and sizes, so a folder whose smallest file (the
    10 kB test labels) is known to be the OTHER dataset's is skipped; nothing else is read here.
    """
    for folder in search_dirs(source.name, data_dir):
        found = [_find_in(folder, f) for f in source.files]
        if all(found) and not _belongs_elsewhere(found[-1], source):  # type: ignore[arg-type]
            return found  # type: ignore[return-value]
    return None


def _belongs_elsewhere(labels: Path, source: IdxSource) -> bool:
    try:
        digest = hashlib.sha256(read_bytes(labels)).hexdigest()
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile):
        return False  # unreadable: let loading report it
    return any(f.sha256 == digest for other in SOURCES.values() if other is not source for f in other.files)


# Verification -----------------------------------------------------------------------------------


def load_verified(path: Path, file: IdxFile, dataset: str) -> np.ndarray:
    """Read ``path``, refuse it unless its content has the pinned sha256 and shape, parse it."""
    data = read_bytes(path)
    digest = hashlib.sha256(data).hexdigest()  # of the bytes parsed below, every time
    if digest != file.sha256:
        raise DatasetError(
            f"{path}: checksum mismatch, refusing to use it: sha256 of its content is {digest}, "
            f"expected {file.sha256} ({dataset}'s {file.name}){_whose(digest)}; replace the file or use --data-dir"
        )
    array = parse_idx(data, str(path))
    if array.shape != file.shape:
        raise DatasetError(f"{path}: shape {array.shape}, expected {file.shape}")
    return array


def _whose(digest: str) -> str:
    """ ", which is <other dataset>'s <file>" when the content is a known file of another dataset."""
    for source in SOURCES.values():
        for f in source.files:
            if f.sha256 == digest:
                return f"; this file is {source.name}'s {f.name}"
    return ""


# Download ---------------------------------------------------------------------------------------


def _checker(file: IdxFile) -> Callable[[Path], None]:
    """A check for ``fetch``: the downloaded .gz must decompress to the pinned content."""

    def check(path: Path) -> None:
        try:
            digest = hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest()
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise OSError(f"not a valid gzip file ({err})") from None
        if digest != file.sha256:
            raise OSError(f"sha256 of the content is {digest}, expected {file.sha256}")

    return check


def download_files(source: IdxSource, folder: Path) -> None:
    """Download the files of ``source`` that ``folder`` lacks; OSError naming what failed."""
    for file in source.files:
        if _find_in(folder, file) is None:
            urls = [f"{mirror}{file.name}.gz" for mirror in source.mirrors]
            fetch_first(urls, folder / f"{file.name}.gz", _checker(file))


def missing_error(source: IdxSource, folder: Path, reason: str) -> DatasetError:
    files = "\n".join(f"  {f.name}[.gz]  sha256 {f.sha256} (of the decompressed file)" for f in source.files)
    return DatasetError(
        f"{source.name} not found: {reason}.\n"
        f"Put these files (raw or .gz) in {folder}, or pass --data-dir FOLDER (data_dir=...) "
        f"naming a folder that holds them:\n{files}"
    )


# The dataset ------------------------------------------------------------------------------------


class IdxDataset(Dataset):
    """MNIST-like data: uint8 images and int64 labels resident on ``device``."""

    image_shape = (1, 28, 28)
    spec_name = "mnist"
    n_classes = 10

    def __init__(
        self,
        name: str,
        data_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        download: bool = True,
    ) -> None:
        super().__init__(device)
        self.name = name
        source = SOURCES[name]
        paths = find_files(source, data_dir)
        if paths is None:
            paths = self._fetch(source, data_dir, download)
        self.folder = paths[0].parent
        arrays = [load_verified(p, f, name) for p, f in zip(paths, source.files, strict=True)]
        log.info("%s loaded from %s", name, self.folder)
        self._train_x, self._train_y, self._test_x, self._test_y = (
            torch.from_numpy(a.copy()).to(self.device) for a in arrays
        )
        self._train_y, self._test_y = self._train_y.long(), self._test_y.long()
        self.n_train, self.n_test = len(self._train_x), len(self._test_x)

    @staticmethod
    def _fetch(source: IdxSource, data_dir: str | os.PathLike | None, download: bool) -> list[Path]:
        """Download into the cache folder, or explain which files to put where."""
        folder = Path(data_dir).expanduser() if data_dir is not None else cache_dir(source.name)
        if not download:
            looked = ", ".join(str(d) for d in search_dirs(source.name, data_dir))
            raise missing_error(source, folder, f"no folder has all four files (looked in {looked}) and download=False")
        try:
            download_files(source, cache_dir(source.name))
        except OSError as err:
            raise missing_error(source, folder, f"download failed: {err}") from None
        paths = find_files(source, data_dir)
        assert paths is not None, "downloaded files not found"
        return paths

    def _train_images(self, index: torch.Tensor) -> torch.Tensor:
        return to_unit_range(self._train_x[index].unsqueeze(1))

    def test_images(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n = first_n(n, self.n_test)
        return to_unit_range(self._test_x[:n].unsqueeze(1)), self._test_y[:n]

    def train_images(self, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``n`` training images (all when None) in [-1, 1], and their labels."""
        n = first_n(n, len(self._train_x))
        return to_unit_range(self._train_x[:n].unsqueeze(1)), self._train_y[:n]

    def anchor_codes(self, spec: LatentSpec) -> dict[int, int]:
        first = next((i for i, code in enumerate(spec.codes) if code.kind == "categorical"), None)
        if first is None or spec.codes[first].n_classes != self.n_classes:
            got = f"have {spec.codes[first]} first" if first is not None else "have none"
            raise DatasetError(
                f"{self.name} anchors the first categorical code with the label, which needs a "
                f"categorical({self.n_classes}) code; codes {spec.text()} {got}"
            )
        return {first: 0}

    def _anchor_values(self, split: Literal["train", "test"], index: np.ndarray) -> np.ndarray:
        labels = self._train_y if split == "train" else self._test_y
        return labels[torch.from_numpy(index).to(self.device)].cpu().numpy().reshape(-1, 1)

    @property
    def train_labels(self) -> torch.Tensor:
        """(n_train,) int64 labels of the training split."""
        return self._train_y


def describe(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """Where the files of ``name`` are, without reading them."""
    paths = find_files(SOURCES[name], data_dir)
    if paths is None:
        folder = Path(data_dir).expanduser() if data_dir is not None else cache_dir(name)
        return f"missing: {folder}"
    return str(paths[0].parent)
