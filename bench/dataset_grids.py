"""Write docs/datasets/<name>.png (an 8x8 grid of training samples per dataset) and time rendering.

    python bench/dataset_grids.py [--data-dir DIR] [--out docs/datasets] [--seed 0]

A dataset whose files are missing (MNIST, Fashion-MNIST offline) is skipped with a note. The
timings are for 10,000 images on one CPU thread (torch.set_num_threads(1)).
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import time

import matplotlib.image
import numpy as np
import torch

from structsearch.datasets import DATASETS, DatasetError, get_dataset, shapes

log = logging.getLogger("dataset_grids")


def grid(images: torch.Tensor, n_rows: int = 8, pad: int = 2) -> np.ndarray:
    """(B, 1, H, W) in [-1, 1] -> one (rows*(H+pad)+pad, cols*(W+pad)+pad) array in [0, 1]."""
    b, _, h, w = images.shape
    n_cols = -(-b // n_rows)
    out = np.full((n_rows * (h + pad) + pad, n_cols * (w + pad) + pad), 0.5, dtype=np.float32)
    for i, image in enumerate(images[:, 0].cpu().numpy()):
        r, c = divmod(i, n_cols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = (
            image + 1
        ) / 2
    return out


def time_render(name: str, n: int = 10_000) -> float:
    """Seconds to make ``n`` images of a factor dataset from sampled factors, one thread."""
    dataset = get_dataset(name, n_train=16, n_test=0) if name == "shapes" else get_dataset(name, n_test=0)
    factors = dataset.sample_factors(n, np.random.default_rng(0))
    start = time.perf_counter()
    dataset.observations_from_factors(factors)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default="docs/datasets")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in DATASETS:
        try:
            dataset = get_dataset(name, data_dir=args.data_dir, seed=args.seed, download=False)
        except DatasetError as err:
            log.warning("skipping %s: %s", name, str(err).splitlines()[0])
            continue
        images = dataset.sample(64, torch.Generator(dataset.device).manual_seed(args.seed))
        picture = grid(images)
        if dataset.image_shape[-1] < 64:  # small images: double every pixel so the grid is readable
            picture = np.kron(picture, np.ones((2, 2), dtype=np.float32))
        matplotlib.image.imsave(out / f"{name}.png", picture, cmap="gray", vmin=0, vmax=1)
        log.info("wrote %s (%s)", out / f"{name}.png", dataset)
    for name in ("shapes", "dsprites"):
        start = time.perf_counter()
        get_dataset(name)
        log.info("%s: default construction %.2f s", name, time.perf_counter() - start)
        log.info("%s: 10,000 images from factors in %.2f s (1 thread)", name, time_render(name))
    classes = torch.from_numpy(np.random.default_rng(0).integers(16, size=(10_000, 3)))
    start = time.perf_counter()
    shapes.render(classes, 16)
    log.info(
        "shapes: 10,000 rings rendered one by one (no reuse of repeated factors) in %.2f s", time.perf_counter() - start
    )


if __name__ == "__main__":
    main()
