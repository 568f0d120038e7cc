from __future__ import annotations

import dataclasses

import pytest
import torch

from gan.latents import get_spec
from gan.train import TrainConfig, Trainer
from structsearch.graph import preset

SPEC = get_spec("shapes")
COLLIDER = preset("collider", SPEC).parents()
TINY = TrainConfig(n_steps=6, batch_size=16, width=0.125, log_every=3, checkpoint_every=0)


def _real(n: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _trainer(cfg: TrainConfig = TINY, parents=COLLIDER) -> Trainer:
    data = _real()
    return Trainer(
        cfg,
        SPEC,
        parents,
        lambda b, g: data[torch.randint(len(data), (b,), generator=g)],
        (1, 32, 32),
        torch.device("cpu"),
    )


def test_one_step_updates_g_d_and_q_with_finite_losses() -> None:
    trainer = _trainer()
    before = {name: p.detach().clone() for name, p in [*trainer.G.named_parameters(), *trainer.D.named_parameters()]}
    losses = trainer.train_step()
    assert all(torch.isfinite(v) for v in losses.values())
    changed = {
        name
        for name, p in [*trainer.G.named_parameters(), *trainer.D.named_parameters()]
        if not torch.equal(p, before[name])
    }
    assert any(n.startswith("fc") or n.startswith("deconv") for n in changed)  # G
    assert any(n.startswith("d_head") for n in changed) and any(n.startswith("q_head") for n in changed)


def test_regularizer_gradient_reaches_g_and_q() -> None:
    trainer = _trainer()
    z, c = SPEC.sample(32, torch.Generator().manual_seed(0))
    _, q_out = trainer.D(trainer.G(z, c))
    trainer.struct(c, q_out).backward()
    g_grad = sum(p.grad.abs().sum() for p in trainer.G.parameters() if p.grad is not None)
    q_grad = sum(p.grad.abs().sum() for p in trainer.D.q_head.parameters() if p.grad is not None)
    assert g_grad > 0 and q_grad > 0
    assert trainer.D.d_head.weight.grad is None  # R_G does not touch the real/fake head


def test_lambda_struct_zero_does_not_compute_the_regularizer() -> None:
    trainer = _trainer(dataclasses.replace(TINY, lambda_struct=0.0))
    assert trainer.struct is None
    assert trainer.train_step()["loss/struct"].item() == 0.0


def test_resumed_run_ends_identical_to_an_uninterrupted_one(tmp_path) -> None:
    full = _trainer()
    full.run()
    first = _trainer(dataclasses.replace(TINY, n_steps=3))
    first.run()
    first.save(tmp_path / "ck.pt")
    second = _trainer()
    second.load(tmp_path / "ck.pt")
    assert second.step == 3
    result = second.run()
    assert result.status == "completed" and result.step == 6
    for a, b in zip(full.G.state_dict().values(), second.G.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.D.state_dict().values(), second.D.state_dict().values()):
        assert torch.equal(a, b)


def test_absurd_learning_rate_ends_with_diverged_status() -> None:
    result = _trainer(dataclasses.replace(TINY, lr_g=1e30, lr_d=1e30, n_steps=30, log_every=10)).run()
    assert result.status == "diverged"
    assert result.message.startswith(f"diverged at step {result.step}")
    assert 1 <= result.step <= 10


def test_callback_can_stop_training() -> None:
    seen = []
    result = _trainer().run(callback=lambda step, losses: seen.append((step, losses)) or step >= 3)
    assert result.status == "stopped" and result.step == 3
    assert set(seen[0][1]) == {"loss/d", "loss/g", "loss/info", "loss/struct"}


def test_a_stopped_run_checkpoints_where_it_stopped() -> None:
    saved = []
    result = _trainer().run(callback=lambda step, losses: step >= 3, checkpoint=lambda t: saved.append(t.step))
    assert result.status == "stopped" and saved == [3]


def test_a_stop_asked_at_the_last_step_is_a_completed_run() -> None:
    result = _trainer().run(callback=lambda step, losses: True)
    assert result.status == "stopped" and result.step == 3
    result = _trainer().run(callback=lambda step, losses: step >= 6)
    assert result.status == "completed" and result.step == 6


@pytest.mark.parametrize("form", ["likelihood", "deviance", "both"])
def test_every_form_trains(form: str) -> None:
    result = _trainer(dataclasses.replace(TINY, struct_form=form)).run()
    assert result.status == "completed" and all(map(lambda v: v == v, result.losses.values()))


def test_bf16_autocast_step_is_finite() -> None:
    trainer = _trainer(dataclasses.replace(TINY, precision="bf16"))
    assert all(torch.isfinite(v) for v in trainer.train_step().values())


# ---- code prior ----------------------------------------------------------------------------


def test_graph_prior_entangles_the_collider_child_and_keeps_its_parents_independent() -> None:
    trainer = _trainer(dataclasses.replace(TINY, code_prior="graph"))
    _, c = trainer.sample_latents(20_000, torch.Generator().manual_seed(0))
    corr = torch.corrcoef(c.T)
    assert corr[0, 2] > 0.3 and corr[1, 2] > 0.3  # c3 from c1 and c2
    assert abs(corr[0, 1]) < 0.03
    assert c.min() >= -1 and c.max() <= 1
    assert c.var(0).tolist() == pytest.approx([1 / 3] * 3, rel=0.15)  # variances normalized (before the clip)


def test_graph_prior_normalizes_a_child_of_correlated_parents() -> None:
    """Complete graph: c2 depends on c1, c3 on both; every variance stays near 1/3."""
    trainer = _trainer(dataclasses.replace(TINY, code_prior="graph"), parents=preset("complete", SPEC).parents())
    _, c = trainer.sample_latents(20_000, torch.Generator().manual_seed(1))
    assert c.var(0).tolist() == pytest.approx([1 / 3] * 3, rel=0.15)
    assert torch.corrcoef(c.T)[0, 1] > 0.5


def test_graph_prior_leaves_categorical_codes_independent() -> None:
    from gan.prior import CodePrior

    spec = get_spec("cat4,cont,cont")
    prior = CodePrior(spec, {"q2": ("c2",), "q3": ("c3", "q1", "q2")})  # q1 (categorical) is ignored
    _, c = prior.sample(20_000, torch.Generator().manual_seed(2))
    assert torch.equal(c[:, :4].sum(1), torch.ones(20_000))  # still one-hot
    assert torch.corrcoef(c[:, 4:].T)[0, 1] > 0.5
    assert len(prior.mechanisms) == 1 and prior.mechanisms[0].parents == (4,)


def test_independent_prior_draws_exactly_as_before() -> None:
    trainer = _trainer()
    z, c = trainer.sample_latents(64, torch.Generator().manual_seed(3))
    z0, c0 = SPEC.sample(64, torch.Generator().manual_seed(3))
    assert torch.equal(z, z0) and torch.equal(c, c0)


def test_scores_draw_from_the_graph_prior() -> None:
    from structsearch.datasets.shapes import Shapes
    from structsearch.scores import Evaluator

    trainer = _trainer(dataclasses.replace(TINY, code_prior="graph"))
    dataset = Shapes(n_train=64, n_test=16)
    c = Evaluator(preset("collider", SPEC), dataset, 2000, 0, sample=trainer.sample_latents).c
    assert torch.corrcoef(c.T)[0, 2] > 0.3


def test_graph_prior_and_perfect_map_train() -> None:
    result = _trainer(dataclasses.replace(TINY, code_prior="graph", struct_form="perfect_map")).run()
    assert result.status == "completed" and all(map(lambda v: v == v, result.losses.values()))
