"""K training runs in one process: their G's and D's trained as one set of stacked parameters.

A small GAN leaves a large GPU mostly idle, and K processes sharing it pay K times the kernel
launches. :class:`StackedTrainer` takes K ordinary :class:`~gan.train.Trainer` objects (their
configs may differ only in ``seed``, their graphs freely) and trains them as one model whose every
parameter and buffer has a leading K dimension (``torch.func.stack_module_state``): each net runs
once per step under ``torch.vmap`` of ``torch.func.functional_call``, so a conv of K models is one
grouped conv, a linear layer one batched matmul.

What stays per model, so that model k computes what ``Trainer(cfg_k, ...)`` alone would:

* its random streams: real batches from trainer k's ``data_rng``, latents from its ``latent_rng``
  under its own code prior (and anchors from its ``anchor_rng``): the draws loop over K;
* BatchNorm: the running statistics are stacked buffers, passed through vmap as batched inputs, so
  train-mode BN normalizes each model's batch by its own statistics and updates its own running
  averages in place (vmap accepts an in-place update of a batched buffer; it refuses only an
  unbatched one, which is why ``replace_all_batch_norm_modules_`` exists, and that would drop the
  running statistics the scores read);
* R_G: each model has its own graph; :class:`gan.structure.StackedStructuralLoss` computes all K
  graphs' fits in one batched solve (graphs with fewer fits padded with fits of weight 0), so its
  op count does not grow with K but for the categorical codes' configuration weights;
* the optimizers: one Adam per side over the stacked (K, ...) tensors. Adam is elementwise, and its
  step count and bias corrections are shared by all K, so it equals K Adams given the same
  hyperparameters (checked).

The losses of a step equal K separate trainers' to float rounding (vmap's batched kernels sum in
another order); tests/test_stacked.py measures it. :meth:`StackedTrainer.export` writes model k's
parameters, buffers and optimizer state back into trainer k, whose ``state_dict`` is then an
ordinary checkpoint: scoring, evaluation and resume need nothing new.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state

from gan.losses import anchor_loss, d_loss, g_loss, info_loss
from gan.structure import StackedStructuralLoss
from gan.train import TrainConfig, Trainer, TrainResult

Callback = Callable[[int, dict[str, float]], bool | None]
Checkpoint = Callable[[Trainer], None]
SHARED_EXEMPT = frozenset({"seed"})
"""The only training fields stacked runs may differ in (their graphs may differ too)."""


class StackError(ValueError):
    """Trainers that cannot be stacked: one line naming the field that differs."""


def check_stackable(trainers: Sequence[Trainer]) -> None:
    """Refuse trainers that differ in anything but seed and graph, or that use what is not stacked."""
    if not trainers:
        raise StackError("a stack needs at least one trainer")
    first = trainers[0]
    for f in dataclasses.fields(first.cfg):
        values = [getattr(t.cfg, f.name) for t in trainers]
        if f.name not in SHARED_EXEMPT and any(v != values[0] for v in values):
            raise StackError(f"stacked runs may differ only in seed and graph; {f.name} differs: {values}")
    check_config(first.cfg)
    others = {
        "latent spec": [t.spec for t in trainers],
        "device": [t.device for t in trainers],
        "step": [t.step for t in trainers],
    }
    for name, values in others.items():
        if any(v != values[0] for v in values):
            raise StackError(f"stacked runs must share their {name}; got {values}")
    for side in ("opt_g", "opt_d"):
        groups = [_hyperparameters(getattr(t, side)) for t in trainers]
        if any(g != groups[0] for g in groups):
            raise StackError(f"stacked runs must share the {side} hyperparameters; got {groups}")


def check_config(cfg: TrainConfig) -> None:
    """Refuse a training config whose runs cannot be stacked at all (one line naming the field)."""
    if cfg.lambda_pair > 0:
        raise StackError(
            f"lambda_pair={cfg.lambda_pair}: intervention pairs have a discriminator of their own, "
            "which is not stacked; train these runs one at a time"
        )
    if cfg.d_norm != "none":
        raise StackError(
            f"d_norm={cfg.d_norm!r}: spectral norm's parametrization is not stacked (vmap of functional_call "
            "does not carry its power-iteration state); use d_norm none, or train these runs one at a time"
        )
    if cfg.lambda_cr > 0 or cfg.g_steps != 1:
        raise StackError(
            f"lambda_cr={cfg.lambda_cr:g}, g_steps={cfg.g_steps}: the contrastive head and a second G update are "
            "not stacked; use lambda_cr 0 and g_steps 1, or train these runs one at a time"
        )
    if cfg.lambda_struct > 0 and cfg.struct_fit != "batch":
        raise StackError(
            f"struct_fit={cfg.struct_fit!r}: a pooled R_G's pool is not stacked; use struct_fit batch, "
            "or train these runs one at a time"
        )
    if cfg.precision != "fp32":
        raise StackError(
            f"precision={cfg.precision!r}: stacked training runs in fp32 only (torch 2.13's vmapped batch norm "
            "refused bf16 activations with fp32 running statistics on CPU); use precision fp32"
        )


def _hyperparameters(opt: torch.optim.Optimizer) -> list[dict]:
    return [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]


class StackedTrainer:
    """K trainers' models trained together as stacked parameters; results and checkpoints per model.

    Args:
        trainers: K trainers at the same step (fresh, or each restored from its own checkpoint),
            differing only in seed and graph (:func:`check_stackable`). They keep their random
            streams, priors and R_G, and receive their trained state from :meth:`export`.
    """

    def __init__(self, trainers: Sequence[Trainer]) -> None:
        check_stackable(trainers)
        self.trainers = list(trainers)
        first = self.trainers[0]
        self.cfg, self.spec, self.device, self.step = first.cfg, first.spec, first.device, first.step
        self.loss_keys = first.loss_keys
        self.g_params, self.g_buffers = stack_module_state([t.G for t in self.trainers])
        self.d_params, self.d_buffers = stack_module_state([t.D for t in self.trainers])
        # Shape-only copies that functional_call runs with the stacked tensors swapped in.
        self.g_base, self.d_base = (copy.deepcopy(m).to("meta").train() for m in (first.G, first.D))
        self.opt_g = self._stacked_adam(first.opt_g, self.g_params, [t.opt_g for t in self.trainers])
        self.opt_d = self._stacked_adam(first.opt_d, self.d_params, [t.opt_d for t in self.trainers])
        # every model's R_G on its own graph, in one batched solve (configs equal but for seed: one spec and options)
        self.struct = StackedStructuralLoss([t.struct for t in self.trainers]) if first.struct is not None else None
        self._means: list[dict[str, float]] = [{} for _ in self.trainers]  # each model's last logged means

    def __len__(self) -> int:
        return len(self.trainers)

    @staticmethod
    def _stacked_adam(
        like: torch.optim.Optimizer, params: Mapping[str, Tensor], per_model: Sequence[torch.optim.Optimizer]
    ) -> torch.optim.Optimizer:
        """One optimizer of ``like``'s kind and hyperparameters over the stacked tensors, with the K
        optimizers' states (restored trainers) stacked in; the parameter order is the modules'."""
        opt = type(like)(params.values(), **_hyperparameters(like)[0])
        states = [o.state_dict() for o in per_model]
        if states[0]["state"]:
            stacked = {
                i: {
                    key: (v if key == "step" else torch.stack([s["state"][i][key] for s in states]))
                    for key, v in st.items()
                }
                for i, st in states[0]["state"].items()
            }
            opt.load_state_dict({"state": stacked, "param_groups": opt.state_dict()["param_groups"]})
        return opt

    # ---- one step ------------------------------------------------------------------------------

    def _g(self, z: Tensor, c: Tensor) -> Tensor:
        """G of every model: z (K, B, noise_dim), c (K, B, code_dim) -> (K, B, C, H, W)."""
        return torch.vmap(partial(_call, self.g_base))(self.g_params, self.g_buffers, z, c)

    def _d(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """D and Q of every model: x (K, B, C, H, W) -> logits (K, B), Q outputs (K, B, code_dim)."""
        return torch.vmap(partial(_call, self.d_base))(self.d_params, self.d_buffers, x)

    def _q(self, x: Tensor) -> Tensor:
        """Q only (``Discriminator.q``): x (K, B, C, H, W) -> (K, B, code_dim)."""
        return torch.vmap(partial(_call_q, self.d_base))(self.d_params, self.d_buffers, x)

    def _code_terms(self, c: Tensor, q_out: Tensor) -> tuple[Tensor, Tensor]:
        """InfoGAN's term (K,) vmapped, R_G (K,) of every model on its own graph, batched."""
        info = torch.vmap(partial(info_loss, self.spec))(c, q_out)
        if not self.cfg.struct_active(self.step):
            return info, info.new_zeros(len(self))
        return info, self.struct(c, q_out)

    def _anchor_term(self) -> Tensor:
        """Each model's anchors' supervised term (K,) on a fresh batch of its own anchors."""
        batches = [t.anchors.batch(self.cfg.batch_size, t.anchor_rng) for t in self.trainers]
        images, targets = (torch.stack(x) for x in zip(*batches))
        mask = self.trainers[0].anchors.mask
        return torch.vmap(partial(anchor_loss, self.spec, mask=mask))(targets, self._q(images))

    def _draw(self) -> tuple[Tensor, Tensor, Tensor]:
        """Real images, z and c of every model, each from that model's own streams (a loop over K)."""
        b = self.cfg.batch_size
        real = torch.stack([t.sample_real(b, t.data_rng) for t in self.trainers])
        z, c = (torch.stack(x) for x in zip(*(t.sample_latents(b) for t in self.trainers)))
        return real, z, c

    def train_step(self) -> dict[str, Tensor]:
        """One D/Q update and one G update of every model, as :meth:`Trainer.train_step` does for one
        (in fp32: :func:`check_config`); returns the detached losses, each (K,) (no host sync)."""
        cfg = self.cfg
        real, z, c = self._draw()
        fake = self._g(z, c)
        real_logit, _ = self._d(real)
        fake_logit, q_out = self._d(fake.detach())
        info, struct = self._code_terms(c, q_out)
        adversarial = torch.vmap(partial(d_loss, kind=cfg.gan_loss))(real_logit, fake_logit)
        loss_d = adversarial + cfg.lambda_info * info + cfg.lambda_struct_d * struct
        anchor = torch.zeros(len(self), device=self.device)
        if self.trainers[0].anchors is not None:
            anchor = self._anchor_term()
            loss_d = loss_d + cfg.lambda_anchor * anchor
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.sum().backward()  # the models share no parameter: each slice gets its own gradient
        self.opt_d.step()

        fake_logit, q_out = self._d(fake)
        info, struct = self._code_terms(c, q_out)
        adversarial = torch.vmap(partial(g_loss, kind=cfg.gan_loss))(fake_logit)
        loss_g = adversarial + cfg.lambda_info * info + cfg.lambda_struct_g * struct
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.sum().backward()
        self.opt_g.step()
        self.step += 1
        return {
            "loss/d": loss_d.detach(),
            "loss/g": loss_g.detach(),
            "loss/info": info.detach(),
            "loss/struct": struct.detach(),
            "loss/anchor": anchor.detach(),
        }

    # ---- the loop ------------------------------------------------------------------------------

    def run(
        self,
        callbacks: Sequence[Callback | None] | None = None,
        checkpoints: Sequence[Checkpoint | None] | None = None,
    ) -> list[TrainResult]:
        """Train every model up to ``cfg.n_steps``: :meth:`Trainer.run` for each, side by side.

        Every ``log_every`` steps the host syncs once; then, for each model still running, model k's
        weights are exported into trainer k and ``callbacks[k](step, its mean losses)`` is called, which
        may return True to stop that model. ``checkpoints[k](trainer k)`` runs every
        ``checkpoint_every`` steps, at the end and on a stop. A model that diverged, or was stopped,
        is done: its result and trainer keep the state it ended in. Its slice is still computed
        until every model is done (masking it would save no launch), but never exported again.
        """
        n, cfg = len(self), self.cfg
        callbacks = list(callbacks or [None] * n)
        checkpoints = list(checkpoints or [None] * n)
        results: list[TrainResult | None] = [None] * n
        sums = torch.zeros(n, len(self.loss_keys), device=self.device)
        first_bad = torch.full((n,), -1, dtype=torch.long, device=self.device)
        count = 0
        while self.step < cfg.n_steps and None in results:
            step_losses = self.train_step()
            losses = torch.stack([step_losses[k].float() for k in self.loss_keys], dim=1)  # (K, n_keys)
            bad = ~torch.isfinite(losses).all(1)
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, self.step), first_bad)
            sums += losses
            count += 1
            if self.step % cfg.log_every and self.step < cfg.n_steps:
                continue
            values, bad_steps = sums.div(count).tolist(), first_bad.tolist()  # the one host sync
            sums.zero_()
            count = 0
            for k in (k for k in range(n) if results[k] is None):
                results[k] = self._logged(
                    k, bad_steps[k], dict(zip(self.loss_keys, values[k])), callbacks[k], checkpoints[k]
                )
        for k in (k for k in range(n) if results[k] is None):
            self.export(k)
            if checkpoints[k] is not None:
                checkpoints[k](self.trainers[k])
            results[k] = TrainResult("completed", self.step, f"completed {self.step} steps", self._means[k])
        return results  # type: ignore[return-value]

    def _logged(
        self, k: int, bad_step: int, means: dict[str, float], callback: Callback | None, checkpoint: Checkpoint | None
    ) -> TrainResult | None:
        """Model k at a log step: its result if it ended here (diverged, or stopped), else None."""
        if bad_step >= 0:
            return TrainResult("diverged", bad_step, f"diverged at step {bad_step}: a loss became NaN or infinite")
        self._means[k] = means
        step, trainer = self.step, self.export(k, optimizer=False)  # what a callback scores
        if callback is not None and callback(step, means) and step < self.cfg.n_steps:
            self.export(k)  # a stopped model ends as a whole trainer, checkpointed or not
            if checkpoint is not None:
                checkpoint(trainer)
            return TrainResult("stopped", step, f"stopped at step {step} by the caller", means)
        if checkpoint is not None and self.cfg.checkpoint_every and step % self.cfg.checkpoint_every == 0:
            checkpoint(self.export(k))
        return None

    # ---- export --------------------------------------------------------------------------------

    @torch.no_grad()
    def export(self, k: int, optimizer: bool = True) -> Trainer:
        """Write model k's parameters, buffers, step and (unless not ``optimizer``) optimizer states
        into trainer k; returns it. Trainer k's ``state_dict``/``save`` is then an ordinary
        checkpoint of that run (the weights alone suffice to score it)."""
        trainer = self.trainers[k]
        trainer.step = self.step
        for module, params, buffers in (
            (trainer.G, self.g_params, self.g_buffers),
            (trainer.D, self.d_params, self.d_buffers),
        ):
            stacked = params | buffers
            for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                tensor.copy_(stacked[name][k])
        if not optimizer:
            return trainer
        for opt, own in ((self.opt_g, trainer.opt_g), (self.opt_d, trainer.opt_d)):
            state = opt.state_dict()
            own.load_state_dict(
                {
                    "state": {
                        i: {key: (v.clone() if key == "step" else v[k].clone()) for key, v in st.items()}
                        for i, st in state["state"].items()
                    },
                    "param_groups": own.state_dict()["param_groups"],
                }
            )
        return trainer

    def state_dict(self, k: int) -> dict:
        """Model k's checkpoint, exactly what a plain ``Trainer`` of that run saves and loads."""
        return self.export(k).state_dict()


def _call(base: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], *args: Tensor):
    """``base(*args)`` with one model's slice of the stacked parameters and buffers swapped in."""
    return functional_call(base, (params, buffers), args)


def _call_q(base: nn.Module, params: Mapping[str, Tensor], buffers: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """``Discriminator.q`` (trunk, then Q head) under :func:`_call`'s swap."""
    state = params | buffers
    h = functional_call(base.trunk, _under(state, "trunk."), (x,))
    return functional_call(base.q_head, _under(state, "q_head."), (h,))


def _under(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {name.removeprefix(prefix): t for name, t in state.items() if name.startswith(prefix)}
