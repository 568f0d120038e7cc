"""The training step as it was before the CPU speed-ups, for tests pinned to values recorded then."""

from __future__ import annotations

import torch

from gan.onednn import Linear
from gan.train import Trainer


def plain_layers(trainer: Trainer) -> Trainer:
    """``trainer`` with contiguous convs, ``nn.Linear`` and Adam as before issue 17 (fused on CUDA only)."""
    for net in (trainer.G, trainer.D):
        net.to(memory_format=torch.contiguous_format)
        for m in net.modules():
            if type(m) is Linear:
                m.__class__ = torch.nn.Linear
    cfg, fused = trainer.cfg, {"fused": True} if trainer.device.type == "cuda" else {}
    trainer.opt_g = torch.optim.Adam(trainer.G.parameters(), lr=cfg.lr_g, betas=(cfg.beta1, 0.999), **fused)
    trainer.opt_d = torch.optim.Adam(trainer.D.parameters(), lr=cfg.lr_d, betas=(cfg.beta1, 0.999), **fused)
    return trainer
