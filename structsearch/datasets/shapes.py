"""shapes: 32x32 rings whose three visible features follow a known causal graph.

Each image is one anti-aliased elliptical ring, centred; its factors are

    f1 width      horizontal semi-axis, 4.5 .. 12.5 px
    f2 thickness  stroke width,         1.0 .. 4.0 px
    f3 height     vertical semi-axis,   4.5 .. 12.5 px

each on a grid of ``n_levels`` classes (16 by default), i.e. continuous values
v = -1 + 2 class / (n_levels - 1) in [-1, 1]. Factor i is node ``q{i}`` of the true graph.

The factors come from a linear structural causal model over that graph, in topological order:
a root is uniform over its classes; a child is

    v = clip(k * (sum of its parents' values + noise * s * eps), -1, 1),   eps ~ N(0, 1),

quantized to the nearest class, where s is the standard deviation of the parents' sum and k
scales v to standard deviation CHILD_SD (both from the linear-Gaussian covariance, ignoring the
clip, so clipping stays rare). ``noise`` = 0.5 makes the parents explain 80% of a child's variance.

The default graph, "collider" (f1 -> f3 <- f2), is the paper's MNIST finding made exact: width
and thickness independent, height caused by both. Also "chain" (f1 -> f2 -> f3), "fork"
(f1 -> f2, f1 -> f3), "independent", or any DAG over q1..q3 given as text ("q1->q2, q2->q3") or
as (parent, child) pairs. A fixed train set (``n_train``, rendered once) and a test set
(``n_test``, from another seed) are kept resident as float32 on the device.

Anchors (``--anchor-labels``): continuous code ci among c1..c3 is tied to factor fi, its target
being the factor's value in [-1, 1] (the codes' own range); any other code stays unanchored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Literal

import numpy as np
import torch

from gan import dag
from gan.latents import LatentSpec
from structsearch.datasets.base import Dataset, DatasetError, first_n

log = logging.getLogger(__name__)

SIZE = 32
FACTOR_NAMES = ("width", "thickness", "height")
NODES = ("q1", "q2", "q3")
GRAPHS: dict[str, tuple[tuple[str, str], ...]] = {
    "collider": (("q1", "q3"), ("q2", "q3")),
    "chain": (("q1", "q2"), ("q2", "q3")),
    "fork": (("q1", "q2"), ("q1", "q3")),
    "independent": (),
}
# Pixel range of each factor, from class 0 to the last class.
RANGES_PX = ((4.5, 12.5), (1.0, 4.0), (4.5, 12.5))
CHILD_SD = 0.5  # standard deviation of a child's value before the clip to [-1, 1]

GraphLike = str | Iterable[tuple[str, str]]


def parse_graph(graph: GraphLike) -> tuple[tuple[str, str], ...]:
    """A graph name, text ``"q1->q3, q2->q3"`` or (parent, child) pairs -> sorted, validated edges."""
    if isinstance(graph, str):
        if graph in GRAPHS:
            return GRAPHS[graph]
        pairs = [tuple(re.split(r"\s*->\s*", part.strip())) for part in graph.split(",") if part.strip()]
        if not all(len(p) == 2 for p in pairs):
            raise DatasetError(
                f"shapes: unknown graph {graph!r}; expected one of {', '.join(GRAPHS)} or edges like 'q1->q2, q2->q3'"
            )
    else:
        pairs = [tuple(p) for p in graph]
    edges = tuple(sorted(set(pairs)))
    for parent, child in edges:
        if parent not in NODES or child not in NODES or parent == child:
            raise DatasetError(f"shapes: bad edge {parent}->{child}; nodes are {', '.join(NODES)}, no self-loops")
    topological_order(edges)  # raises on a cycle
    return edges  # type: ignore[return-value]


def topological_order(edges: tuple[tuple[str, str], ...]) -> list[int]:
    """Factor indices, parents before children; DatasetError naming the nodes of a cycle."""
    try:
        return [NODES.index(v) for v in dag.topological_order(NODES, edges)]
    except ValueError:
        stuck = sorted({v for v in dag.find_cycle(edges)[:-1]}, key=dag.node_order)
        raise DatasetError(f"shapes: graph {edges} has a cycle through {', '.join(stuck)}") from None


class LinearSCM:
    """The factor distribution: a linear-Gaussian SCM over the graph, clipped and quantized."""

    def __init__(self, edges: tuple[tuple[str, str], ...], n_levels: int, noise: float) -> None:
        self.n_levels, self.noise = n_levels, noise
        self.order = topological_order(edges)
        self.parents = [[NODES.index(p) for p, c in edges if c == v] for v in NODES]
        # Linear-Gaussian covariance of the values, filled in topological order, gives the scales.
        root_var = (n_levels + 1) / (3 * (n_levels - 1))  # variance of n_levels evenly spaced points in [-1, 1]
        cov = np.zeros((len(NODES), len(NODES)))
        self.scale, self.signal_sd = np.ones(len(NODES)), np.zeros(len(NODES))
        for v in self.order:
            pa = self.parents[v]
            if not pa:
                cov[v, v] = root_var
                continue
            signal_var = cov[np.ix_(pa, pa)].sum()
            self.signal_sd[v] = np.sqrt(signal_var)
            self.scale[v] = CHILD_SD / np.sqrt(signal_var * (1 + noise**2))
            cov[v, :] = cov[:, v] = self.scale[v] * cov[pa, :].sum(axis=0)
            cov[v, v] = CHILD_SD**2

    def values(self, classes: np.ndarray) -> np.ndarray:
        return -1 + 2 * classes / (self.n_levels - 1)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3) int64 factor classes."""
        classes = np.zeros((n, len(NODES)), dtype=np.int64)
        for v in self.order:
            pa = self.parents[v]
            if not pa:
                classes[:, v] = rng.integers(self.n_levels, size=n)
                continue
            signal = self.values(classes[:, pa]).sum(axis=1)
            value = self.scale[v] * (signal + self.noise * self.signal_sd[v] * rng.standard_normal(n))
            classes[:, v] = np.rint((np.clip(value, -1, 1) + 1) / 2 * (self.n_levels - 1))
        return classes


def render(classes: torch.Tensor, n_levels: int) -> torch.Tensor:
    """(B, 3) int64 classes -> (B, 1, 32, 32) float32 rings in [-1, 1], on classes' device.

    The distance of a pixel centre to the ellipse is approximated to first order,
    d = (f - 1) / |grad f| with f = sqrt((x/a)^2 + (y/b)^2), and the pixel's intensity is the
    stroke's coverage of a 1-pixel ramp: clamp(thickness / 2 + 1/2 - |d|, 0, 1).
    """
    t = classes.float() / (n_levels - 1)
    lo = torch.tensor([r[0] for r in RANGES_PX], device=classes.device)
    hi = torch.tensor([r[1] for r in RANGES_PX], device=classes.device)
    px = lo + t * (hi - lo)  # (B, 3) width, thickness, height in pixels
    a, thickness, b = (px[:, i].view(-1, 1, 1) for i in range(3))
    coords = torch.arange(SIZE, dtype=torch.float32, device=classes.device) + 0.5 - SIZE / 2
    x, y = coords.view(1, 1, SIZE), coords.view(1, SIZE, 1)
    f = torch.sqrt((x / a) ** 2 + (y / b) ** 2).clamp_min(1e-6)
    grad = torch.sqrt((x / a**2) ** 2 + (y / b**2) ** 2) / f
    d = (f - 1) / grad.clamp_min(1e-6)
    intensity = (thickness / 2 + 0.5 - d.abs()).clamp(0, 1)
    return (intensity * 2 - 1).unsqueeze(1)


class Shapes(Dataset):
    """Synthetic rings with a known causal graph over their factors (see the module docstring)."""

    name = "shapes"
    image_shape = (1, SIZE, SIZE)
    spec_name = "shapes"
    factor_names = FACTOR_NAMES

    def __init__(
        self,
        device: str | torch.device = "cpu",
        seed: int = 0,
        graph: GraphLike = "collider",
        n_train: int = 20_000,
        n_test: int = 2_000,
        n_levels: int = 16,
        noise: float = 0.5,
    ) -> None:
        super().__init__(device)
        if n_levels < 2 or noise < 0 or n_train < 1 or n_test < 0:
            raise DatasetError(
                f"shapes: need n_levels >= 2, noise >= 0, n_train >= 1, n_test >= 0; "
                f"got n_levels={n_levels}, noise={noise}, n_train={n_train}, n_test={n_test}"
            )
        self.true_edges = parse_graph(graph)
        self.graph = graph if isinstance(graph, str) and graph in GRAPHS else ", ".join(map("->".join, self.true_edges))
        self.factor_sizes = (n_levels,) * len(NODES)
        self.n_levels, self.n_train, self.n_test = n_levels, n_train, n_test
        self.scm = LinearSCM(self.true_edges, n_levels, noise)
        self.train_factors = self.scm.sample(n_train, np.random.default_rng([seed, 0]))  # (n_train, 3)
        self._test_factors = self.scm.sample(n_test, np.random.default_rng([seed, 1]))  # (n_test, 3)
        self._train = self.observations_from_factors(self.train_factors)
        self._test = self.observations_from_factors(self._test_factors)
        log.info("shapes: graph %s, %d train + %d test images", self.graph, n_train, n_test)

    def _train_images(self, index: torch.Tensor) -> torch.Tensor:
        return self._train[index]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.scm.sample(n, rng)

    def observations_from_factors(self, factors: np.ndarray) -> torch.Tensor:
        # Only n_levels^3 distinct images exist: render each distinct row once, then gather.
        unique, inverse = np.unique(self._check_factors(factors), axis=0, return_inverse=True)
        images = render(torch.from_numpy(unique).to(self.device), self.n_levels)
        return images[torch.from_numpy(inverse.reshape(-1)).to(self.device)]

    def test_factors(self, n: int | None = None) -> tuple[torch.Tensor, np.ndarray]:
        n = first_n(n, self.n_test)
        return self._test[:n], self._test_factors[:n]

    def test_images(self, n: int | None = None) -> tuple[torch.Tensor, None]:
        return self.test_factors(n)[0], None

    def anchor_codes(self, spec: LatentSpec) -> dict[int, int]:
        codes = {i: i for i, code in enumerate(spec.codes[: len(NODES)]) if code.kind == "continuous"}
        if not codes:
            raise DatasetError(
                f"shapes anchors continuous codes among c1..c3 with {', '.join(FACTOR_NAMES)}; "
                f"codes {spec.text()} have none"
            )
        return codes

    def _anchor_values(self, split: Literal["train", "test"], index: np.ndarray) -> np.ndarray:
        factors = self.train_factors if split == "train" else self._test_factors
        return self.scm.values(factors[index])  # (M, 3) in [-1, 1]
