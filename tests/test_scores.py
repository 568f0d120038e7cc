from __future__ import annotations

import pytest
import torch

from gan.latents import LatentSpec
from structsearch.scores import info_scores

SPEC = LatentSpec.parse("cat3,cont,cont,cont")


def _codes(n: int = 4000, seed: int = 0) -> torch.Tensor:
    return SPEC.sample(n, torch.Generator().manual_seed(seed))[1]


def test_info_reads_back_a_shrunken_code_fully_and_an_unrelated_one_not_at_all() -> None:
    """Q's heads output the codes at a fraction of their spread; that costs no information."""
    c = _codes()
    cat, c2, c3, c4 = SPEC.split(c)
    noise = torch.randn(len(c), 1, generator=torch.Generator().manual_seed(1))
    q = torch.cat([5 * cat, 0.3 * c2 + 0.1, 0.3 * c2, torch.zeros_like(c4)], dim=1)
    scores = info_scores(SPEC, c, q)
    assert scores["info/c1"] == 1.0  # the categorical head's argmax is the code
    assert scores["info/c2"] == pytest.approx(1.0)  # scaled and shifted: fully recoverable
    assert scores["info/c3"] == pytest.approx(0.0, abs=0.01)  # reads another code
    assert scores["info/c4"] == 0.0  # a constant head: no NaN
    assert scores["info_min"] == 0.0
    half = info_scores(SPEC, c, torch.cat([5 * cat, c2 + noise * c2.std(), c3, c4], dim=1))
    assert half["info/c2"] == pytest.approx(0.5, abs=0.03)  # corr^2 of a code plus equal noise


def test_metrics_none_means_only_the_base_scores() -> None:
    from structsearch.scores import available_metrics

    assert available_metrics(None, SPEC, "none") == [] and available_metrics(None, SPEC, "") == []
    with pytest.raises(ValueError, match="nonesuch"):
        available_metrics(None, SPEC, "nonesuch")


# ---- the contract over every registered score ----------------------------------------------------
# Every score in the registry has a direction, a known answer on models whose answer is known, and a
# clear error where the dataset cannot give it. A score added to the registry without a case here
# fails test_every_score_has_a_contract_case.

import importlib  # noqa: E402
import itertools  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

from gan.latents import get_spec  # noqa: E402
from structsearch import scores  # noqa: E402
from structsearch.datasets import get_dataset  # noqa: E402
from structsearch.datasets.shapes import render  # noqa: E402
from structsearch.graph import preset  # noqa: E402

DIRECTIONS = {
    "struct_bic": "maximize",
    "agreement": "minimize",
    "info": "maximize",
    "info_min": "maximize",
    "cat_acc": "maximize",
    "bic_gen": None,
    "anchor_r2": "maximize",
    "mig": "maximize",
    "dci": "maximize",
    "sap": "maximize",
    "modularity": "maximize",
    "factorvae": "maximize",
    "betavae": "maximize",
    "shd": "minimize",
    "fid": "minimize",
    "pair_energy": "minimize",
    "pair_feature_energy": "minimize",
}
PLAIN = SimpleNamespace(name="plain", n_classes=None, factor_names=(), true_edges=None)  # neither labels nor factors
SHAPES_SPEC = get_spec("shapes")
LEVELS = 16


class Renderer(torch.nn.Module):
    """A perfect G for ``shapes``: codes in [-1, 1] are the factor values; it draws their ring."""

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return render(torch.round((c.clamp(-1, 1) + 1) / 2 * (LEVELS - 1)).long(), LEVELS)


class Reader(torch.nn.Module):
    """A perfect Q for ``shapes``: the factor values of the nearest of the 16^3 possible rings."""

    def __init__(self) -> None:
        super().__init__()
        grid = torch.tensor(list(itertools.product(range(LEVELS), repeat=3)))
        self.prototypes = render(grid, LEVELS).flatten(1)  # (4096, 1024)
        self.values = -1 + 2 * grid.float() / (LEVELS - 1)

    def q(self, images: torch.Tensor) -> torch.Tensor:
        return self.values[torch.cdist(images.flatten(1), self.prototypes).argmin(1)]


@pytest.fixture(scope="module")
def shapes():
    return get_dataset("shapes", n_train=400, n_test=400)


def _perfect(graph: str, dataset, extra=(), n_eval: int = 400, scale: float = 0.02) -> dict[str, float]:
    evaluator = scores.Evaluator(preset(graph, SHAPES_SPEC), dataset, n_eval=n_eval, seed=0, scale=scale)
    return evaluator(Renderer(), Reader(), extra=extra)


def test_every_score_has_a_contract_case() -> None:
    assert set(scores.SCORES) == set(DIRECTIONS)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_direction(name: str) -> None:
    if DIRECTIONS[name] is None:
        with pytest.raises(ValueError, match=f"{name} is a diagnostic, not an objective"):
            scores.direction(name)
        assert name not in scores.objectives()
    else:
        assert scores.direction(name) == DIRECTIONS[name]


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_availability(name: str, shapes) -> None:
    score = scores.SCORES[name]
    if not score.needs:  # label-free and factor-free: every dataset gives it
        assert score.missing(PLAIN, SHAPES_SPEC) is None
        return
    lacking = shapes if name == "cat_acc" else PLAIN  # shapes has factors and a true graph, no labels
    problem = score.missing(lacking, SHAPES_SPEC)
    assert problem is not None and problem.startswith(f"{name} needs ")
    if score.direction is not None:
        with pytest.raises(ValueError, match=f"objective {name} needs"):
            scores.check_objectives([name], lacking, SHAPES_SPEC)
    if name != "cat_acc":
        assert score.missing(shapes, SHAPES_SPEC) is None


def test_unknown_score_names_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown objective 'accuracy'; expected one of struct_bic, agreement"):
        scores.direction("accuracy")


def test_known_answers_of_the_label_free_scores(shapes) -> None:
    """A perfect reader of the true factors: the true graph fits, the codes read back fully."""
    truth, wrong = _perfect("collider", shapes), _perfect("independent", shapes)
    assert truth["struct_bic"] > -0.01 and wrong["struct_bic"] < truth["struct_bic"] - 0.05  # collider data
    assert wrong["agreement"] < 0.01  # each q copies its own independent c: no dependence is forbidden
    assert truth["info"] > 0.99 and truth["info_min"] > 0.99  # 16 levels of a uniform code
    assert np.isfinite(truth["bic_gen"]) and {f"info/c{i}" for i in (1, 2, 3)} <= set(truth)


def test_known_answers_of_the_ground_truth_scores(shapes) -> None:
    names = ("shd", "mig", "dci", "sap", "modularity", "factorvae", "betavae")
    truth = _perfect("collider", shapes, extra=names)
    assert truth["shd"] == 0 and _perfect("independent", shapes, extra=("shd",))["shd"] == 2
    for name in ("mig", "dci", "modularity", "factorvae", "betavae"):  # codes that are the factors: near the top
        assert truth[name] > 0.7, (name, truth[name])
    # SAP's one-code linear classifier cannot split 16 classes, so its top is low here; its known
    # answer on few-class factors is in test_metrics.py (identity codes > 0.25).
    assert 0 <= truth["sap"] < 0.2


def test_known_answer_of_fid(shapes, tmp_path, monkeypatch) -> None:
    fid_module = importlib.import_module("structsearch.metrics.fid")
    monkeypatch.setattr(fid_module, "DEFAULT_CACHE_DIR", tmp_path)  # nothing written outside the test
    monkeypatch.setattr(fid_module, "fit", lambda *args, **kwargs: None)  # an untrained feature net suffices

    class Blank(torch.nn.Module):
        def forward(self, z, c):
            return -torch.ones(len(c), 1, 32, 32)

    evaluator = scores.Evaluator(preset("collider", SHAPES_SPEC), shapes, n_eval=400, seed=0, scale=0.02)
    close, far = (evaluator(G, Reader(), extra=("fid",), only=("fid",))["fid"] for G in (Renderer(), Blank()))
    assert 0 <= close < far / 10


def test_known_answer_of_cat_acc(mnist_dir) -> None:
    """A reader that knows each test image's label, under a permutation of the classes: accuracy 1,
    on all 10,000 test images (not only the n_eval the other scores read)."""
    dataset = get_dataset("mnist", data_dir=mnist_dir)
    images, labels = dataset.test_images()
    permutation = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    read = set()

    class LabelReader(torch.nn.Module):
        def q(self, x: torch.Tensor) -> torch.Tensor:
            index = torch.cdist(x.flatten(1), images.flatten(1)).argmin(1)
            read.update(index.tolist())
            return torch.cat(
                [torch.nn.functional.one_hot(permutation[labels[index]], 10).float(), x.new_zeros(len(x), 2)], 1
            )

    class Blank(torch.nn.Module):
        def forward(self, z, c):
            return -torch.ones(len(c), 1, 28, 28)

    evaluator = scores.Evaluator(preset("independent", get_spec("mnist")), dataset, n_eval=500, seed=0)
    assert evaluator(Blank(), LabelReader(), only=("cat_acc",)) == {"cat_acc": 1.0}
    assert len(images) == 10_000 and len(read) > 9_900  # (a few test images are exact duplicates)


def test_known_answers_of_anchor_r2(shapes) -> None:
    """1 for codes in the factors' own coordinates, 0 for a constant at the factors' means, and
    1 - SSE/SST exactly for a Q that reads the factors in another order (what an unanchored model may do)."""
    _, factors = shapes.test_factors(400)
    values = torch.from_numpy(-1 + 2 * factors / (LEVELS - 1)).float()  # (400, 3), test order

    class Fixed(torch.nn.Module):
        def __init__(self, out: torch.Tensor) -> None:
            super().__init__()
            self.out = out

        def q(self, images: torch.Tensor) -> torch.Tensor:
            return self.out[: len(images)]

    evaluator = scores.Evaluator(preset("collider", SHAPES_SPEC), shapes, n_eval=400, seed=0)
    perfect = evaluator(Renderer(), Reader(), only=("anchor_r2",))
    assert perfect["anchor_r2"] > 0.999 and set(perfect) == {
        "anchor_r2",
        "anchor_r2/c1",
        "anchor_r2/c2",
        "anchor_r2/c3",
    }
    at_mean = evaluator(Renderer(), Fixed(values.mean(0).expand(400, 3)), only=("anchor_r2",))
    assert at_mean["anchor_r2"] == pytest.approx(0.0, abs=1e-6)
    swapped = evaluator(Renderer(), Fixed(values[:, [2, 1, 0]]), only=("anchor_r2",))
    width, height = values[:, 0].double(), values[:, 2].double()
    expected = 1 - (height - width).pow(2).sum() / (width - width.mean()).pow(2).sum()
    assert swapped["anchor_r2/c1"] == pytest.approx(float(expected), rel=1e-6)
    assert swapped["anchor_r2/c2"] == pytest.approx(1.0) and swapped["anchor_r2"] < 0.9


def test_known_answer_of_anchor_r2_on_labels(mnist_dir) -> None:
    """The label reader scores 1; under a permutation of the classes cat_acc stays 1 and anchor_r2 does not.
    (cat_acc reads all 10,000 test images, anchor_r2 the n_eval = 500 held-out ones.)"""
    dataset = get_dataset("mnist", data_dir=mnist_dir)
    images, labels = dataset.test_images()
    permutation = torch.randperm(10, generator=torch.Generator().manual_seed(0))

    class LabelReader(torch.nn.Module):
        def __init__(self, classes: torch.Tensor) -> None:
            super().__init__()
            self.classes = classes

        def q(self, x: torch.Tensor) -> torch.Tensor:
            index = torch.cdist(x.flatten(1), images.flatten(1)).argmin(1)
            one_hot = torch.nn.functional.one_hot(self.classes[labels[index]], 10).float()
            return torch.cat([one_hot, x.new_zeros(len(x), 2)], 1)

    evaluator = scores.Evaluator(preset("independent", get_spec("mnist")), dataset, n_eval=500, seed=0)
    only = ("cat_acc", "anchor_r2")
    assert evaluator(None, LabelReader(torch.arange(10)), only=only) == {
        "cat_acc": 1.0,
        "anchor_r2": 1.0,
        "anchor_r2/c1": 1.0,
    }
    permuted = evaluator(None, LabelReader(permutation), only=only)
    fixed_points = (permutation[labels[:500]] == labels[:500]).double().mean().item()
    assert permuted["cat_acc"] == 1.0 and permuted["anchor_r2"] == pytest.approx(fixed_points) and fixed_points < 0.5


def _factor_pairs(dataset, resample_noise: bool = False):
    """A pair sampler that hands the Renderer shapes' own factor pairs: true pairs (a perfect
    intervention), or the trap's pairs, where the "intervention" redraws the target's noise term
    (each pair changes one exogenous code, as the empty graph in exogenous coordinates says)."""
    scm = dataset.scm

    def sample(n: int, generator: torch.Generator):
        rng = np.random.default_rng(generator.initial_seed())
        if not resample_noise:
            before, after, _ = scm.sample_pairs(n, rng)
        else:
            noise = scm.draw_noise(n, rng)
            target, fresh, moved = rng.integers(3, size=n), scm.draw_noise(n, rng), noise.copy()
            moved[np.arange(n), target] = fresh[np.arange(n), target]
            before, after = scm.from_noise(noise), scm.from_noise(moved)
        values = [torch.from_numpy(scm.values(x)).float() for x in (before, after)]
        return torch.zeros(n, 0), *values

    return sample


def test_known_answers_of_pair_energy(shapes) -> None:
    """0 (within sampling noise) for a G whose pairs are the real ones; clearly above it for the trap's
    pairs, which differ only in that after do(height) the new height still follows width and thickness;
    far above it for independent codes, whose interventions move no descendant."""
    dataset = get_dataset("shapes", n_train=400, n_test=2000)

    def energy(sample_pairs, data=dataset, n_eval: int = 2000) -> float:
        evaluator = scores.Evaluator(
            preset("collider", SHAPES_SPEC), data, n_eval=n_eval, seed=0, scale=0.02, sample_pairs=sample_pairs
        )
        return evaluator(Renderer(), Reader(), extra=("pair_energy",), only=("pair_energy",))["pair_energy"]

    truth, trap = energy(_factor_pairs(dataset)), energy(_factor_pairs(dataset, resample_noise=True))
    assert abs(truth) < 0.002 and trap > truth + 0.002, (truth, trap)
    independent = energy(None, shapes, n_eval=400)  # the Evaluator's default: the spec's independent prior
    assert independent > 0.02


@pytest.mark.slow  # about 20 s: 2,000 pairs a side, five times
def test_known_answers_of_pair_feature_energy(tmp_path, monkeypatch) -> None:
    """In one fixed feature space (here an untrained, seeded feature net: any fixed net will do):
    0 (within noise) for the real pairs, clearly above for the trap's pairs, whose single images are
    the real ones (``/single`` stays 0), far above for independent codes. And unlike ``pair_energy``
    it does not depend on the scored model's Q: a Q blind to height hides the trap from
    ``pair_energy`` (each model's own ruler) but not from this score."""
    fid_module = importlib.import_module("structsearch.metrics.fid")
    monkeypatch.setattr(fid_module, "DEFAULT_CACHE_DIR", tmp_path)  # nothing written outside the test
    monkeypatch.setattr(fid_module, "fit", lambda *args, **kwargs: None)
    dataset = get_dataset("shapes", n_train=400, n_test=2000)

    class BlindToHeight(Reader):
        def q(self, images: torch.Tensor) -> torch.Tensor:
            return super().q(images) * torch.tensor([1.0, 1.0, 0.0])

    def energy(sample_pairs, reader: torch.nn.Module | None = None) -> dict[str, float]:
        evaluator = scores.Evaluator(
            preset("collider", SHAPES_SPEC), dataset, n_eval=2000, seed=0, scale=0.02, sample_pairs=sample_pairs
        )
        names = ("pair_feature_energy", "pair_energy")
        return evaluator(Renderer(), reader or Reader(), extra=names, only=names)

    truth, trap = energy(_factor_pairs(dataset)), energy(_factor_pairs(dataset, resample_noise=True))
    assert (
        abs(truth["pair_feature_energy"]) < 0.01 and trap["pair_feature_energy"] > truth["pair_feature_energy"] + 0.03
    )
    assert abs(trap["pair_feature_energy/single"]) < 0.01  # the trap's images are right one by one
    blind = energy(_factor_pairs(dataset, resample_noise=True), BlindToHeight())
    assert blind["pair_feature_energy"] == trap["pair_feature_energy"]  # Q plays no part
    assert blind["pair_energy"] < trap["pair_energy"] / 3  # while the own-Q score loses the trap
    independent = energy(None)
    assert independent["pair_feature_energy"] > 0.2 and independent["pair_feature_energy/single"] > 0.2


def test_pair_codes_read_both_sides_with_one_net_and_a_perfect_reader_finds_the_true_dag() -> None:
    from structsearch import pairs as pair_criterion

    shapes = get_dataset("shapes", n_train=400, n_test=2000)  # at 400 pairs a superset of the truth wins
    before, after = scores.pair_codes(Reader(), SHAPES_SPEC, shapes, standardize=False)
    real = shapes.test_pairs()
    np.testing.assert_allclose(before, shapes.scm.values(real.before), atol=1e-6)  # the factors, exactly
    np.testing.assert_allclose(after, shapes.scm.values(real.after), atol=1e-6)
    ranked = pair_criterion.ranked_dags(*scores.pair_codes(Reader(), SHAPES_SPEC, shapes))
    assert set(ranked[0].edges) == set(shapes.true_edges)  # the collider, on standardized codes too

    class Normed(torch.nn.Module):  # a Q with batch norm: what it reads depends on the statistics it holds
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 4, 4), torch.nn.BatchNorm2d(3), torch.nn.Flatten())

        def q(self, images: torch.Tensor) -> torch.Tensor:
            return self.net(images).view(len(images), 3, -1).mean(2)

    v, v_after = scores.pair_codes(Normed(), SHAPES_SPEC, shapes)
    unchanged = (real.before == real.after).all(1)  # the fresh value drew the old class: x' is x
    assert unchanged.sum() >= 5
    np.testing.assert_allclose(v[unchanged], v_after[unchanged], atol=1e-6)  # one reading of both sides
    np.testing.assert_allclose(v.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(v.std(0, ddof=1), 1, atol=1e-9)
