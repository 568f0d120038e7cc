"""Training with intervention pairs: a pair discriminator on (x, x') stacked as channels.

Real pairs are images of one sample before and after a perfect intervention on one unrecorded
factor, the other exogenous noise held fixed (docs/design.md section 8). The generator's pairs
follow the run's graph (``code_prior = "graph"``, :mod:`gan.prior`):

1. draw z and the codes' exogenous noise u; c = the SCM solved from u;
2. pick a code k uniformly and a fresh value from k's marginal (code k of an independent draw
   of the prior); c' = the SCM solved from the same u under do(c_k := that value), so k's
   descendants in the graph are recomputed and the other codes are unchanged;
3. the pair is (G(z, c), G(z, c')): the same z.

A pair discriminator D_pair tells real pairs from generated ones; G gets its non-saturating (or
least-squares) adversarial loss with weight ``lambda_pair``. This is what identifies the graph
(ILCM, Brehmer et al. 2022): a G whose codes are another coordinate system (e.g. a child's
exogenous noise instead of the child) with another graph cannot match real pairs in image space,
where after do(child) the child is independent of its old parents.

Nothing here imports structsearch; the trainer calls :class:`PairGAN` through two hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from gan.latents import LatentSpec
from gan.losses import d_loss, g_loss
from gan.models import LEAK, _scaled, init_weights
from gan.prior import CodePrior

if TYPE_CHECKING:
    from gan.train import TrainConfig

PAIR_KEYS = ("loss/pair", "loss/d_pair")  # G's pair term (unweighted), D_pair's loss
SampleRealPairs = Callable[[int, torch.Generator], tuple[Tensor, Tensor]]


class PairDiscriminator(nn.Module):
    """(x, x') each (B, C, H, W) -> real/fake logit (B,): two strided convs on the 2C-channel stack."""

    def __init__(self, image_shape: tuple[int, int, int], width: float = 1.0) -> None:
        super().__init__()
        c, h, w = image_shape
        ch1, ch2 = _scaled(64, width), _scaled(128, width)
        self.net = nn.Sequential(
            nn.Conv2d(2 * c, ch1, 4, stride=2, padding=1),
            nn.LeakyReLU(LEAK),
            nn.Conv2d(ch1, ch2, 4, stride=2, padding=1),
            nn.LeakyReLU(LEAK),
            nn.Flatten(),
            nn.Linear(ch2 * (h // 4) * (w // 4), 1),
        )

    def forward(self, x: Tensor, x_after: Tensor) -> Tensor:
        return self.net(torch.cat([x, x_after], dim=1)).squeeze(1)


def intervention_mask(spec: LatentSpec, target: Tensor) -> Tensor:
    """(B,) code indices -> (B, code_dim) bool, True on the columns of each row's target code."""
    column_code = torch.repeat_interleave(
        torch.arange(len(spec.codes), device=target.device), torch.tensor([c.dim for c in spec.codes])
    )  # (code_dim,)
    return column_code.unsqueeze(0) == target.unsqueeze(1)


def sample_pair_latents(
    prior: CodePrior, batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor, Tensor]:
    """(z, c, c'): codes before and after do(c_k := a fresh draw from k's marginal), k uniform per row."""
    z, noise = prior.spec.sample(batch_size, generator, device)
    target = torch.randint(len(prior.spec.codes), (batch_size,), generator=generator, device=device)
    _, fresh = prior.sample(batch_size, generator, device)
    return z, prior.solve(noise), prior.solve(noise, intervention_mask(prior.spec, target), fresh)


class PairGAN:
    """The pair discriminator, its optimizer and random streams, and the two terms of a step.

    ``d_step(G)`` generates a pair batch (kept for the G step), updates D_pair on it against a real
    pair batch and returns D_pair's loss; ``g_term()`` is G's adversarial loss on that batch under
    the updated D_pair.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        prior: CodePrior,
        sample_real: SampleRealPairs | None,
        image_shape: tuple[int, int, int],
        device: torch.device,
    ) -> None:
        """``cfg``: the run's TrainConfig (lambda_pair, batch_size, width, lr_d, beta1, gan_loss, seed)."""
        if sample_real is None:
            raise ValueError(f"lambda_pair = {cfg.lambda_pair} needs sample_real_pairs (a dataset with pairs)")
        self.prior, self.sample_real, self.device = prior, sample_real, device
        self.batch_size, self.gan_loss = cfg.batch_size, cfg.gan_loss
        self.D = PairDiscriminator(image_shape, cfg.width).to(device)
        init_weights(self.D)
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, 0.999), **fused)
        # Streams of their own: a run with pairs draws its images and codes as a run without them does.
        self.data_rng = torch.Generator(device).manual_seed(cfg.seed + 2)
        self.latent_rng = torch.Generator(device).manual_seed(cfg.seed + 3)
        self._fake: tuple[Tensor, Tensor] | None = None

    def generate(self, G: nn.Module, batch_size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A generated pair batch (x, x'), both halves through G in one batch (one set of BN statistics)."""
        z, c, c_after = sample_pair_latents(self.prior, batch_size, generator, self.device)
        images = G(torch.cat([z, z]), torch.cat([c, c_after]))
        return images[:batch_size], images[batch_size:]

    def d_step(self, G: nn.Module, autocast) -> Tensor:
        real = self.sample_real(self.batch_size, self.data_rng)
        with autocast():
            self._fake = self.generate(G, self.batch_size, self.latent_rng)
            loss = d_loss(self.D(*real), self.D(*(x.detach() for x in self._fake)), self.gan_loss)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def g_term(self) -> Tensor:
        if self._fake is None:
            raise RuntimeError("PairGAN.g_term before d_step")
        term, self._fake = g_loss(self.D(*self._fake), self.gan_loss), None
        return term

    def state_dict(self) -> dict:
        return {
            "D": self.D.state_dict(),
            "opt": self.opt.state_dict(),
            "data_rng": self.data_rng.get_state(),
            "latent_rng": self.latent_rng.get_state(),
        }

    def load_state_dict(self, state: Mapping) -> None:
        self.D.load_state_dict(state["D"])
        self.opt.load_state_dict(state["opt"])
        self.data_rng.set_state(state["data_rng"].cpu())
        self.latent_rng.set_state(state["latent_rng"].cpu())
