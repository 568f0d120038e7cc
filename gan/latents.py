"""Latent spec: the codes fed to G (c1..cK) and the noise z.

A code is either ``categorical(k)`` (uniform over k classes, fed to G one-hot, read back by Q
as k logits) or ``continuous`` (Uniform(-1, 1), fed as one value, read back as one mean).
Both G's input and Q's output lay the codes out in spec order, each taking ``code.dim``
columns, so one ``split`` serves both.
"""

from __future__ import annotations

import re
import typing
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

Kind = Literal["categorical", "continuous"]


@dataclass(frozen=True)
class Code:
    name: str
    kind: Kind
    n_classes: int = 0  # categorical only

    def __post_init__(self) -> None:
        if self.kind == "categorical" and self.n_classes < 2:
            raise ValueError(f"categorical code {self.name} needs at least 2 classes, got {self.n_classes}")
        if self.kind == "continuous" and self.n_classes != 0:
            raise ValueError(f"continuous code {self.name} takes no class count")

    @property
    def dim(self) -> int:
        """Columns this code takes in G's input and in Q's output."""
        return self.n_classes if self.kind == "categorical" else 1

    def __str__(self) -> str:
        return f"categorical({self.n_classes})" if self.kind == "categorical" else "continuous"


Noise = Literal["normal", "uniform"]
NOISES: tuple[str, ...] = typing.get_args(Noise)


@dataclass(frozen=True)
class LatentSpec:
    """The codes and the noise fed to G. ``noise`` is z's distribution: ``normal`` N(0, I), or
    ``uniform`` Uniform(-1, 1)^noise_dim as in openai/InfoGAN's MNIST launcher (``Uniform(62)``)."""

    codes: tuple[Code, ...]
    noise_dim: int
    noise: Noise = "normal"

    def __post_init__(self) -> None:
        names = [c.name for c in self.codes]
        expected = [f"c{i + 1}" for i in range(len(self.codes))]
        if names != expected:
            raise ValueError(f"codes must be named {', '.join(expected)} in order, got {', '.join(names)}")
        if self.noise_dim < 0:
            raise ValueError(f"noise_dim must be >= 0, got {self.noise_dim}")
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {', '.join(NOISES)}; got {self.noise!r}")

    @property
    def code_dim(self) -> int:
        return sum(c.dim for c in self.codes)

    @property
    def input_dim(self) -> int:
        """Size of G's input: noise then codes."""
        return self.noise_dim + self.code_dim

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.codes)

    def code(self, name: str) -> Code:
        """The code called ``name`` (``c2``) or read back as ``name`` (``q2``)."""
        index = int(name[1:]) - 1
        if name[:1] not in ("c", "q") or not 0 <= index < len(self.codes):
            raise KeyError(f"unknown code {name!r}; this spec has {', '.join(self.names)}")
        return self.codes[index]

    def split(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """(B, code_dim) -> one (B, dim) tensor per code, in spec order."""
        return list(torch.split(flat, [c.dim for c in self.codes], dim=1))

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw (z, c): z of shape (B, noise_dim) from the spec's noise, c of shape (B, code_dim).

        Categorical codes come one-hot, continuous ones Uniform(-1, 1); the codes are independent
        (InfoGAN's prior).
        """
        if self.noise == "normal":
            z = torch.randn(batch_size, self.noise_dim, generator=generator, device=device)
        else:
            z = torch.rand(batch_size, self.noise_dim, generator=generator, device=device) * 2 - 1
        parts = []
        for code in self.codes:
            if code.kind == "categorical":
                k = torch.randint(code.n_classes, (batch_size,), generator=generator, device=device)
                parts.append(F.one_hot(k, code.n_classes).float())
            else:
                parts.append(torch.rand(batch_size, 1, generator=generator, device=device) * 2 - 1)
        c = torch.cat(parts, dim=1) if parts else torch.zeros(batch_size, 0, device=device)
        return z, c

    def text(self) -> str:
        """The spec as :meth:`parse` reads it, e.g. ``"cat10,cont,cont;noise=62"`` (normal noise) or
        ``"cat10,cont,cont;noise=uniform62"``."""
        codes = ",".join(f"cat{c.n_classes}" if c.kind == "categorical" else "cont" for c in self.codes)
        return f"{codes};noise={'uniform' if self.noise == 'uniform' else ''}{self.noise_dim}"

    def describe(self) -> str:
        codes = ", ".join(f"{c.name}={c}" for c in self.codes)
        return f"{codes}; noise {self.noise_dim}" + (" uniform" if self.noise == "uniform" else "")

    @classmethod
    def parse(cls, text: str) -> LatentSpec:
        """Parse ``"cat10,cont,cont;noise=62"`` (also ``categorical(10)``, ``continuous``, and
        ``noise=uniform62`` or ``noise=normal62``)."""
        body, _, noise = text.partition(";")
        noise_match = re.fullmatch(r"\s*noise\s*=\s*(normal|uniform)?\s*(\d+)\s*", noise) if noise else None
        if noise and noise_match is None:
            raise ValueError(
                f"bad noise part {noise!r} in latent spec {text!r}; expected e.g. 'noise=62' or 'noise=uniform62'"
            )
        codes = []
        for i, token in enumerate(t.strip() for t in body.split(",") if t.strip()):
            cat = re.fullmatch(r"cat(?:egorical)?\(?(\d+)\)?", token)
            if cat:
                codes.append(Code(f"c{i + 1}", "categorical", int(cat.group(1))))
            elif re.fullmatch(r"cont(?:inuous)?", token):
                codes.append(Code(f"c{i + 1}", "continuous"))
            else:
                raise ValueError(
                    f"bad code {token!r} in latent spec {text!r}; expected 'cat<k>' or 'cont', e.g. 'cat10,cont,cont;noise=62'"
                )
        if not codes:
            raise ValueError(f"latent spec {text!r} has no codes; expected e.g. 'cat10,cont,cont;noise=62'")
        if noise_match is None:
            return cls(tuple(codes), 0)
        return cls(tuple(codes), int(noise_match.group(2)), noise_match.group(1) or "normal")


def continuous_spec(n_codes: int, noise_dim: int) -> LatentSpec:
    return LatentSpec(tuple(Code(f"c{i + 1}", "continuous") for i in range(n_codes)), noise_dim)


SPECS: dict[str, LatentSpec] = {
    # InfoGAN's MNIST: one 10-way categorical code, two continuous codes, 62 noise dimensions.
    "mnist": LatentSpec((Code("c1", "categorical", 10), Code("c2", "continuous"), Code("c3", "continuous")), 62),
    # openai/InfoGAN's MNIST launcher as it is: the same codes, with noise z ~ Uniform(-1, 1)^62.
    "infogan-mnist": LatentSpec(
        (Code("c1", "categorical", 10), Code("c2", "continuous"), Code("c3", "continuous")), 62, "uniform"
    ),
    # The paper's entangled MNIST variant: three continuous codes (c1, c2 -> c3 in its figure).
    "mnist3": continuous_spec(3, 62),
    "dsprites": continuous_spec(5, 5),
    # InfoGAN-CR's dSprites (fjxmlzn/InfoGAN-CR, InfoGAN-CR_dSprites/gan_task.py): 5 codes and 5 noise
    # dimensions, all Uniform(-1, 1) (`uniform_reg_dim`, `uniform_not_reg_dim`).
    "infogan-cr-dsprites": LatentSpec(continuous_spec(5, 5).codes, 5, "uniform"),
    # Three continuous codes, one per factor of the synthetic `shapes` set, and no noise: each image
    # is a function of its factors, so noise could only take over the codes' job (docs/results.md,
    # "Defaults, from the evidence": with 2 noise dimensions 9 of 15 runs collapsed a code).
    "shapes": continuous_spec(3, 0),
}


def get_spec(name_or_text: str) -> LatentSpec:
    """A preset name (``mnist``) or a spec string (``cat10,cont;noise=62``)."""
    if name_or_text in SPECS:
        return SPECS[name_or_text]
    if any(ch in name_or_text for ch in ",;") or name_or_text.startswith(("cat", "cont")):
        return LatentSpec.parse(name_or_text)
    raise ValueError(
        f"unknown latent spec {name_or_text!r}; expected one of {', '.join(SPECS)} or e.g. 'cat10,cont,cont;noise=62'"
    )
