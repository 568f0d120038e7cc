"""StackedTrainer: K stacked models compute what K separate Trainers compute.

Why most comparisons run in float64. In fp32 the stacked step's losses equal the separate ones to
~6e-6 before any update (``test_fp32_first_step_equals_separate_trainers``), but vmap's batched
kernels round in another order, and training itself amplifies rounding: Adam's first updates are
about lr * sign(gradient), so a gradient element near 0 whose sign rounding flips moves by ~2 lr.
Measured here (width 0.125, batch 16, 5 steps, mnist codes): a plain Trainer whose one weight is
moved by one ulp ends with losses up to 7.4e-2 and weights up to 5.9e-3 away from the unmoved
one, the size of the stacked-vs-separate fp32 gap (losses 3.0e-2, weights 3.2e-3). In float64
(models, data and latents; R_G and info_loss still compute in fp32, by design) the stacked state
equals the separate one to 6e-14 after 5 steps and the losses to 5e-7, so the tolerances below
(1e-5 for losses; 1e-10 for weights, batch-norm buffers and Adam states) test the stacking itself.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gan.latents import get_spec
from gan.stacked import StackedTrainer, StackError
from gan.train import Anchors, TrainConfig, Trainer
from structsearch.graph import preset

SPEC = get_spec("mnist")  # a categorical code too: R_G's soft-count path is stacked as well
SHAPE = (1, 28, 28)
GRAPHS = ("collider", "chain", "independent")
SEEDS = (3, 11, 42)
TINY = TrainConfig(n_steps=5, batch_size=16, width=0.125, log_every=1, checkpoint_every=0)
LOSS_TOL, STATE_TOL = 1e-5, 1e-10


def _data() -> torch.Tensor:
    return torch.rand(256, *SHAPE, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _trainer(seed: int, graph: str, cfg: TrainConfig = TINY, f64: bool = True, **kw) -> Trainer:
    """A trainer of the tiny net; with ``f64``, its models, data and latents in float64 (module
    docstring). R_G keeps computing in fp32, as it does by design."""
    data = _data().double() if f64 else _data()
    trainer = Trainer(
        dataclasses.replace(cfg, seed=seed),
        SPEC,
        preset(graph, SPEC).parents(),
        lambda b, g: data[torch.randint(len(data), (b,), generator=g)],
        SHAPE,
        torch.device("cpu"),
        **kw,
    )
    if f64:
        trainer.G.double(), trainer.D.double()  # in place: the optimizers keep their parameters
        draw = trainer.sample_latents
        trainer.sample_latents = lambda b, generator=None: tuple(x.double() for x in draw(b, generator))
    return trainer


def _trainers(cfg: TrainConfig = TINY, k: int = 3, f64: bool = True, **kw) -> list[Trainer]:
    return [_trainer(s, g, cfg, f64, **kw) for s, g in zip(SEEDS[:k], GRAPHS[:k])]


def _state(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every tensor of a trainer's checkpoint that training changes: weights, BN statistics, Adam."""
    state = {f"G.{k}": v for k, v in trainer.G.state_dict().items()}
    state |= {f"D.{k}": v for k, v in trainer.D.state_dict().items()}
    for side in ("opt_g", "opt_d"):
        for i, st in getattr(trainer, side).state_dict()["state"].items():
            state |= {f"{side}.{i}.{k}": v for k, v in st.items()}
    return state


def _assert_same_state(a: Trainer, b: Trainer) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys() and a.step == b.step
    worst = max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)
    assert worst <= STATE_TOL, f"largest difference {worst:.3g}"


def _steps(trainers: list[Trainer], stacked: StackedTrainer, n: int, relative: bool = False) -> None:
    """``n`` steps of both, asserting every loss of every model agrees to 1e-5 at every step (with
    ``relative``, to 1e-5 of the loss where it is above 1 in size)."""
    for step in range(n):
        separate = [t.train_step() for t in trainers]
        together = stacked.train_step()
        for key, values in together.items():
            expected = torch.stack([s[key] for s in separate])
            assert values.shape == (len(trainers),)
            tol = LOSS_TOL * (expected.abs().clamp_min(1) if relative else 1)
            assert ((values - expected).abs() <= tol).all(), (
                f"step {step + 1} {key}: {values.tolist()} != {expected.tolist()}"
            )


@pytest.mark.parametrize("change", [{"code_prior": "independent"}, {"code_prior": "graph"}, {"struct_start": 3}])
def test_stacked_losses_and_state_equal_separate_trainers(change: dict) -> None:
    cfg = dataclasses.replace(TINY, **change)
    separate = _trainers(cfg)
    stacked = StackedTrainer(_trainers(cfg))
    _steps(separate, stacked, 5)
    assert stacked.step == 5
    for k, trainer in enumerate(separate):
        _assert_same_state(trainer, stacked.export(k))
    bn = stacked.export(1).G.fc[1]  # the running statistics are each model's own, not shared
    assert not torch.equal(bn.running_mean, stacked.export(0).G.fc[1].running_mean)
    assert int(bn.num_batches_tracked) == 5


def test_fp32_first_step_equals_separate_trainers() -> None:
    """Before any update, fp32 losses agree to rounding (measured: 6.4e-6 on an R_G of -2.56, 7e-7 on
    the others; relative, since R_G's closed-form fits amplify the inputs' rounding by its size)."""
    separate, stacked = _trainers(f64=False), StackedTrainer(_trainers(f64=False))
    _steps(separate, stacked, 1, relative=True)


def test_stacked_with_anchors_equals_separate_trainers() -> None:
    cfg = dataclasses.replace(TINY, anchor_labels=8, n_steps=3)
    images = _data()[:8].double()
    targets = torch.cat([torch.eye(10)[torch.arange(8)], torch.rand(8, 2) * 2 - 1], dim=1).double()  # Q's layout
    anchors = Anchors.from_tensor(images, targets, (True, True, False))
    separate = _trainers(cfg, k=2, anchors=anchors)
    stacked = StackedTrainer(_trainers(cfg, k=2, anchors=anchors))
    _steps(separate, stacked, 3)
    assert (stacked.train_step()["loss/anchor"] > 0).all()


def test_a_stacked_checkpoint_is_an_ordinary_one(tmp_path) -> None:
    """Stacked for 3 steps, saved, resumed by a plain Trainer for 2: the same as 5 plain steps; and
    plain checkpoints at step 3 restored into trainers that are then stacked: the same again."""
    reference = _trainers(k=2)
    for trainer in reference:
        for _ in range(5):
            trainer.train_step()
    stacked = StackedTrainer(_trainers(dataclasses.replace(TINY, n_steps=3), k=2))
    stacked.run()
    for k in range(2):
        stacked.export(k).save(tmp_path / f"stacked-{k}.pt")
        plain = _trainer(SEEDS[k], GRAPHS[k])
        plain.load(tmp_path / f"stacked-{k}.pt")
        plain.run()
        _assert_same_state(reference[k], plain)

    restored = _trainers(k=2)
    for k, trainer in enumerate(restored):
        trainer.load(tmp_path / f"stacked-{k}.pt")
    resumed = StackedTrainer(restored)
    assert resumed.step == 3
    resumed.run()
    for k in range(2):
        _assert_same_state(reference[k], resumed.export(k))


def test_run_ends_each_model_on_its_own() -> None:
    """One model stopped by its callback, one diverged, one completed; the NaNs stay in their slice."""
    cfg = dataclasses.replace(TINY, n_steps=6, log_every=2, checkpoint_every=2)
    trainers = _trainers(cfg)
    with torch.no_grad():
        trainers[2].G.fc[0].weight[0, 0] = float("nan")
    stacked = StackedTrainer(trainers)
    saved: list[tuple[int, int]] = []

    def checkpoint(k):
        return lambda trainer: saved.append((k, trainer.step))

    logged: list[tuple[int, int]] = []

    def callback(k):
        def on_log(step: int, losses: dict[str, float]) -> bool:
            logged.append((k, step))
            assert set(losses) == set(stacked.loss_keys)
            return k == 1 and step == 4

        return on_log

    results = stacked.run([callback(k) for k in range(3)], [checkpoint(k) for k in range(3)])
    assert [r.status for r in results] == ["completed", "stopped", "diverged"]
    assert [r.step for r in results] == [6, 4, 1]
    assert results[2].message == "diverged at step 1: a loss became NaN or infinite"
    assert logged == [(0, 2), (1, 2), (0, 4), (1, 4), (0, 6)]
    alone, alone_saved = _trainer(SEEDS[0], GRAPHS[0], cfg), []
    alone.run(checkpoint=lambda trainer: alone_saved.append(trainer.step))
    assert [step for k, step in saved if k == 0] == alone_saved  # as a plain run checkpoints
    assert [step for k, step in saved if k == 1] == [2, 4]  # the stop is checkpointed
    assert all(k != 2 for k, _ in saved)  # the divergence is not
    assert stacked.trainers[1].step == 4  # a stopped model keeps the state it stopped in
    _assert_same_state(alone, stacked.trainers[0])
    assert results[0].losses.keys() == set(stacked.loss_keys)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"lr_g": 2e-3}, "lr_g differs"),
        ({"batch_size": 8}, "batch_size differs"),
        ({"struct_form": "likelihood"}, "struct_form differs"),
    ],
)
def test_refuses_configs_that_differ_in_more_than_seed_and_graph(change: dict, named: str) -> None:
    trainers = [_trainer(1, "collider"), _trainer(2, "chain", dataclasses.replace(TINY, **change))]
    with pytest.raises(StackError, match=named):
        StackedTrainer(trainers)


def test_refuses_what_is_not_stacked() -> None:
    with pytest.raises(StackError, match="precision='bf16'"):
        StackedTrainer(_trainers(dataclasses.replace(TINY, precision="bf16"), k=2))
    data = _data()
    pairs = dataclasses.replace(TINY, lambda_pair=0.5, code_prior="graph")
    with pytest.raises(StackError, match="lambda_pair=0.5"):
        StackedTrainer(_trainers(pairs, k=2, sample_real_pairs=lambda b, g: (data[:b], data[:b])))
    with pytest.raises(StackError, match="struct_fit='pooled'"):
        StackedTrainer(_trainers(dataclasses.replace(TINY, struct_fit="pooled"), k=2))
    ahead = _trainers(k=2)
    ahead[1].train_step()
    with pytest.raises(StackError, match=r"share their step; got \[0, 1\]"):
        StackedTrainer(ahead)
    with pytest.raises(StackError, match="at least one"):
        StackedTrainer([])
