"""Time every disentanglement metric at its default (disentanglement_lib) sample counts.

An identity representation (the codes are the 5 ground-truth factors themselves, one code each)
on a toy dataset whose observations are the factor values, so the time is the metrics' own cost,
not a network's. ``--representation noise`` times the worst case instead (codes unrelated to
the factors: DCI's boosted trees then work hardest). Run:
``python bench/metrics_timing.py [--scale 1.0] [--seed 0] [--representation identity]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import torch

from structsearch.metrics import all_disentanglement


class IdentityFactors:
    """5 independent uniform factors; the observation of a factor vector is itself, (n, 5, 1, 1)."""

    name = "identity-factors"
    factor_sizes = (5, 6, 7, 8, 10)

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.integers(k, size=n) for k in self.factor_sizes], axis=1)

    def observations_from_factors(self, factors: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(factors, dtype=torch.float32)[:, :, None, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every sample count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--representation", choices=["identity", "noise"], default="identity")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    noise = torch.Generator().manual_seed(args.seed)
    represent = {
        "identity": lambda x: x.flatten(1),
        "noise": lambda x: torch.randn(len(x), x[0].numel(), generator=noise),
    }[args.representation]
    scores = all_disentanglement(represent, IdentityFactors(), seed=args.seed, scale=args.scale)
    scores["time/total"] = time.perf_counter() - t0
    print(json.dumps({k: round(v, 4) for k, v in scores.items()}, indent=1))


if __name__ == "__main__":
    main()
