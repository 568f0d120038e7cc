"""The InfoGAN training loop with the structural regularizer; knows nothing of datasets or runs.

One step, as in InfoGAN (openai/InfoGAN: the Q head and D share the trunk and one optimizer):

1. D and Q: adversarial loss on a real and a generated batch
   + lambda_info * L_info + lambda_struct * R_G on the (detached) generated batch
   [+ lambda_anchor * L_anchor on a batch of anchored real images, when the run has anchors];
2. G: non-saturating adversarial loss + lambda_info * L_info + lambda_struct * R_G.

Anchors (ss-InfoGAN, Spurr et al. 2017; docs/design.md section 8) are training images whose codes
are known: Q is told their values (:func:`gan.losses.anchor_loss`), which pins every run's codes to
the same coordinates. Their batches come from a generator of their own, so a run without anchors
draws exactly the same random numbers as before anchors existed.

With ``lambda_pair > 0`` (:mod:`gan.pairs`) a pair discriminator step on real and generated
intervention pairs runs between the two, and G's loss gains lambda_pair times its pair term.

The codes come from ``cfg.code_prior`` (:mod:`gan.prior`): independent, or a linear SCM over the
graph's q->q edges. With lambda_struct = 0 the regularizer is not computed at all (plain
InfoGAN). Losses stay on the device: the host syncs only every ``log_every`` steps, where a
non-finite loss ends the run as ``diverged at step N`` (N is the first bad step, tracked on the
device without a sync).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import pickle
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from gan.latents import LatentSpec
from gan.losses import anchor_loss, d_loss, g_loss, info_loss
from gan.models import build_models
from gan.pairs import PAIR_KEYS, PairGAN, SampleRealPairs, sample_pair_latents
from gan.prior import CodePrior
from gan.structure import Correction, Form, StructuralLoss

logger = logging.getLogger(__name__)

LOSS_KEYS = ("loss/d", "loss/g", "loss/info", "loss/struct", "loss/anchor")  # train_step's order


def doc_field(text: str, default, **kw):
    """A dataclass field whose documentation (and choices) travel in its metadata, for ``--help``."""
    return field(default=default, metadata={"help": text, **kw})


CodePriorKind = Literal["independent", "graph"]
GanLoss = Literal["bce", "lsgan"]
Precision = Literal["fp32", "bf16"]


def choices_of(cls: type, name: str) -> tuple[str, ...]:
    """The values a ``Literal`` field of dataclass ``cls`` accepts (empty for any other field)."""
    hint = typing.get_type_hints(cls)[name]
    return typing.get_args(hint) if typing.get_origin(hint) is Literal else ()


def check_choices(obj) -> None:
    """Refuse a ``Literal`` field of a dataclass whose value is not one of its choices."""
    for f in dataclasses.fields(obj):
        choices, value = choices_of(type(obj), f.name), getattr(obj, f.name)
        if choices and value not in choices:
            raise ValueError(f"{f.name} must be one of {', '.join(choices)}; got {value!r}")


# Why each default is what it is: docs/results.md, "Defaults, from the evidence" (the recovery benchmark).
@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run computes (saved with every run)."""

    n_steps: int = doc_field("training steps (one D and one G/Q update each)", 5000)
    batch_size: int = doc_field("images per batch", 128)
    lr_g: float = doc_field("Adam learning rate of G (InfoGAN: 1e-3)", 1e-3)
    lr_d: float = doc_field("Adam learning rate of D and Q (InfoGAN: 2e-4)", 2e-4)
    beta1: float = doc_field("Adam beta1", 0.5)
    lambda_info: float = doc_field("weight of InfoGAN's information term", 1.0)
    # 0.1, not 1: codes line up with the factors twice as well (docs/results.md, "Defaults").
    lambda_struct: float = doc_field("weight of the structural regularizer R_G (0: plain InfoGAN)", 0.1)
    # deviance: the form that misleads a graph search least (docs/results.md, "Defaults").
    struct_form: Form = doc_field("form of R_G", "deviance")
    struct_floor: float = doc_field("floor of the fitted variance, standardized units", 0.05)
    struct_edge_cap: float = doc_field("perfect_map: the most reward one edge earns, in nats", 1.0)
    struct_correction: Correction = doc_field(
        "small-batch correction of R_G's per-batch fits: unbiased (a true graph scores ~0), or none (in-sample)",
        "unbiased",
    )
    anchor_labels: float = doc_field(
        "anchored training images, whose factor values or labels Q is told (ss-InfoGAN): a fraction in (0, 1), "
        "or a count >= 1 (1 is one image); 0: off. The subset is fixed by the run's seed (a search's: each trial's)",
        0.0,
    )
    lambda_anchor: float = doc_field("weight of the anchors' supervised term on Q", 1.0)
    code_prior: CodePriorKind = doc_field(
        "prior of the codes fed to G: independent (InfoGAN) or a linear SCM over the graph's q->q edges",
        "independent",
    )
    lambda_pair: float = doc_field(
        "weight of the intervention-pair adversarial loss (0: no pairs; > 0 needs a dataset with pairs and code_prior graph)",
        0.0,
    )
    gan_loss: GanLoss = doc_field("adversarial loss", "bce")
    width: float = doc_field("width multiplier of every hidden layer", 1.0)
    precision: Precision = doc_field("fp32, or bf16 autocast (R_G's solve stays fp32)", "fp32")
    seed: int = doc_field("seed of weights, data order and latent draws", 0)
    log_every: int = doc_field("steps between logged losses (and host syncs)", 50)
    checkpoint_every: int = doc_field("steps between checkpoints (0: only at the end)", 500)

    def __post_init__(self) -> None:
        check_choices(self)
        if self.lambda_pair < 0 or (self.lambda_pair > 0 and self.code_prior != "graph"):
            raise ValueError(
                f"lambda_pair must be >= 0, and > 0 only with code_prior graph (the generated pairs' "
                f"interventions follow the graph's SCM); got lambda_pair={self.lambda_pair}, code_prior={self.code_prior!r}"
            )


def memory_format(device: torch.device) -> torch.memory_format:
    """The conv weights' layout: channels_last on a CPU, where oneDNN's NHWC convolutions are faster
    (docs/results/speed/README.md), torch's default elsewhere (not measured there). Activations follow
    the weights, so inputs need no conversion; the values change only by float rounding."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def adam(params, lr: float, beta1: float, device: torch.device) -> torch.optim.Adam:
    """Adam with InfoGAN's beta2, fused (one kernel over all parameters) on CPU and CUDA: the
    default per-tensor loop makes several passes over each of the 13.3M parameters of a step."""
    fused = {"fused": True} if device.type in ("cpu", "cuda") else {}
    return torch.optim.Adam(params, lr=lr, betas=(beta1, 0.999), **fused)


@dataclass(frozen=True)
class Anchors:
    """M training images whose codes are known, for the supervised term of ss-InfoGAN.

    Args:
        images: ``images(positions)``: positions (B,) int64 in [0, M) on the device -> the anchored
            images there, (B, C, H, W) (a function, so that a large subset need not be resident);
            :meth:`from_tensor` wraps a resident (M, C, H, W) tensor.
        targets: (M, code_dim) on the device, in Q's layout: a categorical code's k columns hold
            its known class one-hot, a continuous code's column its known value.
        mask: one bool per code: which codes are anchored (the others' columns are ignored).
    """

    images: Callable[[torch.Tensor], torch.Tensor]
    targets: torch.Tensor
    mask: tuple[bool, ...]

    @classmethod
    def from_tensor(cls, images: torch.Tensor, targets: torch.Tensor, mask: Sequence[bool]) -> Anchors:
        return cls(lambda positions: images[positions], targets, tuple(bool(m) for m in mask))

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (B, C, H, W), targets (B, code_dim)), uniform with replacement over the M anchors."""
        positions = torch.randint(len(self), (batch_size,), generator=generator, device=self.targets.device)
        return self.images(positions), self.targets[positions]


@dataclass
class TrainResult:
    status: Literal["completed", "diverged", "stopped"]
    step: int
    message: str = ""
    losses: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Models, optimizers, random streams and step counter of one run; checkpointable.

    Args:
        cfg: the training config.
        spec: the latent spec.
        parents: the graph as ``{q node: (parents...)}``: R_G's graph (unless lambda_struct = 0) and,
            with ``code_prior = "graph"``, the SCM the codes are drawn from.
        sample_real: draws (B, C, H, W) real images on ``device`` with the given generator.
        image_shape: (C, H, W).
        device: where models, data and random streams live.
        anchors: the anchored images, given exactly when ``cfg.anchor_labels > 0``; each step then
            adds ``lambda_anchor`` x their supervised term to D/Q's loss, on a batch of
            ``batch_size`` anchors drawn with a generator of their own (seed + 2).
        sample_real_pairs: draws real intervention pairs (x, x'), each (B, C, H, W); needed when
            ``lambda_pair > 0`` (:mod:`gan.pairs`), unused otherwise.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        spec: LatentSpec,
        parents: Mapping[str, Sequence[str]],
        sample_real: Callable[[int, torch.Generator], torch.Tensor],
        image_shape: tuple[int, int, int],
        device: torch.device,
        anchors: Anchors | None = None,
        sample_real_pairs: SampleRealPairs | None = None,
    ) -> None:
        if (cfg.anchor_labels > 0) != (anchors is not None):
            raise ValueError(f"anchor_labels={cfg.anchor_labels} needs anchors given exactly when it is > 0")
        self.cfg, self.spec, self.sample_real, self.device = cfg, spec, sample_real, device
        self.anchors = anchors
        torch.manual_seed(cfg.seed)  # weight init
        layout = memory_format(device)
        self.G, self.D = (m.to(device, memory_format=layout) for m in build_models(spec, image_shape, cfg.width))
        self.prior = CodePrior(spec, parents if cfg.code_prior == "graph" else None)
        self.opt_g = adam(self.G.parameters(), cfg.lr_g, cfg.beta1, device)
        self.opt_d = adam(self.D.parameters(), cfg.lr_d, cfg.beta1, device)
        self.data_rng = torch.Generator(device).manual_seed(cfg.seed)
        self.latent_rng = torch.Generator(device).manual_seed(cfg.seed + 1)
        self.anchor_rng = torch.Generator(device).manual_seed(cfg.seed + 2) if anchors is not None else None
        self.struct = (
            StructuralLoss(
                spec,
                parents,
                cfg.struct_form,
                cfg.struct_floor,
                edge_cap=cfg.struct_edge_cap,
                correction=cfg.struct_correction,
            )
            if cfg.lambda_struct > 0
            else None
        )
        self.pairs = PairGAN(cfg, self.prior, sample_real_pairs, image_shape, device) if cfg.lambda_pair > 0 else None
        self.loss_keys = LOSS_KEYS + (PAIR_KEYS if self.pairs is not None else ())
        self.step = 0

    # ---- one step ------------------------------------------------------------------------------

    def sample_latents(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, c) on the device from the run's code prior (the latent stream unless ``generator``)."""
        return self.prior.sample(batch_size, generator or self.latent_rng, self.device)

    def sample_pair_latents(
        self, batch_size: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(z, c, c') on the device: codes before and after an intervention on one code (:mod:`gan.pairs`)."""
        return sample_pair_latents(self.prior, batch_size, generator, self.device)

    def _autocast(self):
        enabled = self.cfg.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _code_terms(self, c: torch.Tensor, q_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        info = info_loss(self.spec, c, q_out)
        if self.struct is None:
            return info, info.new_zeros(())
        with torch.autocast(self.device.type, enabled=False):  # the closed-form solve stays fp32
            return info, self.struct(c, q_out.float())

    def _anchor_term(self) -> torch.Tensor:
        """The anchors' supervised term on a fresh batch of them (call inside the autocast)."""
        images, targets = self.anchors.batch(self.cfg.batch_size, self.anchor_rng)
        return anchor_loss(self.spec, targets, self.D.q(images), self.anchors.mask)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One D/Q update and one G update; returns the detached losses (no host sync)."""
        cfg = self.cfg
        real = self.sample_real(cfg.batch_size, self.data_rng)
        z, c = self.sample_latents(cfg.batch_size)
        with self._autocast():
            fake = self.G(z, c)
            real_logit, _ = self.D(real)
            fake_logit, q_out = self.D(fake.detach())
            info, struct = self._code_terms(c, q_out)
            loss_d = d_loss(real_logit, fake_logit, cfg.gan_loss) + cfg.lambda_info * info + cfg.lambda_struct * struct
            if self.anchors is None:
                anchor = torch.zeros((), device=self.device)
            else:
                anchor = self._anchor_term()
                loss_d = loss_d + cfg.lambda_anchor * anchor
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        pair = {} if self.pairs is None else {"loss/d_pair": self.pairs.d_step(self.G, self._autocast)}

        with self._autocast():
            fake_logit, q_out = self.D(fake)
            info, struct = self._code_terms(c, q_out)
            loss_g = g_loss(fake_logit, cfg.gan_loss) + cfg.lambda_info * info + cfg.lambda_struct * struct
            if self.pairs is not None:
                pair_g = self.pairs.g_term()
                loss_g = loss_g + cfg.lambda_pair * pair_g
                pair = {"loss/pair": pair_g.detach()} | pair
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.step += 1
        return {
            "loss/d": loss_d.detach(),
            "loss/g": loss_g.detach(),
            "loss/info": info.detach(),
            "loss/struct": struct.detach(),
            "loss/anchor": anchor.detach(),
        } | pair

    # ---- the loop ------------------------------------------------------------------------------

    def run(
        self,
        callback: Callable[[int, dict[str, float]], bool | None] | None = None,
        checkpoint: Callable[[Trainer], None] | None = None,
    ) -> TrainResult:
        """Train up to ``cfg.n_steps``; every ``log_every`` steps, sync once and call
        ``callback(step, mean losses)``, which may return True to stop (a pruner, a time limit)
        before the last step.
        ``checkpoint(self)`` runs every ``checkpoint_every`` steps, at the end, and on a stop."""
        cfg = self.cfg
        sums = torch.zeros(len(self.loss_keys), device=self.device)
        count = 0
        first_bad = torch.full((), -1, dtype=torch.long, device=self.device)
        means: dict[str, float] = {}
        self.G.train()
        self.D.train()
        while self.step < cfg.n_steps:
            step_losses = self.train_step()
            losses = torch.stack([step_losses[k].float() for k in self.loss_keys])
            bad = ~torch.isfinite(losses).all()
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, self.step), first_bad)
            sums += losses
            count += 1
            if self.step % cfg.log_every and self.step < cfg.n_steps:
                continue
            values = sums.div(count).tolist()  # the one host sync per log interval
            bad_step = int(first_bad)
            if bad_step >= 0:
                return TrainResult("diverged", bad_step, f"diverged at step {bad_step}: a loss became NaN or infinite")
            means = dict(zip(self.loss_keys, values))
            sums.zero_()
            count = 0
            if callback is not None and callback(self.step, means) and self.step < cfg.n_steps:
                if checkpoint is not None:  # a stopped run can be resumed from where it stopped
                    checkpoint(self)
                return TrainResult("stopped", self.step, f"stopped at step {self.step} by the caller", means)
            if checkpoint is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                checkpoint(self)
        if checkpoint is not None:
            checkpoint(self)
        return TrainResult("completed", self.step, f"completed {self.step} steps", means)

    # ---- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict:
        pairs = {} if self.pairs is None else {"pairs": self.pairs.state_dict()}
        return (
            pairs
            | {
                "step": self.step,
                "config": asdict(self.cfg),
                "G": self.G.state_dict(),
                "D": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict(),
                "data_rng": self.data_rng.get_state(),
                "latent_rng": self.latent_rng.get_state(),
            }
            | ({"anchor_rng": self.anchor_rng.get_state()} if self.anchor_rng is not None else {})
        )

    def load_state_dict(self, state: Mapping) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.data_rng.set_state(state["data_rng"].cpu())
        self.latent_rng.set_state(state["latent_rng"].cpu())
        if self.anchor_rng is not None and "anchor_rng" in state:
            self.anchor_rng.set_state(state["anchor_rng"].cpu())
        if self.pairs is not None:
            self.pairs.load_state_dict(state["pairs"])
        self.step = int(state["step"])

    def save(self, path: str | os.PathLike) -> Path:
        """Atomic checkpoint: written beside, then renamed, so a kill never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)
        return path

    def load(self, path: str | os.PathLike) -> None:
        """Restore a checkpoint :meth:`save` wrote. Only tensors and plain data are unpickled
        (``weights_only``): a file holding anything else is refused unread, never run. Any file
        that does not load raises :class:`CheckpointError` naming it."""
        path = Path(path)
        try:
            with warnings.catch_warnings():  # torch's warnings about a foreign pickle: the error says it all
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(path, map_location=self.device, weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError) as err:
            raise CheckpointError(path, _unreadable(path, err)) from None
        try:
            self.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            reason = f"it lacks {first}" if isinstance(err, KeyError) else f"it does not fit this run's models: {first}"
            raise CheckpointError(path, reason[:300]) from None


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this run: one line naming it, why, and what to do."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"{path} is not a valid structsearch checkpoint ({reason}); resume from an earlier copy of it, "
            "or start the run over in a new folder"
        )
        self.path = path


def _unreadable(path: Path, err: Exception) -> str:
    """Why torch could not read ``path``, in our words (torch's own advice is never passed on)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if isinstance(err, pickle.UnpicklingError):
        return "it holds something other than tensors and plain data, or is not a torch file; nothing in it was run"
    return "it is truncated or not a torch checkpoint"


@contextlib.contextmanager
def evaluating(*modules: torch.nn.Module):
    """Eval mode and no grad inside, the previous modes restored after."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
