r"""The prior of the codes fed to G: independent (InfoGAN) or a linear SCM over the graph.

With ``code_prior = "graph"`` (docs/design.md section 4) the continuous codes are drawn from a linear
structural causal model over the graph's q-to-q edges, so that the graph matters on the
generator's side too (as CausalGAN and DEAR put an SCM in the generator's prior). In a
topological order of the codes, with P(v) the continuous q-parents of code v and k = |P(v)|:

    c_v = Uniform(-1, 1)                                          if k = 0 (a root, as in InfoGAN)
    c_v = clip( a_v * sum_{u in P(v)} c_u + e_v / sqrt(k + 1), -1, 1 ),   e_v ~ Uniform(-1, 1)

Every parent gets the same coefficient a_v, chosen so the parents explain k / (k + 1) of the
(unclipped) variance and the noise the other 1 / (k + 1), which makes every code's variance 1/3,
that of Uniform(-1, 1): a_v^2 Var(sum_u c_u) = k / (3 (k + 1)), with Var(sum_u c_u) from the
linear model's covariance (parents may be correlated, e.g. in the complete graph). With
independent parents this is a_v = 1 / sqrt(k + 1): c3 = (c1 + c2 + e3) / sqrt(3) for the
collider. The clip to the codes' range [-1, 1] then lowers a child's variance a little (8-9% of
a child's values clip; its variance is about 0.30 instead of 0.33). e_v is the code's own independent draw, so the graph prior uses the
random stream exactly as the independent one does.

Categorical codes stay independent uniform: a categorical q node with parents keeps no
mechanism, and a categorical q parent of a continuous code is ignored, since a class has no
scale to add linearly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from gan.dag import parents_order
from gan.latents import LatentSpec

_ROOT_VAR = 1 / 3  # Var Uniform(-1, 1)


@dataclass(frozen=True)
class Mechanism:
    """c_v = clip(weight * sum of c[parents] + noise_scale * c_v's own Uniform(-1, 1) draw, -1, 1)."""

    column: int
    parents: tuple[int, ...]  # columns of the parent codes in c
    weight: float
    noise_scale: float


class CodePrior:
    """Draws (z, c) for a spec, with the codes independent or from the graph's linear SCM.

    Args:
        spec: the latent spec.
        parents: ``{q node: (parents...)}`` for the graph prior; None for independent codes.
    """

    def __init__(self, spec: LatentSpec, parents: Mapping[str, Sequence[str]] | None = None) -> None:
        self.spec = spec
        self.mechanisms = linear_scm(spec, parents) if parents is not None else ()

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z (B, noise_dim), c (B, code_dim)); exactly ``spec.sample`` when there is no mechanism."""
        z, noise = self.spec.sample(batch_size, generator, device)
        return z, self.solve(noise)

    def solve(
        self, noise: torch.Tensor, mask: torch.Tensor | None = None, value: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The codes (B, code_dim) from their exogenous noise, the spec's independent draw (B, code_dim).

        With ``mask`` (B, code_dim) bool and ``value`` (B, code_dim), solved under the perfect
        intervention do(c[mask] := value[mask]): a masked column keeps its value, its descendants
        are recomputed from their own noise.
        """
        c = noise.clone() if mask is None else torch.where(mask, value, noise)
        for m in self.mechanisms:  # topological order: parents are final before their children
            signal = c[:, list(m.parents)].sum(1)
            column = (m.weight * signal + m.noise_scale * noise[:, m.column]).clamp(-1, 1)
            c[:, m.column] = column if mask is None else torch.where(mask[:, m.column], value[:, m.column], column)
        return c


def linear_scm(spec: LatentSpec, parents: Mapping[str, Sequence[str]]) -> tuple[Mechanism, ...]:
    """The mechanisms of the continuous codes that have continuous q-parents, in topological order."""
    continuous = [f"q{i + 1}" for i, code in enumerate(spec.codes) if code.kind == "continuous"]
    pa = {v: [int(u[1:]) - 1 for u in parents.get(v, ()) if u in continuous] for v in continuous}
    columns = [sum(c.dim for c in spec.codes[:i]) for i in range(len(spec.codes))]
    cov = torch.zeros(len(spec.codes), len(spec.codes), dtype=torch.float64)  # of the unclipped codes
    mechanisms = []
    for node in parents_order({v: [f"q{u + 1}" for u in ps] for v, ps in pa.items()}):
        v, k = int(node[1:]) - 1, len(pa[node])
        cov[v, v] = _ROOT_VAR
        if k == 0:
            continue
        signal_var = cov[pa[node]][:, pa[node]].sum().item()
        weight = math.sqrt(k / (k + 1) * _ROOT_VAR / signal_var)
        noise_scale = 1 / math.sqrt(k + 1)
        cov[v, :] = cov[:, v] = weight * cov[pa[node]].sum(0)
        cov[v, v] = _ROOT_VAR
        mechanisms.append(Mechanism(columns[v], tuple(columns[u] for u in pa[node]), weight, noise_scale))
    return tuple(mechanisms)
