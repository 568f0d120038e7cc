"""Training with intervention pairs (gan/pairs.py and its hooks in gan/train.py, gan/prior.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest
import torch
from scipy import stats

from gan.latents import get_spec
from gan.pairs import PairDiscriminator, intervention_mask, sample_pair_latents
from gan.prior import CodePrior
from gan.train import TrainConfig, Trainer
from structsearch.graph import preset
from tests.reference import plain_layers

SPEC = get_spec("shapes")
COLLIDER = preset("collider", SPEC).parents()
TINY = TrainConfig(n_steps=6, batch_size=16, width=0.125, log_every=3, checkpoint_every=0)
PAIRS = dataclasses.replace(TINY, code_prior="graph", lambda_pair=1.0)


def _images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _trainer(cfg: TrainConfig = TINY, pairs: bool = False) -> Trainer:
    data, before, after = _images(256, 0), _images(256, 1), _images(256, 2)

    def sample_real_pairs(b: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(before), (b,), generator=g)
        return before[index], after[index]

    return Trainer(
        cfg,
        SPEC,
        COLLIDER,
        lambda b, g: data[torch.randint(len(data), (b,), generator=g)],
        (1, 32, 32),
        torch.device("cpu"),
        sample_real_pairs=sample_real_pairs if pairs else None,
    )


def _digest(trainer: Trainer) -> str:
    h = hashlib.sha256()
    for module in (trainer.G, trainer.D):
        for name, value in module.state_dict().items():
            h.update(name.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# Recorded with gan/train.py and gan/prior.py as they were before the pairs hooks (commit de6faae):
# 6 steps of TINY on this file's data, one thread, this machine's torch. Re-recorded when R_G became
# one batched solve (same values to 1e-6, tests/test_structure.py; the rounding moves the bits).
# Run with the layers and Adam of that time (plain_layers): the CPU speed-ups of issue 17 sum in
# another order.
BEFORE_PAIRS = {
    "independent": ("d90d8af7777b0471", ("0x1.d577360000000p+0", "0x1.13f7340000000p+0", "0x1.b79a120000000p-2")),
    "graph": ("f20f5ef51651872e", ("0x1.d473180000000p+0", "0x1.1259220000000p+0", "0x1.b838a80000000p-2")),
}


@pytest.mark.parametrize("prior", ["independent", "graph"])
def test_a_run_without_pairs_is_bit_identical_to_before_the_pairs_hooks(prior: str) -> None:
    trainer = plain_layers(_trainer(dataclasses.replace(TINY, code_prior=prior)))
    result = trainer.run()
    digest, losses = BEFORE_PAIRS[prior]
    assert trainer.pairs is None and set(result.losses) == {
        "loss/d",
        "loss/g",
        "loss/info",
        "loss/struct",
        "loss/anchor",
    }
    got = [float(result.losses[k]) for k in ("loss/d", "loss/g", "loss/info")]
    # Another CPU's kernels round float32 sums differently: on an AVX-512 machine a few ulps (2e-7
    # relative) after 6 steps, where a changed draw or update moves the losses by 1e-3 or more.
    # The bits, and the weights' digest, are compared where the recording machine's rounding holds.
    assert got == pytest.approx([float.fromhex(x) for x in losses], rel=1e-6, abs=0)
    if [x.hex() for x in got] == list(losses):
        assert _digest(trainer) == digest


def _legacy_sample(prior: CodePrior, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``CodePrior.sample`` before it was split into noise + ``solve`` (copied verbatim)."""
    z, c = prior.spec.sample(n, generator)
    for m in prior.mechanisms:
        signal = c[:, list(m.parents)].sum(1)
        c[:, m.column] = (m.weight * signal + m.noise_scale * c[:, m.column]).clamp(-1, 1)
    return z, c


@pytest.mark.parametrize("spec_text, graph", [("shapes", "complete"), ("shapes", "chain"), ("cat4,cont,cont", "fork")])
def test_prior_sample_is_unchanged_by_the_solve_refactor(spec_text: str, graph: str) -> None:
    spec = get_spec(spec_text)
    prior = CodePrior(spec, preset(graph, spec).parents())
    for got, want in zip(
        prior.sample(500, torch.Generator().manual_seed(4)),
        _legacy_sample(prior, 500, torch.Generator().manual_seed(4)),
    ):
        assert torch.equal(got, want)


def _pairs(n: int = 20_000, seed: int = 0):
    prior = CodePrior(SPEC, COLLIDER)
    z, c, c_after = sample_pair_latents(prior, n, torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)  # replay the draws: the shared noise, then the targets
    _, noise = SPEC.sample(n, g)
    target = torch.randint(3, (n,), generator=g)
    return prior, c, c_after, noise, target


def test_pair_latents_recompute_descendants_from_the_same_noise() -> None:
    """Collider c1 -> c3 <- c2: do(c1) moves c3 by its mechanism on the old noise, keeps c2; do(c3) keeps c1, c2."""
    prior, c, c_after, noise, target = _pairs()
    assert torch.equal(c, prior.solve(noise))
    (m,) = prior.mechanisms
    do1, do3 = target == 0, target == 2
    assert torch.equal(c_after[do1, 1], c[do1, 1])
    expected = (m.weight * (c_after[do1, 0] + c_after[do1, 1]) + m.noise_scale * noise[do1, 2]).clamp(-1, 1)
    assert torch.equal(c_after[do1, 2], expected)
    assert (c_after[do1, 2] != c[do1, 2]).float().mean() > 0.9
    assert torch.equal(c_after[do3, :2], c[do3, :2])


def test_the_new_value_follows_the_marginal_and_ignores_the_old_parents() -> None:
    prior, c, c_after, _, target = _pairs()
    _, marginal = prior.sample(20_000, torch.Generator().manual_seed(9))
    do3 = target == 2
    assert stats.ks_2samp(c_after[do3, 2].numpy(), marginal[:, 2].numpy()).pvalue > 0.01
    assert stats.ks_2samp(c[do3, 2].numpy(), marginal[:, 2].numpy()).pvalue > 0.01
    assert torch.corrcoef(c[do3].T)[0, 2] > 0.4  # before: c3 follows c1
    assert abs(torch.corrcoef(torch.stack([c_after[do3, 2], c_after[do3, 0]]))[0, 1]) < 0.03  # after do(c3): not
    (m,) = prior.mechanisms  # a resampled noise term instead keeps the marginal but follows c1: the check has power
    fresh_noise = torch.rand(int(do3.sum()), generator=torch.Generator().manual_seed(5)) * 2 - 1
    resampled = (m.weight * c[do3, :2].sum(1) + m.noise_scale * fresh_noise).clamp(-1, 1)
    assert torch.corrcoef(torch.stack([resampled, c[do3, 0]]))[0, 1] > 0.4


def test_an_intervention_on_a_categorical_code_draws_a_fresh_class() -> None:
    spec = get_spec("cat4,cont,cont")
    assert intervention_mask(spec, torch.tensor([0, 2])).tolist() == [[True] * 4 + [False] * 2, [False] * 5 + [True]]
    prior = CodePrior(spec, {"q3": ("q2",)})
    _, c, c_after = sample_pair_latents(prior, 4000, torch.Generator().manual_seed(1))
    assert torch.equal(c_after[:, :4].sum(1), torch.ones(4000))  # still one-hot
    moved_class = (c_after[:, :4] != c[:, :4]).any(1)
    assert torch.equal(c_after[moved_class, 4:], c[moved_class, 4:])  # no q node descends from a class
    assert 0.15 < moved_class.float().mean() < 0.35  # a third of the targets, times 3/4 a new class


def test_lambda_pair_needs_the_graph_prior_and_real_pairs() -> None:
    with pytest.raises(ValueError, match="lambda_pair must be >= 0, and > 0 only with code_prior graph"):
        TrainConfig(lambda_pair=1.0)
    with pytest.raises(ValueError, match="lambda_pair must be >= 0"):
        TrainConfig(lambda_pair=-1.0, code_prior="graph")
    with pytest.raises(ValueError, match="needs sample_real_pairs"):
        _trainer(PAIRS, pairs=False)


def test_pair_discriminator_reads_the_stack() -> None:
    net = PairDiscriminator((1, 28, 28), width=0.125)
    x = _images(5, 0)[:, :, :28, :28]
    assert net(x, x).shape == (5,)


def test_a_pair_step_trains_the_pair_discriminator_and_its_term_reaches_g() -> None:
    trainer = _trainer(PAIRS, pairs=True)
    before = [p.detach().clone() for p in trainer.pairs.D.parameters()]
    losses = trainer.train_step()
    assert list(losses) == ["loss/d", "loss/g", "loss/info", "loss/struct", "loss/anchor", "loss/pair", "loss/d_pair"]
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(p, q) for p, q in zip(trainer.pairs.D.parameters(), before))
    for p in [*trainer.G.parameters(), *trainer.D.parameters()]:
        p.grad = None
    trainer.pairs.d_step(trainer.G, trainer._autocast)
    trainer.pairs.g_term().backward()
    assert sum(p.grad.abs().sum() for p in trainer.G.parameters() if p.grad is not None) > 0
    assert all(p.grad is None for p in trainer.D.parameters())  # the pair term does not touch D or Q


def test_pairs_use_streams_of_their_own() -> None:
    """The images and codes of the main losses are drawn exactly as in a run without pairs."""
    plain, paired = _trainer(dataclasses.replace(PAIRS, lambda_pair=0.0)), _trainer(PAIRS, pairs=True)
    plain.train_step(), paired.train_step()
    assert torch.equal(plain.data_rng.get_state(), paired.data_rng.get_state())
    assert torch.equal(plain.latent_rng.get_state(), paired.latent_rng.get_state())


def test_a_resumed_pair_run_ends_identical_to_an_uninterrupted_one(tmp_path) -> None:
    full = _trainer(PAIRS, pairs=True)
    result = full.run()
    assert result.status == "completed" and math.isfinite(result.losses["loss/pair"])
    first = _trainer(dataclasses.replace(PAIRS, n_steps=3), pairs=True)
    first.run()
    first.save(tmp_path / "ck.pt")
    second = _trainer(PAIRS, pairs=True)
    second.load(tmp_path / "ck.pt")
    second.run()
    for a, b in [(full.G, second.G), (full.D, second.D), (full.pairs.D, second.pairs.D)]:
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_train_and_score_on_shapes_with_pairs() -> None:
    """A tiny real run: shapes' pairs feed the pair loss, and pair_energy scores the result."""
    from structsearch.config import RunConfig
    from structsearch.datasets import DatasetError
    from structsearch.datasets.shapes import Shapes
    from structsearch.trial import make_trainer, train_and_score

    cfg = RunConfig(dataset="shapes", graph="collider", n_eval=200, train=dataclasses.replace(PAIRS, n_steps=10))
    graph = preset("collider", SPEC)
    outcome = train_and_score(cfg, graph, Shapes(n_train=400, n_test=200), extra_scores=("pair_energy",), scale=0.02)
    assert outcome.result.status == "completed"
    assert math.isfinite(outcome.result.losses["loss/pair"]) and math.isfinite(outcome.result.losses["loss/d_pair"])
    assert math.isfinite(outcome.scores["pair_energy"]) and outcome.scores["pair_energy"] > 0

    class NoPairs:
        name, has_pairs = "dsprites", False

    with pytest.raises(DatasetError, match="--lambda-pair needs a dataset with intervention pairs"):
        make_trainer(cfg, graph, NoPairs())
