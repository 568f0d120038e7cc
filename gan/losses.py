"""InfoGAN's loss terms as small pure functions on logits (no softmax before cross-entropy)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from gan.latents import LatentSpec


def d_loss(real_logit: torch.Tensor, fake_logit: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Discriminator loss: real -> 1, fake -> 0 (``bce``) or least squares (``lsgan``)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(
            real_logit, torch.ones_like(real_logit)
        ) + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros_like(fake_logit))
    if kind == "lsgan":
        return 0.5 * ((real_logit - 1).pow(2).mean() + fake_logit.pow(2).mean())
    raise ValueError(f"unknown gan loss {kind!r}; expected 'bce' or 'lsgan'")


def g_loss(fake_logit: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Generator loss: the non-saturating -log D(G(z)) (``bce``) or least squares (``lsgan``)."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
    if kind == "lsgan":
        return 0.5 * (fake_logit - 1).pow(2).mean()
    raise ValueError(f"unknown gan loss {kind!r}; expected 'bce' or 'lsgan'")


def info_loss(spec: LatentSpec, c: torch.Tensor, q_out: torch.Tensor) -> torch.Tensor:
    """InfoGAN's information term, summed over codes, per sample.

    Cross-entropy of Q's logits against the sampled class for categorical codes; the Gaussian
    NLL with fixed unit variance, i.e. 1/2 squared error up to a constant, for continuous ones.
    """
    total = q_out.new_zeros(())
    for code, ci, qi in zip(spec.codes, spec.split(c), spec.split(q_out.float())):
        if code.kind == "categorical":
            total = total + F.cross_entropy(qi, ci.argmax(1))
        else:
            total = total + 0.5 * F.mse_loss(qi, ci)
    return total


def anchor_loss(spec: LatentSpec, targets: torch.Tensor, q_out: torch.Tensor, mask: Sequence[bool]) -> torch.Tensor:
    """ss-InfoGAN's supervised term (Spurr et al. 2017): Q's outputs on images whose codes are known.

    Summed over the anchored codes (``mask[i]`` True), per sample, on the scale of
    :func:`info_loss`: cross-entropy of Q's logits against the known class (``targets`` holds it
    one-hot in the code's k columns) for a categorical code, 1/2 squared error against the known
    value for a continuous one. ``targets`` and ``q_out`` are (B, code_dim) in the spec's layout.
    """
    total = q_out.new_zeros((), dtype=torch.float32)
    for code, anchored, ti, qi in zip(spec.codes, mask, spec.split(targets), spec.split(q_out.float())):
        if not anchored:
            continue
        if code.kind == "categorical":
            total = total + F.cross_entropy(qi, ti.argmax(1))
        else:
            total = total + 0.5 * F.mse_loss(qi, ti)
    return total
