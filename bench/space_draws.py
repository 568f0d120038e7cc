"""How a search space's random draws spread over its graphs (issue 13: the budget on distinct graphs).

    python bench/space_draws.py --draws 20000

For each space on the `shapes` codes (3 continuous codes, 25 DAGs), draws graphs with Optuna's
RandomSampler and prints the share of the empty q part, the largest and smallest share of one
graph, the number of distinct graphs, and the draws needed on average to see every graph once
(the coupon-collector number of the measured shares) against that of a uniform space.
"""

from __future__ import annotations

import argparse
import collections

import numpy as np
import optuna

from gan.latents import get_spec
from search_spaces import make_space

optuna.logging.set_verbosity(optuna.logging.WARNING)


def shares(space_name: str, draws: int, seed: int = 0) -> dict[str, float]:
    space = make_space(space_name, get_spec("shapes"))
    sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(sampler=sampler)
    counts = collections.Counter()
    for _ in range(draws):
        trial = study.ask()
        counts[space.suggest(trial).key] += 1
        study.tell(trial, 0.0)
    return {k: v / draws for k, v in counts.items()}


def expected_draws_to_cover(p: np.ndarray) -> float:
    """E[draws until every outcome is seen] = integral_0^inf 1 - prod_i (1 - e^{-p_i t}) dt."""
    t = np.linspace(0, 60 / p.min(), 200_000)
    return float(np.trapezoid(1 - np.prod(1 - np.exp(-np.outer(t, p)), axis=1), t))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20_000)
    args = parser.parse_args()
    empty = "c1->q1, c2->q2, c3->q3"
    uniform = expected_draws_to_cover(np.full(25, 1 / 25))
    print(f"| space | distinct | empty q part | largest | smallest | draws to see all (25 uniform: {uniform:.0f}) |")
    print("|---|---|---|---|---|---|")
    for name in ("ordered", "brute-force", "classes"):
        s = shares(name, args.draws)
        p = np.array(sorted(s.values()))
        print(
            f"| {name} | {len(s)} | {s.get(empty, 0):.1%} | {p.max():.1%} | {p.min():.1%} | "
            f"{expected_draws_to_cover(p):.0f} |"
        )


if __name__ == "__main__":
    main()
