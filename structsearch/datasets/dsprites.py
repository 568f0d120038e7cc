"""dSprites: 64x64 binary sprites on the full factor grid (737,280 images).

Factors (classes): shape 3 (square, ellipse, heart) x scale 6 (linspace(0.5, 1, 6)) x orientation
40 (linspace(0, 2 pi, 40), both ends included, so the first and last are the same picture) x posX
32 x posY 32 (linspace(0, 1, 32)). As in DeepMind's file the latent layout has a sixth, leading
factor "color" with one class, and the flat index of an image is

    index = classes . (737280, 245760, 40960, 1024, 32, 1)    (color, shape, ..., posY fastest)

The metrics see the five real factors. Two sources of pixels:

- DeepMind's ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` when it is in the data folder
  (md5-checked), kept resident as packed bits (737280 x 64 x 8 bytes = 377 MB) and unpacked per
  batch; downloaded from GitHub only when asked (``source="deepmind"`` and ``download=True``).
- Otherwise a procedural renderer with the same factor grid, run per batch with torch on the
  dataset's device (nothing of size 737,280 x 4096 is ever materialized). Sprite centre =
  16 + 32 * pos pixels (posX to the right, posY down), so sprites stay in the central half and
  never touch the border; rotation is counter-clockwise about the shape's centre; pixels are 1
  where the pixel centre lies inside the shape. At orientation 0 the ellipse is wide (2:1) and the
  heart points down.

Anchors (``--anchor-labels``): code i is tied to factor i where that is simple: a categorical(3)
c1 to the shape's class, continuous c2, c4 and c5 to the values in [-1, 1] of scale, posX and
posY. Orientation (c3) stays unanchored: it is circular (0 and 2 pi are one picture) and the
square's and ellipse's symmetries give one picture several angles, so no value in [-1, 1] is its own.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from gan.latents import LatentSpec
from structsearch.datasets.base import Dataset, DatasetError, cache_dir, first_n, search_dirs
from structsearch.datasets.download import fetch

log = logging.getLogger(__name__)

FILE_NAME = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
FILE_MD5 = "7da33b31b13a06f4b04a70402ce90c2e"
FILE_URL = f"https://github.com/deepmind/dsprites-dataset/raw/master/{FILE_NAME}"

FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (3, 6, 40, 32, 32)
LATENT_SIZES = (1, *FACTOR_SIZES)  # with DeepMind's constant "color" first
LATENT_STRIDES = (737280, 245760, 40960, 1024, 32, 1)
N_IMAGES = 737280
SIZE = 64

SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = np.linspace(0.0, 2 * np.pi, 40)
POSITIONS = np.linspace(0.0, 1.0, 32)

# Shape geometry, in units of the largest radius at scale 1 (13 px: a rotated sprite at an
# extreme position then spans pixels 3..29 or 35..61). Per shape: the semi-axes (x, y) that map
# the sprite onto its unit shape, and a shift along y. The square's half side is 1/sqrt(2), so
# its corners reach radius 1; the ellipse is 2:1, wide at orientation 0. The heart
# (x^2 + y^2 - 1)^3 <= x^2 y^3 spans x in [-1.14, 1.14], y in [-1, 1.236]: it is shifted so its
# bounding box is centred (the point it rotates about) and shrunk by 1.337, its farthest point.
RADIUS_PX = 13.0
SHAPE_FRAMES = (
    (1 / math.sqrt(2), 1 / math.sqrt(2), 0.0),  # square
    (1.0, 0.5, 0.0),  # ellipse
    (1 / 1.337, 1 / 1.337, 0.118),  # heart
)
WINDOW = 28  # side of the patch evaluated per sprite: covers RADIUS_PX around any centre
RENDER_CHUNK = 4096  # sprites per rendering pass, bounds memory at ~13 MB per intermediate


def factors_to_index(factors: np.ndarray) -> np.ndarray:
    """(n, 5) or (n, 6) factor classes -> (n,) flat indices into DeepMind's array."""
    factors = np.asarray(factors, dtype=np.int64)
    strides = np.asarray(LATENT_STRIDES[-factors.shape[1] :])
    return factors @ strides


def index_to_factors(index: np.ndarray) -> np.ndarray:
    """(n,) flat indices -> (n, 5) classes of shape, scale, orientation, posX, posY."""
    index = np.asarray(index, dtype=np.int64)
    return np.stack([(index // s) % k for s, k in zip(LATENT_STRIDES[1:], FACTOR_SIZES, strict=True)], axis=1)


def _index_to_factors_torch(index: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [torch.div(index, s, rounding_mode="floor") % k for s, k in zip(LATENT_STRIDES[1:], FACTOR_SIZES, strict=True)],
        dim=1,
    )


def render(factors: torch.Tensor) -> torch.Tensor:
    """Procedural sprites: (B, 5) int64 classes -> (B, 1, 64, 64) float32 in {-1, 1}, on factors' device."""
    out = torch.full((len(factors), 1, SIZE, SIZE), -1.0, device=factors.device)
    for start in range(0, len(factors), RENDER_CHUNK):
        _render_chunk(factors[start : start + RENDER_CHUNK], out[start : start + RENDER_CHUNK, 0])
    return out


def _render_chunk(factors: torch.Tensor, canvas: torch.Tensor) -> None:
    """Draw sprites (B, 5) into ``canvas`` (B, 64, 64), which holds -1: 1 where a pixel centre is inside.

    Only a WINDOW x WINDOW patch around each sprite is evaluated (a sprite reaches at most
    RADIUS_PX from its centre). Each pixel is mapped into its shape's own frame, where the shape
    is a unit square, a unit disc or the unit heart; sprites are sorted by shape so that each
    shape's test runs on one contiguous slice.
    """
    device = factors.device
    order = torch.argsort(factors[:, 0], stable=True)
    factors = factors[order]
    grid = lambda values: torch.as_tensor(values, dtype=torch.float32, device=device)  # noqa: E731
    centre_x = (16 + 32 * grid(POSITIONS)[factors[:, 3]]).view(-1, 1, 1)
    centre_y = (16 + 32 * grid(POSITIONS)[factors[:, 4]]).view(-1, 1, 1)
    # Pixel -> shape frame: rotate back by theta, divide by the radius and the shape's own axes.
    theta = grid(ORIENTATIONS)[factors[:, 2]].view(-1, 1, 1)
    radius = (grid(SCALES)[factors[:, 1]] * RADIUS_PX).view(-1, 1, 1)
    shape = factors[:, 0].contiguous()
    axis_x, axis_y, shift_y = (grid(SHAPE_FRAMES)[shape, i].view(-1, 1, 1) for i in range(3))
    # First pixel of each patch: every pixel centre within RADIUS_PX of the sprite's centre is inside.
    col0 = torch.floor(centre_x - RADIUS_PX - 0.5)
    row0 = torch.floor(centre_y - RADIUS_PX - 0.5)
    offset = torch.arange(WINDOW, dtype=torch.float32, device=device)
    u = col0 + offset.view(1, 1, -1) + 0.5 - centre_x  # (B, 1, W) right of the centre, pixels
    v = centre_y - (row0 + offset.view(1, -1, 1) + 0.5)  # (B, W, 1) up (rows grow downwards)
    cos, sin = torch.cos(theta) / radius, torch.sin(theta) / radius
    x = (cos / axis_x) * u + (sin / axis_x) * v  # (B, W, W)
    y = (cos / axis_y) * v - (sin / axis_y) * u + shift_y
    inside = torch.empty(x.shape, dtype=torch.bool, device=device)
    bounds = torch.searchsorted(shape, torch.arange(4, device=device)).tolist()
    for k, test in enumerate((_in_square, _in_disc, _in_heart)):
        part = slice(bounds[k], bounds[k + 1])
        inside[part] = test(x[part], y[part])
    rows = row0.long() + offset.long().view(1, -1, 1)
    cols = col0.long() + offset.long().view(1, 1, -1)
    canvas[order.view(-1, 1, 1), rows, cols] = inside.float() * 2 - 1


def _in_square(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.maximum(x.abs(), y.abs()) <= 1


def _in_disc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x * x + y * y <= 1


def _in_heart(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(x^2 + y^2 - 1)^3 <= x^2 y^3: lobes up, the tip at (0, -1)."""
    x2, y2 = x * x, y * y
    r = x2 + y2 - 1
    return r * r * r <= x2 * y2 * y


# DeepMind's file --------------------------------------------------------------------------------


def find_file(data_dir: str | os.PathLike | None = None) -> Path | None:
    """DeepMind's npz in the first data folder that has it (no reading), or None."""
    for folder in search_dirs("dsprites", data_dir):
        if (folder / FILE_NAME).is_file():
            return folder / FILE_NAME
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_md5(path: Path) -> None:
    digest = _md5(path)
    if digest != FILE_MD5:
        raise DatasetError(
            f"{path}: checksum mismatch, refusing to use it: md5 {digest}, expected {FILE_MD5} "
            f"(DeepMind's {FILE_NAME}); delete or replace it"
        )


def read_packed_images(path: str | os.PathLike, chunk_rows: int = 16384) -> np.ndarray:
    """The ``imgs`` array of a dSprites npz as packed bits, (N, H, W / 8) uint8, read in chunks.

    Reading the 3 GB uint8 array at once is avoided: rows stream out of the zip member.
    """
    with zipfile.ZipFile(path) as archive, archive.open("imgs.npy") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        if fortran or dtype != np.uint8 or len(shape) != 3:
            raise DatasetError(f"{path}: imgs is {dtype} {shape} (fortran={fortran}); expected uint8 (N, 64, 64)")
        n, h, w = shape
        packed = np.empty((n, h, w // 8), dtype=np.uint8)
        for start in range(0, n, chunk_rows):
            rows = min(chunk_rows, n - start)
            data = np.frombuffer(f.read(rows * h * w), dtype=np.uint8).reshape(rows, h, w)
            packed[start : start + rows] = np.packbits(data > 0, axis=-1)
    return packed


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    """(B, H, W / 8) uint8 packed bits -> (B, 1, H, W) float32 in {-1, 1}."""
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1  # (B, H, W/8, 8), most significant bit first
    return bits.flatten(2).unsqueeze(1).float() * 2 - 1


# The dataset ------------------------------------------------------------------------------------


class DSprites(Dataset):
    """dSprites, rendered per batch (or unpacked from DeepMind's file) on ``device``.

    Options: ``source`` ("auto": the file if found, else procedural; "deepmind": the file,
    downloaded if missing and ``download``; "procedural"), ``n_test`` (size of the test sample:
    a seeded random subset of the grid; dSprites has no split, training draws from the whole grid).
    """

    name = "dsprites"
    image_shape = (1, SIZE, SIZE)
    spec_name = "dsprites"
    factor_names = FACTOR_NAMES
    factor_sizes = FACTOR_SIZES
    n_train = N_IMAGES

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        download: bool = True,
        source: Literal["auto", "deepmind", "procedural"] = "auto",
        n_test: int = 10_000,
    ) -> None:
        super().__init__(device)
        if not 0 <= n_test <= N_IMAGES:
            raise DatasetError(f"dsprites: n_test must be in 0..{N_IMAGES}, got {n_test}")
        if source not in ("auto", "deepmind", "procedural"):
            raise DatasetError(f"dsprites: unknown source {source!r}; expected auto, deepmind or procedural")
        path = None if source == "procedural" else find_file(data_dir)
        if path is None and source == "deepmind":
            path = self._download(data_dir, download)
        self.path = path
        self._packed: torch.Tensor | None = None
        if path is not None:
            _check_md5(path)
            packed = read_packed_images(path)
            if packed.shape != (N_IMAGES, SIZE, SIZE // 8):
                raise DatasetError(f"{path}: {len(packed)} images of {packed.shape[1:]}; expected {N_IMAGES}")
            self._packed = torch.from_numpy(packed).to(self.device)
            log.info("dsprites: DeepMind's images from %s", path)
        self.n_test = n_test
        self._test = np.random.default_rng(seed).choice(N_IMAGES, size=n_test, replace=False)

    @staticmethod
    def _download(data_dir: str | os.PathLike | None, download: bool) -> Path:
        folder = Path(data_dir).expanduser() if data_dir is not None else cache_dir("dsprites")
        how = (
            f"Put {FILE_NAME} (md5 {FILE_MD5}, from {FILE_URL}) in {folder} or pass --data-dir FOLDER, "
            "or use source='auto' / 'procedural' for the procedural renderer"
        )
        if not download:
            raise DatasetError(f"dsprites: DeepMind's file not found and download=False. {how}")
        try:
            return fetch(FILE_URL, cache_dir("dsprites") / FILE_NAME, check=_check_md5)
        except (OSError, DatasetError) as err:
            raise DatasetError(f"dsprites: DeepMind's file not found and the download failed ({err}). {how}") from None

    @property
    def source(self) -> str:
        """Where the pixels come from: the npz path or "procedural"."""
        return str(self.path) if self.path is not None else "procedural"

    def _images_at(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) flat indices on device -> (B, 1, 64, 64) float32 in {-1, 1}."""
        if self._packed is not None:
            return _unpack(self._packed[index])
        return render(_index_to_factors_torch(index))

    def _train_images(self, index: torch.Tensor) -> torch.Tensor:
        return self._images_at(index)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 5) classes, each factor uniform and independent (the grid is complete)."""
        return np.stack([rng.integers(k, size=n) for k in FACTOR_SIZES], axis=1).astype(np.int64)

    def observations_from_factors(self, factors: np.ndarray) -> torch.Tensor:
        index = factors_to_index(self._check_factors(factors))
        return self._images_at(torch.from_numpy(index).to(self.device))

    def test_factors(self, n: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        index = self._test[: first_n(n, self.n_test)]
        return self._images_at(torch.from_numpy(index).to(self.device)), index_to_factors(index)

    def test_images(self, n: int | None = None) -> tuple[torch.Tensor, None]:
        return self.test_factors(n)[0], None

    def anchor_codes(self, spec: LatentSpec) -> dict[int, int]:
        kinds = {0: "categorical", 1: "continuous", 3: "continuous", 4: "continuous"}  # orientation: never
        codes = {
            i: i
            for i, code in enumerate(spec.codes[: len(FACTOR_NAMES)])
            if kinds.get(i) == code.kind and (code.kind == "continuous" or code.n_classes == FACTOR_SIZES[0])
        }
        if not codes:
            raise DatasetError(
                f"dsprites anchors a categorical(3) c1 with the shape and continuous c2, c4, c5 with scale, "
                f"posX, posY; codes {spec.text()} have none of these"
            )
        return codes

    def _anchor_values(self, split: Literal["train", "test"], index: np.ndarray) -> np.ndarray:
        flat = index if split == "train" else self._test[index]  # training draws from the whole grid
        classes = index_to_factors(flat).astype(np.float64)  # (M, 5)
        values = -1 + 2 * classes / (np.asarray(FACTOR_SIZES) - 1)
        values[:, 0] = classes[:, 0]  # the shape is a class
        return values


def describe(data_dir: str | os.PathLike | None = None) -> str:
    """DeepMind's file if present (no reading), else "procedural"."""
    path = find_file(data_dir)
    return str(path) if path is not None else "procedural"
