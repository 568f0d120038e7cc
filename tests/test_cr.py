"""InfoGAN-CR's pieces: spectral norm in D (d_norm), two G updates per step (g_steps), the
contrastive regularizer (lambda_cr, cr_start), their checkpoints, their refusals, and the preset."""

from __future__ import annotations

import contextlib
import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from gan.cr import ContrastiveRegularizer, sample_cr_latents
from gan.latents import get_spec
from gan.models import build_models
from gan.stacked import StackError, check_config
from gan.train import TrainConfig, Trainer
from structsearch.cli import main
from structsearch.config import apply_preset

SPEC = get_spec("infogan-cr-dsprites")
INDEPENDENT = {f"q{i + 1}": () for i in range(len(SPEC.codes))}
SHAPE = (1, 32, 32)
TINY = TrainConfig(n_steps=6, batch_size=16, width=0.125, log_every=3, checkpoint_every=0)
CR = dataclasses.replace(TINY, d_norm="spectral", g_steps=2, lambda_cr=2.0, cr_start=2)


def _trainer(cfg: TrainConfig = TINY) -> Trainer:
    data = torch.rand(128, *SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sample = lambda b, g: data[torch.randint(len(data), (b,), generator=g)]  # noqa: E731
    return Trainer(cfg, SPEC, INDEPENDENT, sample, SHAPE, torch.device("cpu"))


def _top_singular_values(module: nn.Module) -> list[float]:
    """sigma_max of every parametrized (spectrally normalized) layer's weight as the forward sees it."""
    with torch.no_grad():
        return [
            float(torch.linalg.matrix_norm(m.weight.flatten(1), ord=2))
            for m in module.modules()
            if parametrize.is_parametrized(m, "weight")
        ]


# ---- spectral norm -------------------------------------------------------------------------------


def test_spectral_norm_holds_every_layer_of_d_and_q_at_one_after_training() -> None:
    trainer = _trainer(dataclasses.replace(TINY, d_norm="spectral"))
    layers = [m for m in trainer.D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in trainer.D.modules())
    with torch.no_grad():
        raw = [float(torch.linalg.matrix_norm(m.parametrizations.weight.original.flatten(1), ord=2)) for m in layers]
    assert sum(s < 0.5 for s in raw) >= len(raw) // 2  # DCGAN's N(0, 0.02) init: the ~1 below is the norm's doing
    before = [m.parametrizations.weight.original.detach().clone() for m in layers]
    trainer.run()
    assert all(not torch.equal(b, m.parametrizations.weight.original) for b, m in zip(before, layers))  # trained
    sigmas = _top_singular_values(trainer.D)
    assert len(sigmas) == len(layers)
    assert all(0.9 < s < 1.05 for s in sigmas), sigmas


def test_d_norm_none_builds_the_d_it_built_before() -> None:
    trainer = _trainer()
    torch.manual_seed(TINY.seed)
    _, before = build_models(SPEC, SHAPE, TINY.width)  # the signature without d_norm
    assert not any(parametrize.is_parametrized(m) for m in trainer.D.modules())
    assert any(isinstance(m, nn.BatchNorm1d) for m in trainer.D.modules())
    ours, theirs = trainer.D.state_dict(), before.state_dict()
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


# ---- the contrastive regularizer ---------------------------------------------------------------


class Stripes(nn.Module):
    """A fixed G in which code k alone sets the brightness of horizontal band k of the image."""

    def __init__(self, side: int, n_codes: int, use_codes: bool = True) -> None:
        super().__init__()
        self.rows = torch.arange(side) * n_codes // side  # the band of each row
        self.side, self.use_codes = side, use_codes

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        bands = c[:, self.rows] if self.use_codes else torch.zeros(len(c), self.side)
        return (bands.unsqueeze(-1).expand(-1, -1, self.side) + 0.1 * z[:, :1, None]).unsqueeze(1)


def _head_losses(G: nn.Module, n_steps: int = 100) -> list[float]:
    torch.manual_seed(0)
    cr = ContrastiveRegularizer(
        dataclasses.replace(TINY, batch_size=32, lambda_cr=1.0), SPEC, SHAPE, torch.device("cpu")
    )
    return [float(cr.head_step(G, contextlib.nullcontext)) for _ in range(n_steps)]


def test_the_head_learns_which_code_a_pair_shares_on_a_fixed_g() -> None:
    chance = math.log(len(SPEC.codes))
    losses = _head_losses(Stripes(SHAPE[1], len(SPEC.codes)))
    assert sum(losses[:5]) / 5 > 0.9 * chance  # starts near chance
    assert sum(losses[-25:]) / 25 < 0.6 * chance, losses[-25:]
    blind = _head_losses(Stripes(SHAPE[1], len(SPEC.codes), use_codes=False))  # a G that ignores its codes
    assert sum(blind[-25:]) / 25 > 0.95 * chance, blind[-25:]


def test_a_pair_shares_z_and_exactly_its_one_code() -> None:
    z, c, c_after, shared = sample_cr_latents(SPEC, 256, torch.Generator().manual_seed(0))
    same = c == c_after  # (B, 5)
    assert torch.equal(same.nonzero()[:, 1], shared)  # each row equal in its shared code only
    assert same.sum(1).eq(1).all()
    assert set(shared.tolist()) == set(range(len(SPEC.codes)))
    assert c.abs().le(1).all() and z.abs().le(1).all()  # Uniform(-1, 1) codes and noise


def test_the_cr_term_starts_at_cr_start_and_reaches_g() -> None:
    trainer = _trainer(CR)
    assert trainer.loss_keys[-1] == "loss/cr"
    first = [trainer.train_step()["loss/cr"] for _ in range(2)]
    assert all(float(x) == 0 for x in first)  # steps 0 and 1: off
    assert trainer.cr.head.out.weight.grad is None  # the head has not run
    later = trainer.train_step()["loss/cr"]
    assert 0.5 * math.log(5) < float(later) < 2 * math.log(5)
    trainer.G.zero_grad(set_to_none=True)
    trainer.cr.g_term(trainer.G, fresh=True).backward()
    assert sum(float(p.grad.abs().sum()) for p in trainer.G.parameters() if p.grad is not None) > 0


def test_a_run_with_the_regularizer_draws_its_images_and_codes_as_one_without() -> None:
    plain, with_cr = _trainer(dataclasses.replace(CR, lambda_cr=0.0)), _trainer(CR)
    for t in (plain, with_cr):
        t.run()
    assert torch.equal(plain.latent_rng.get_state(), with_cr.latent_rng.get_state())
    assert torch.equal(plain.data_rng.get_state(), with_cr.data_rng.get_state())


def test_before_cr_start_a_run_computes_exactly_the_run_without_the_term() -> None:
    plain, late = _trainer(dataclasses.replace(CR, lambda_cr=0.0)), _trainer(dataclasses.replace(CR, cr_start=6))
    for t in (plain, late):
        t.run()
    for a, b in ((plain.G, late.G), (plain.D, late.D)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_run_with_the_new_fields_resumes_identical_to_an_uninterrupted_one(tmp_path) -> None:
    full = _trainer(CR)
    full.run()
    first = _trainer(dataclasses.replace(CR, n_steps=3))
    first.run()
    first.save(tmp_path / "ck.pt")
    second = _trainer(CR)
    second.load(tmp_path / "ck.pt")
    assert second.step == 3
    assert second.run().status == "completed"
    for a, b in ((full.G, second.G), (full.D, second.D), (full.cr.head, second.cr.head)):
        sa, sb = a.state_dict(), b.state_dict()
        assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(full.cr.rng.get_state(), second.cr.rng.get_state())


# ---- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        (dict(d_norm="batch"), "d_norm must be one of none, spectral; got 'batch'"),
        (dict(lambda_cr=-1.0), "lambda_cr must be >= 0"),
        (dict(lambda_cr=1.0, code_prior="graph"), "code_prior='graph'"),
        (dict(cr_start=-5), "cr_start must be a step >= 0, got -5"),
        (dict(g_steps=0), "g_steps must be >= 1, got 0"),
    ],
)
def test_bad_fields_are_refused_by_name(change: dict, phrase: str) -> None:
    with pytest.raises(ValueError, match=None) as err:
        TrainConfig(**change)
    assert phrase in str(err.value) and "\n" not in str(err.value)


def test_the_regularizer_needs_two_codes() -> None:
    data = torch.zeros(8, *SHAPE)
    with pytest.raises(ValueError, match="at least 2 codes"):
        Trainer(CR, get_spec("cont;noise=uniform5"), {"q1": ()}, lambda b, g: data[:b], SHAPE, torch.device("cpu"))


@pytest.mark.parametrize(
    "change", [dict(d_norm="spectral"), dict(lambda_cr=1.0), dict(g_steps=2)], ids=["d_norm", "lambda_cr", "g_steps"]
)
def test_the_stacked_trainer_refuses_what_it_does_not_stack(change: dict) -> None:
    name = next(iter(change))
    with pytest.raises(StackError, match=name):
        check_config(TrainConfig(**change))


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [
        (["--lambda-cr", "-1"], "lambda_cr must be >= 0"),
        (["--g-steps", "0"], "g_steps must be >= 1"),
        (["--cr-start", "-1"], "cr_start must be a step >= 0"),
        (["--lambda-cr", "1", "--code-prior", "graph"], "code_prior='graph'"),
        (["--d-norm", "batch"], "invalid choice: 'batch'"),
    ],
)
def test_bad_flags_exit_2_with_one_line(flags: list[str], phrase: str, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset", "shapes", "--preset", "tiny", "--steps", "1", "--n-eval", "100"]
    code = main([*argv, "--runs-dir", str(tmp_path / "runs"), "--out", str(tmp_path / "r"), *flags])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and "Traceback" not in err
    assert len(lines) == 1 and phrase in lines[-1], err
    assert not (tmp_path / "r").exists()


def test_stacked_optimize_refuses_spectral_norm_in_one_line(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["optimize", "--dataset", "shapes", "--preset", "tiny", "--steps", "1", "--trials", "2", "--stack", "2"]
    code = main([*argv, "--tracking", "none", "--runs-dir", str(tmp_path / "runs"), "--d-norm", "spectral"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "d_norm='spectral'" in err, err


# ---- the preset --------------------------------------------------------------------------------


def test_the_preset_trains_the_authors_recipe_with_its_latent_spec() -> None:
    cfg = apply_preset(TrainConfig(), "infogan-cr-dsprites")
    assert (cfg.d_norm, cfg.g_steps, cfg.batch_size, cfg.lambda_info) == ("spectral", 2, 64, 0.05)
    assert (cfg.lr_g, cfg.lr_d, cfg.beta1) == (1e-3, 2e-3, 0.5)
    assert (cfg.lambda_cr, cfg.cr_start, cfg.n_steps) == (2.0, 288000, 28 * 737280 // 64)
    assert SPEC.noise == "uniform" and SPEC.noise_dim == 5 and [c.kind for c in SPEC.codes] == ["continuous"] * 5
    small = dataclasses.replace(cfg, n_steps=2, batch_size=8, width=0.125, cr_start=1, log_every=1)
    result = _trainer(small).run()
    assert result.status == "completed" and 0 < result.losses["loss/cr"] < 10
