"""Latent traversals: image grids that vary one code while everything else stays fixed.

A traversal grid has one row per random draw of the noise z and of the OTHER codes, and one
column per value of the traversed code: a continuous code runs over ``linspace(-1, 1, 10)``
(its prior's range), a categorical code over its k classes. Reading along a row shows what
the code controls; reading down a column shows that the effect holds for other draws.
InfoGAN's paper also extrapolates continuous codes to -2 and 2, outside the training range,
to show that the learned feature keeps going.

No torchvision here: ``make_grid`` and ``save_png`` are small replacements (Pillow).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from gan.latents import LatentSpec

N_CONTINUOUS_STEPS = 10  # columns of a continuous code's traversal


def make_grid(images: Tensor, n_cols: int, pad: int = 2, pad_value: float = 0.5) -> Tensor:
    """Tile images row by row into one picture.

    Args:
        images: (N, C, H, W) in [-1, 1]; image i goes to row i // n_cols, column i % n_cols.
        n_cols: images per row; the last row may be incomplete (left as padding).
        pad: pixels of padding around and between images.
        pad_value: colour of the padding in [0, 1] (grey sets off both black and white backgrounds).

    Returns:
        (C, n_rows * (H + pad) + pad, n_cols * (W + pad) + pad) in [0, 1].
    """
    n, c, h, w = images.shape
    n_rows = math.ceil(n / n_cols)
    grid = torch.full((c, n_rows * (h + pad) + pad, n_cols * (w + pad) + pad), pad_value, dtype=torch.float32)
    pixels = ((images.detach().float().cpu() + 1) / 2).clamp(0, 1)
    for i in range(n):
        top, left = pad + (i // n_cols) * (h + pad), pad + (i % n_cols) * (w + pad)
        grid[:, top : top + h, left : left + w] = pixels[i]
    return grid


def save_png(grid: Tensor, path: str | Path) -> Path:
    """Write a (C, H, W) grid in [0, 1] (C = 1 or 3) as an 8-bit PNG; creates parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (grid.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if array.shape[0] == 1:
        image = Image.fromarray(array[0])  # mode L
    else:
        image = Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)))  # mode RGB
    image.save(path, format="PNG")
    return path


def traversal_values(spec: LatentSpec, code_name: str) -> list[float]:
    """Default column values: linspace(-1, 1, 10) for a continuous code, 0..k-1 for a categorical one."""
    code = spec.code(code_name)
    if code.kind == "categorical":
        return [float(k) for k in range(code.n_classes)]
    return torch.linspace(-1, 1, N_CONTINUOUS_STEPS).tolist()


def _code_columns(spec: LatentSpec, code_name: str) -> slice:
    """Columns of ``code_name`` in G's code input (B, code_dim)."""
    index = spec.names.index(spec.code(code_name).name)
    start = sum(c.dim for c in spec.codes[:index])
    return slice(start, start + spec.codes[index].dim)


@torch.no_grad()
def code_traversal(
    G: nn.Module,
    spec: LatentSpec,
    code_name: str,
    n_rows: int = 8,
    values: Sequence[float] | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> Tensor:
    """Images for one code's traversal grid, row-major (draw r, value j at r * n_cols + j).

    Each row draws z and the other codes once (seeded on CPU, so the same seed gives the same
    rows on any device); its columns set ``code_name`` to each of ``values`` (class indices for a
    categorical code). G runs in eval mode, and every submodule's mode is restored afterwards.

    Returns:
        (n_rows * n_cols, C, H, W) in [-1, 1], with n_cols = len(values).
    """
    code = spec.code(code_name)
    values = traversal_values(spec, code_name) if values is None else list(values)
    n_cols = len(values)
    if device is None:
        device = next(G.parameters()).device
    z, c = spec.sample(n_rows, generator=torch.Generator().manual_seed(seed))  # (R, noise_dim), (R, code_dim)
    z, c = z.repeat_interleave(n_cols, dim=0), c.repeat_interleave(n_cols, dim=0)  # (R * n_cols, ...)
    if code.kind == "categorical":
        classes = torch.tensor([int(v) for v in values]).repeat(n_rows)
        column = torch.nn.functional.one_hot(classes, code.n_classes).float()  # (R * n_cols, k)
    else:
        column = torch.tensor(values, dtype=torch.float32).repeat(n_rows).unsqueeze(1)  # (R * n_cols, 1)
    c[:, _code_columns(spec, code_name)] = column
    modes = {m: m.training for m in G.modules()}
    G.eval()
    try:
        return G(z.to(device), c.to(device))
    finally:
        for m, training in modes.items():
            m.training = training


def save_traversals(
    G: nn.Module,
    spec: LatentSpec,
    out_dir: str | Path,
    n_rows: int = 8,
    seed: int = 0,
    extrapolate: Sequence[float] = (-2.0, 0.0, 2.0),
) -> list[Path]:
    """Write ``traversal_<code>.png`` for every code and ``traversal_<code>_extrapolate.png`` for
    every continuous code (columns at ``extrapolate``, outside the prior's range); empty
    ``extrapolate`` skips those. Returns the written paths, in spec order.
    """
    out_dir = Path(out_dir)
    paths = []
    for code in spec.codes:
        values = traversal_values(spec, code.name)
        images = code_traversal(G, spec, code.name, n_rows=n_rows, values=values, seed=seed)
        paths.append(save_png(make_grid(images, n_cols=len(values)), out_dir / f"traversal_{code.name}.png"))
        if code.kind == "continuous" and len(extrapolate) > 0:
            images = code_traversal(G, spec, code.name, n_rows=n_rows, values=extrapolate, seed=seed)
            grid = make_grid(images, n_cols=len(extrapolate))
            paths.append(save_png(grid, out_dir / f"traversal_{code.name}_extrapolate.png"))
    return paths
