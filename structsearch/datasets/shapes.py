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
from dataclasses import dataclass
from functools import cached_property
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

    def draw_noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3) float64 exogenous noise: a root's class (a uniform integer), a child's eps ~ N(0, 1).

        Drawn in topological order, one call per factor, as ``sample`` always drew them.
        """
        noise = np.zeros((n, len(NODES)))
        for v in self.order:
            noise[:, v] = rng.integers(self.n_levels, size=n) if not self.parents[v] else rng.standard_normal(n)
        return noise

    def from_noise(
        self, noise: np.ndarray, target: np.ndarray | None = None, value: np.ndarray | None = None
    ) -> np.ndarray:
        """(n, 3) int64 classes, a deterministic function of the exogenous noise (n, 3).

        With ``target`` (n,) and ``value`` (n,), row i is solved under the perfect intervention
        do(f_target[i] := value[i]): the target's mechanism is replaced by the class, its
        descendants are recomputed from the same noise, the other factors are as without it.
        """
        classes = np.zeros(noise.shape, dtype=np.int64)
        for v in self.order:
            pa = self.parents[v]
            if not pa:
                classes[:, v] = noise[:, v]
            else:
                signal = self.values(classes[:, pa]).sum(axis=1)
                value_v = self.scale[v] * (signal + self.noise * self.signal_sd[v] * noise[:, v])
                classes[:, v] = np.rint((np.clip(value_v, -1, 1) + 1) / 2 * (self.n_levels - 1))
            if target is not None:
                hit = target == v
                classes[hit, v] = value[hit]
        return classes

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """(n, 3) int64 factor classes."""
        return self.from_noise(self.draw_noise(n, rng))

    def sample_pairs(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(before (n, 3), after (n, 3), target (n,)): each row before and after do(f_k := a fresh value).

        k is uniform over the factors; the fresh value is factor k of an independent sample of the
        SCM, i.e. a draw from k's marginal; both rows share one exogenous noise.
        """
        noise = self.draw_noise(n, rng)
        target = rng.integers(len(NODES), size=n)
        value = self.sample(n, rng)[np.arange(n), target]
        return self.from_noise(noise), self.from_noise(noise, target, value), target

    def descendants(self, k: int) -> set[int]:
        """Factor indices reachable from factor k along the graph's edges (k excluded)."""
        found, frontier = set(), [k]
        while frontier:
            u = frontier.pop()
            for v, pa in enumerate(self.parents):
                if u in pa and v not in found:
                    found.add(v)
                    frontier.append(v)
        return found


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


@dataclass(frozen=True)
class Pairs:
    """Intervention pairs: images of one sample before and after a perfect intervention on one factor.

    ``target`` is what a learner is NOT told (weak supervision): it is kept for tests and
    diagnostics only. Classes are int64 numpy arrays; images are float32 on the dataset's device.
    """

    before: np.ndarray  # (n, 3) factor classes of x
    after: np.ndarray  # (n, 3) factor classes of x'
    target: np.ndarray  # (n,) the intervened factor's index
    images: torch.Tensor  # (n, 1, 32, 32) x
    images_after: torch.Tensor  # (n, 1, 32, 32) x'

    def __len__(self) -> int:
        return len(self.target)


class Shapes(Dataset):
    """Synthetic rings with a known causal graph over their factors (see the module docstring)."""

    name = "shapes"
    image_shape = (1, SIZE, SIZE)
    spec_name = "shapes"
    factor_names = FACTOR_NAMES
    has_pairs = True

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
        self.n_levels, self.n_train, self.n_test, self.seed = n_levels, n_train, n_test, seed
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

    # Intervention pairs (docs/design.md section 8) -----------------------------------------------

    def sample_pairs(self, n: int, rng: np.random.Generator) -> Pairs:
        """n fresh pairs (x, x') from the SCM: x' is x after do(f_k := a draw from k's marginal)."""
        before, after, target = self.scm.sample_pairs(n, rng)
        return Pairs(
            before, after, target, self.observations_from_factors(before), self.observations_from_factors(after)
        )

    @cached_property
    def _test_pairs(self) -> Pairs:
        return self.sample_pairs(self.n_test, np.random.default_rng([self.seed, 2]))

    def test_pairs(self, n: int | None = None) -> Pairs:
        """The first ``n`` of ``n_test`` held-out pairs (their own seed, apart from train and test)."""
        n, p = first_n(n, self.n_test), self._test_pairs
        return Pairs(p.before[:n], p.after[:n], p.target[:n], p.images[:n], p.images_after[:n])

    @cached_property
    def _train_pair_classes(self) -> torch.Tensor:
        before, after, _ = self.scm.sample_pairs(self.n_train, np.random.default_rng([self.seed, 3]))
        return torch.from_numpy(np.stack([before, after], axis=1)).to(self.device)  # (n_train, 2, 3)

    def sample_pair_batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, x') each (B, 1, 32, 32): training pairs drawn with replacement from a fixed set of
        ``n_train`` pairs resident on the device, rendered on the device (no host sync)."""
        index = torch.randint(self.n_train, (batch_size,), generator=generator, device=self.device)
        images = render(self._train_pair_classes[index].flatten(0, 1), self.n_levels)  # (2B, 1, 32, 32)
        return images[0::2], images[1::2]
