"""What size a classifier-feature FID has on one dataset (issue 16 item 15: "fid 213,344 on shapes").

    python bench/fid_scale.py --dataset shapes

Prints the scale of the feature net's features on real images, then the Frechet distance (the
same function the ``fid`` score calls) between: two disjoint sets of real images (the floor a
perfect generator would reach at that sample size), real images and uniform noise, real images
and blank images (all -1), real images and their own pixels shuffled. A generator's ``fid`` reads
between the floor and the noise level; one near the noise level has not learned the images yet.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from structsearch import metrics
from structsearch.datasets import get_dataset
from structsearch.metrics.fid import feature_stats, frechet_distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="shapes", choices=["shapes", "dsprites"], help="a factor dataset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = get_dataset(args.dataset, device="cpu", seed=0)
    net, info = metrics.load_or_train_feature_net(dataset)
    test, _ = dataset.test_images(metrics.FID_N_SAMPLES)  # what the fid score compares against
    n = len(test)
    rng = np.random.default_rng(args.seed)
    drawn = dataset.observations_from_factors(np.asarray(dataset.sample_factors(20_000, rng))).float()
    mu, sigma = feature_stats(test, net)
    print(f"feature net {info['path']} (test accuracy {info['test_accuracy']:.3f})")
    print(f"features of {n} test images: dim {len(mu)}, {int((np.diag(sigma) > 1e-8).sum())} active;")
    print(
        f"  mean activation {mu.mean():.1f} (largest {mu.max():.1f}), |mu|^2 {mu @ mu:,.0f}, tr(Sigma) {np.trace(sigma):,.0f}"
    )
    g = torch.Generator().manual_seed(args.seed)
    others = {
        f"fresh images ({n}; the floor at the score's sample size)": drawn[:n],
        "uniform noise in [-1, 1]": torch.rand(n, *test.shape[1:], generator=g) * 2 - 1,
        "blank images (all -1)": -torch.ones(n, *test.shape[1:]),
        "the test images, pixels shuffled": test.flatten(1)[:, torch.randperm(test[0].numel(), generator=g)].view_as(
            test
        ),
    }
    for what, images in others.items():
        print(f"FID test images vs {what}: {frechet_distance(mu, sigma, *feature_stats(images, net)):,.0f}")
    a, b = drawn[:10_000], drawn[10_000:20_000]
    print(
        f"FID 10,000 vs 10,000 fresh images (the floor at 10,000): {frechet_distance(*feature_stats(a, net), *feature_stats(b, net)):,.0f}"
    )


if __name__ == "__main__":
    main()
