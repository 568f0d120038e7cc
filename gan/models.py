"""InfoGAN's generator and discriminator, with Q sharing the discriminator's trunk.

The 28x28 nets are those of InfoGAN's paper (Chen et al. 2016, appendix, MNIST):

    G: FC 1024-BN-ReLU, FC 7x7x128-BN-ReLU, deconv 4x4/2 64-BN-ReLU, deconv 4x4/2 C, tanh
    D: conv 4x4/2 64-lReLU(0.1), conv 4x4/2 128-BN-lReLU, FC 1024-BN-lReLU  (the trunk)
       D head: FC 1                       (real/fake logit)
       Q head: FC 128-BN-lReLU, FC code_dim  (logits of categorical codes, means of continuous)

The 32x32 and 64x64 nets follow the same pattern from an 8x8x128 base: one upsampling
(G) or downsampling (D) step per factor of two, halving the channels at each step away from
the base (64x64: G deconvs 128 -> 64 -> 32 -> C, D convs C -> 32 -> 64 -> 128).

Q returns raw logits and means: the losses apply ``F.cross_entropy`` and the MSE themselves,
and the structural regularizer applies its own softmax. Layers followed by batch norm carry
no bias (it would be cancelled by the norm). ``width`` scales every hidden size (min 8) so
tests and CPU demos can use narrow nets. The linear layers are :class:`gan.onednn.Linear`
(``nn.Linear`` whose fp32 CPU matmuls run in oneDNN, about 2x faster than MKL on AMD CPUs).

``d_norm = "spectral"`` (InfoGAN-CR's discriminator, fjxmlzn/InfoGAN-CR
``InfoGAN-CR_dSprites/gan/network.py``, ``InfoGANDiscriminator``: every conv and linear layer of
the trunk and both heads spectrally normalized, no batch norm) builds D without its batch norms
(their layers get a bias back) and puts :func:`spectral_normalize` on every conv and linear layer
of D and Q; a batch norm after a normalized layer would rescale it and undo the Lipschitz bound.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from gan.latents import LatentSpec
from gan.onednn import Linear

# (H, W) -> side of the base feature map that G upsamples from and D flattens.
_BASE_SIDE: dict[tuple[int, int], int] = {(28, 28): 7, (32, 32): 8, (64, 64): 8}
SUPPORTED_SHAPES: frozenset[tuple[int, int, int]] = frozenset((c, h, w) for c in (1, 3) for (h, w) in _BASE_SIDE)

FC_DIM = 1024  # the FC layer between the codes and the base map (G) and at the end of D's trunk
BASE_CHANNELS = 128  # channels of the base feature map
Q_DIM = 128  # hidden size of the Q head
LEAK = 0.1  # InfoGAN's leaky-ReLU slope

DNorm = Literal["none", "spectral"]


def _scaled(size: int, width: float) -> int:
    return max(8, int(round(size * width)))


def _check_shape(image_shape: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    if shape not in SUPPORTED_SHAPES:
        accepted = ", ".join(str(s) for s in sorted(SUPPORTED_SHAPES))
        raise ValueError(f"unsupported image shape {shape}; accepted (C, H, W): {accepted}")
    return shape  # type: ignore[return-value]


def _channel_ladder(image_shape: tuple[int, int, int], width: float) -> tuple[int, list[int]]:
    """Base side and the hidden channels from the base map outwards, e.g. (7, [128, 64]).

    G walks the list forwards (base -> image), D walks it backwards (image -> base).
    """
    _, h, w = image_shape
    side = _BASE_SIDE[(h, w)]
    n_steps = (h // side).bit_length() - 1  # 28/7 = 4 -> 2 steps, 64/8 = 8 -> 3 steps
    channels = [_scaled(BASE_CHANNELS // 2**i, width) for i in range(n_steps)]
    return side, channels


class Generator(nn.Module):
    """G(z, c): noise (B, noise_dim) and codes (B, code_dim) -> images (B, C, H, W) in [-1, 1]."""

    def __init__(self, spec: LatentSpec, image_shape: tuple[int, int, int], width: float = 1.0) -> None:
        super().__init__()
        self.spec = spec
        self.image_shape = _check_shape(image_shape)
        side, channels = _channel_ladder(self.image_shape, width)
        fc_dim = _scaled(FC_DIM, width)
        self.fc = nn.Sequential(
            Linear(spec.input_dim, fc_dim, bias=False),
            nn.BatchNorm1d(fc_dim),
            nn.ReLU(),
            Linear(fc_dim, channels[0] * side * side, bias=False),
            nn.BatchNorm1d(channels[0] * side * side),
            nn.ReLU(),
            nn.Unflatten(1, (channels[0], side, side)),
        )
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
            ]
        layers += [nn.ConvTranspose2d(channels[-1], self.image_shape[0], 4, stride=2, padding=1), nn.Tanh()]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        """z (B, noise_dim), c (B, code_dim) -> (B, C, H, W) in [-1, 1]; noise_dim may be 0."""
        return self.deconv(self.fc(torch.cat([z, c], dim=1)))


def _norm(n: int, batch_norm: bool, dims: int) -> nn.Module:
    """A batch norm over n features (or channels), or nothing where D is spectrally normalized."""
    if not batch_norm:
        return nn.Identity()
    return nn.BatchNorm2d(n) if dims == 2 else nn.BatchNorm1d(n)


def conv_trunk(
    image_shape: tuple[int, int, int], width: float, batch_norm: bool = True, in_channels: int | None = None
) -> tuple[nn.Sequential, int]:
    """D's trunk, images (B, in_channels or C, H, W) -> features (B, fc_dim); returns (trunk, fc_dim).

    ``in_channels`` other than C: the contrastive head's 2C-channel image pairs (:mod:`gan.cr`).
    Without batch norm every layer keeps its bias (with it, the norm would cancel the bias).
    """
    side, channels = _channel_ladder(image_shape, width)
    channels = channels[::-1]  # image -> base
    fc_dim = _scaled(FC_DIM, width)
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels or image_shape[0], channels[0], 4, stride=2, padding=1),
        nn.LeakyReLU(LEAK),
    ]
    for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
        layers += [
            nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=not batch_norm),
            _norm(c_out, batch_norm, 2),
            nn.LeakyReLU(LEAK),
        ]
    layers += [
        nn.Flatten(),
        Linear(channels[-1] * side * side, fc_dim, bias=not batch_norm),
        _norm(fc_dim, batch_norm, 1),
        nn.LeakyReLU(LEAK),
    ]
    return nn.Sequential(*layers), fc_dim


class Discriminator(nn.Module):
    """D and Q on one trunk: images (B, C, H, W) -> real/fake logit (B,) and Q outputs (B, code_dim).

    Q's outputs are laid out as ``spec.split`` expects: k logits per categorical code (no
    softmax), one mean per continuous code. ``batch_norm=False``: the trunk and Q head without
    batch norm (``d_norm = "spectral"``; :func:`build_models` then normalizes the layers).
    """

    def __init__(
        self, spec: LatentSpec, image_shape: tuple[int, int, int], width: float = 1.0, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.spec = spec
        self.image_shape = _check_shape(image_shape)
        self.trunk, fc_dim = conv_trunk(self.image_shape, width, batch_norm)
        q_dim = _scaled(Q_DIM, width)
        self.d_head = Linear(fc_dim, 1)
        self.q_head = nn.Sequential(
            Linear(fc_dim, q_dim, bias=not batch_norm),
            _norm(q_dim, batch_norm, 1),
            nn.LeakyReLU(LEAK),
            Linear(q_dim, spec.code_dim),
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, H, W) -> (real/fake logit (B,), Q outputs (B, code_dim))."""
        h = self.trunk(x)  # (B, fc_dim)
        return self.d_head(h).squeeze(1), self.q_head(h)

    def q(self, x: Tensor) -> Tensor:
        """Q outputs only: x (B, C, H, W) -> (B, code_dim) logits / means."""
        return self.q_head(self.trunk(x))


def init_weights(module: nn.Module) -> None:
    """DCGAN's init: conv and linear weights ~ N(0, 0.02), BN weights ~ N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def spectral_normalize(module: nn.Module, skip: tuple[nn.Module, ...] = ()) -> nn.Module:
    """Spectral normalization (Miyato et al. 2018) on every conv and linear layer of ``module`` but
    ``skip``: torch's parametrization, W / sigma(W) with sigma from one power iteration per forward
    in train mode (as fjxmlzn/InfoGAN-CR ``gan/sn.py``: one per step). Call it after the init, which
    writes the raw weights."""
    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)) and not any(m is s for s in skip):
            spectral_norm(m)
    return module


def build_models(
    spec: LatentSpec, image_shape: tuple[int, int, int], width: float = 1.0, d_norm: DNorm = "none"
) -> tuple[Generator, Discriminator]:
    """G and D (with Q) for ``image_shape``, DCGAN-initialized; uses the global torch RNG.

    ``d_norm``: ``none`` (D with batch norm, InfoGAN) or ``spectral`` (no batch norm in D, every
    conv and linear layer of D and Q spectrally normalized, InfoGAN-CR)."""
    if d_norm not in ("none", "spectral"):
        raise ValueError(f"d_norm must be one of none, spectral; got {d_norm!r}")
    generator = Generator(spec, image_shape, width)
    discriminator = Discriminator(spec, image_shape, width, batch_norm=d_norm == "none")
    init_weights(generator)
    init_weights(discriminator)
    if d_norm == "spectral":
        spectral_normalize(discriminator)
    return generator, discriminator


def param_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def adam(params, lr: float, beta1: float, device: torch.device) -> torch.optim.Adam:
    """Adam with InfoGAN's beta2, fused (one kernel over all parameters) on CPU and CUDA: the
    default per-tensor loop makes several passes over each of the 13.3M parameters of a step."""
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), **fused)
