"""Small-batch bias of R_G: the value of a form on batches drawn from a graph that is exactly true.

    python bench/deviance_bias.py [--draws 400] [--batches 64,128,2000] [--seed 0]

Each case draws codes c from the spec's prior and Q's outputs q from a linear-Gaussian SCM that
follows the case's graph exactly (Gaussian noise; categorical q1 as softmax logits), so the
population deviance is 0, and prints mean and std over ``--draws`` batches of the deviance,
in-sample (``none``) and corrected (``unbiased``), per batch size:

* ``cont3 collider``: cont,cont,cont; c_i -> q_i, q1 -> q3 <- q2.
* ``mnist collider``: cat10,cont,cont; the same graph, q1 a noisy softmax of c1, q3 linear in
  q1's probabilities (continuous families with categorical parents: rank counting).
* ``mnist q1 free, soft`` / ``hard``: q1 independent of every code and without parents (its
  deviance is nll(q1) - nll(q1 | c1), a categorical family), Q's logits 2 N(0, 1) (soft) or 20
  times a one-hot (the worst case of the jackknife: ~N/10 samples per configuration for 10
  classes).

The ``likelihood`` rows print the form's mean minus its population value, on the cont3 collider
with Gaussian codes and noise 0.5 (every node Gaussian, so the value is known in closed form:
3/2 log(2 pi e) + 1/2 log(0.2 * 0.2 * 0.25 / 1.4)), over 10 x ``--draws`` batches (its spread is
wider).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from gan.latents import LatentSpec, get_spec
from gan.structure import StructuralLoss
from structsearch.graph import Graph

Draw = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
COLLIDER = "c1->q1, c2->q2, c3->q3, q1->q3, q2->q3"
Q1_FREE = "c2->q2, c3->q3, q1->q3, q2->q3"


def cont3_collider(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """q_i = c_i + 0.3 e_i (i = 1, 2); q3 = 0.6 q1 + 0.6 q2 + 0.5 c3 + 0.3 e3."""
    _, c = get_spec("cont,cont,cont").sample(n, g)
    q = c + 0.3 * torch.randn(n, 3, generator=g)
    q[:, 2] = 0.6 * q[:, 0] + 0.6 * q[:, 1] + 0.5 * c[:, 2] + 0.3 * torch.randn(n, generator=g)
    return c, q


def gaussian_collider(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """c ~ N(0, I); q_i = c_i + 0.5 e_i (i = 1, 2); q3 = 0.6 q1 + 0.6 q2 + 0.5 c3 + 0.5 e3."""
    c = torch.randn(n, 3, generator=g)
    q = c + 0.5 * torch.randn(n, 3, generator=g)
    q[:, 2] = 0.6 * q[:, 0] + 0.6 * q[:, 1] + 0.5 * c[:, 2] + 0.5 * torch.randn(n, generator=g)
    return c, q


GAUSSIAN_LIKELIHOOD = 3 * (0.5 * math.log(2 * math.pi) + 0.5) + 0.5 * math.log(0.2 * 0.2 * 0.25 / 1.4)


def mnist_draw(q1_logits: Callable[[torch.Tensor, torch.Generator], torch.Tensor]) -> Draw:
    """cat10,cont,cont codes; q1 = q1_logits(c1 one-hot); q2 = c2 + 0.3 e; q3 = p1 . w + 0.6 q2 + 0.5 c3 + 0.3 e."""
    w = torch.linspace(-1, 1, 10)

    def draw(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        _, c = get_spec("cat10,cont,cont").sample(n, g)
        logits = q1_logits(c[:, :10], g)  # (n, 10)
        q2 = c[:, 10] + 0.3 * torch.randn(n, generator=g)
        q3 = F.softmax(logits, 1) @ w + 0.6 * q2 + 0.5 * c[:, 11] + 0.3 * torch.randn(n, generator=g)
        return c, torch.cat([logits, q2[:, None], q3[:, None]], 1)

    return draw


CASES: dict[str, tuple[str, str, Draw]] = {
    "cont3 collider": ("cont,cont,cont", COLLIDER, cont3_collider),
    "mnist collider": (
        "cat10,cont,cont",
        COLLIDER,
        mnist_draw(lambda c1, g: 3 * c1 + torch.randn(c1.shape, generator=g)),
    ),
    "mnist q1 free, soft": (
        "cat10,cont,cont",
        Q1_FREE,
        mnist_draw(lambda c1, g: 2 * torch.randn(c1.shape, generator=g)),
    ),
    "mnist q1 free, hard": (
        "cat10,cont,cont",
        Q1_FREE,
        mnist_draw(lambda c1, g: 20 * F.one_hot(torch.randint(10, (len(c1),), generator=g), 10).float()),
    ),
}


def values(loss: StructuralLoss, draw: Draw, n: int, n_draws: int, seed: int) -> torch.Tensor:
    """The loss on n_draws batches of n, (n_draws,)."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([loss(*draw(n, g)) for _ in range(n_draws)])


def losses(spec: LatentSpec, edges: str, form: str) -> dict[str, StructuralLoss]:
    parents = Graph.parse(edges, spec).parents()
    return {c: StructuralLoss(spec, parents, form=form, correction=c) for c in ("none", "unbiased")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--batches", default="64,128,2000")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    start = time.perf_counter()
    print("| case | form | batch | in-sample mean (std) | corrected mean (std) |")
    print("|---|---|---:|---:|---:|")
    for name, (spec_text, edges, draw) in CASES.items():
        deviance = losses(get_spec(spec_text), edges, "deviance")
        for n in batches:
            row = [values(loss, draw, n, args.draws, args.seed) for loss in deviance.values()]
            cells = " | ".join(f"{v.mean():+.4f} ({v.std():.4f})" for v in row)
            print(f"| {name} | deviance | {n} | {cells} |")
    likelihood = losses(get_spec("cont,cont,cont"), COLLIDER, "likelihood")
    for n in batches:
        row = [values(loss, gaussian_collider, n, 10 * args.draws, args.seed) for loss in likelihood.values()]
        cells = " | ".join(f"{v.mean() - GAUSSIAN_LIKELIHOOD:+.4f} ({v.std():.4f})" for v in row)
        print(f"| gaussian cont3 collider | likelihood - population | {n} | {cells} |")
    print(f"\n{args.draws} draws per cell, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
