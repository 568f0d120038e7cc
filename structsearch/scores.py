"""Every score of a trained model: one registry, one :class:`Evaluator` (docs/design.md section 4).

A score is a registry entry: a name, a direction (None for a diagnostic that is never an
objective), what the dataset must offer, whether it is a *base* score (computed for every run)
or an *extra* one (computed when asked for, because it needs ground truth or a feature net, or
is slow), and a function of a :class:`Reading`, one trained model seen through the Evaluator's
fixed held-out data. Each function returns a dict holding at least its own name (and may add
details, e.g. ``info/c1``). To add a score: one ``@score(...)`` function below and its case in
tests/test_scores.py's contract suite.

Base scores, all label-free but ``cat_acc`` and ``anchor_r2``:

* ``struct_bic`` -- delta-BIC (the graph's q part minus the saturated graph, per row, pgmpy) of
  Q's codes of held-out REAL images: do the features Q extracts from data obey the graph?
* ``agreement`` -- the deviance of the graph on fresh generated (c, q): does the model obey its
  own graph? 0 when every conditional independence of the graph holds.
* ``info`` / ``info_min`` -- how well Q reads the codes back from generated images: accuracy for
  a categorical code, for a continuous one the R^2 of the best linear read-back
  corr(c_k, q_k)^2 (so the Gaussian mutual information is -1/2 log(1 - info)); the mean, and
  the worst code (a collapsed code has low info). Version 1 was the calibrated
  1 - MSE / Var, which also charged Q for the scale of its output (docs/results.md).
* ``cat_acc`` (labelled data and a categorical code) -- the first categorical code as an
  unsupervised classifier of all the real test images (10,000 on MNIST), under the best
  one-to-one class matching.
* ``bic_gen`` -- diagnostic only: the graph's own BIC per row on generated (c, q). It ranks
  collapsed models first, so no search may optimize it.
* ``anchor_r2`` (known factor values or labels for the codes, as ``--anchor-labels`` uses them) --
  do Q's codes of the held-out real images sit in the factors' own coordinates? Per anchorable
  code, the R^2 = 1 - SSE / SST of Q's value against the known value (not corr^2: the scale and
  sign must match too), or Q's plain accuracy against the known class (no class matching, unlike
  ``cat_acc``); the mean over those codes, and ``anchor_r2/cK``. Near 1 when anchoring pinned the
  coordinates; an unanchored model's codes sit in coordinates of its own (docs/design.md section 8).

Extra scores: ``mig``, ``dci``, ``sap``, ``modularity``, ``factorvae``, ``betavae``
(disentanglement_lib's protocols on Q's codes; ground-truth factors), ``shd`` (structural Hamming
distance of the q part to the true factor graph after matching codes to factors; a known factor
graph), ``fid`` (Frechet distance in a small classifier's features; labels or factors to train it),
``pair_energy`` (energy distance of Q's codes of held-out real intervention pairs and generated
ones, :mod:`gan.pairs`; a dataset with pairs), ``pair_feature_energy`` (the same distance in the
fixed features of ``fid``'s feature net, one space for every model: the pair score that compares
models across their coordinate systems; pairs, and factors to train the net).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from gan.latents import LatentSpec
from gan.pairs import sample_pair_latents
from gan.prior import CodePrior
from gan.structure import StructuralLoss
from gan.train import evaluating
from structsearch.datasets.base import DatasetError
from structsearch.graph import Graph
from structsearch.pairs import energy_distance
from structsearch.scoring import bic, delta_bic, make_table

logger = logging.getLogger(__name__)

INFO_VERSION = 2  # of the ``info`` scores: 1 was the calibrated 1 - MSE/Var (see the module doc)
SampleLatents = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
SamplePairLatents = Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
Direction = Literal["maximize", "minimize"]


# ---- the registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Need:
    """Something a score needs from the dataset (and spec), with the words that say so."""

    test: Callable[[object, LatentSpec], bool]
    phrase: str  # "needs <phrase>; <dataset> has <lack>"
    lack: str


NEEDS: dict[str, Need] = {
    "labels": Need(
        lambda ds, spec: bool(getattr(ds, "n_classes", None)) and any(c.kind == "categorical" for c in spec.codes),
        "a labelled dataset and a categorical code",
        "not both",
    ),
    "factors": Need(
        lambda ds, spec: bool(getattr(ds, "factor_names", ())), "ground-truth factors (dsprites, shapes)", "none"
    ),
    "true_graph": Need(lambda ds, spec: bool(getattr(ds, "true_edges", None)), "a known factor graph (shapes)", "none"),
    "anchors": Need(
        lambda ds, spec: _anchorable(ds, spec),
        "known factor values or labels for its codes (shapes, dsprites, mnist, fashion-mnist)",
        "none for these codes",
    ),
    "pairs": Need(lambda ds, spec: bool(getattr(ds, "has_pairs", False)), "intervention pairs (shapes)", "none"),
    "labels_or_factors": Need(
        lambda ds, spec: bool(getattr(ds, "factor_names", ()) or getattr(ds, "n_classes", None)),
        "labels or factors to train its feature net",
        "neither",
    ),
}


@dataclass(frozen=True)
class Score:
    name: str
    direction: Direction | None  # None: a diagnostic, never an objective
    base: bool  # computed for every run (where its needs are met)
    needs: tuple[str, ...]
    compute: Callable[[Reading], dict[str, float]]

    def missing(self, dataset, spec: LatentSpec) -> str | None:
        """Why ``dataset`` (with ``spec``) cannot give this score, or None when it can."""
        for need in self.needs:
            if not NEEDS[need].test(dataset, spec):
                name = getattr(dataset, "name", dataset)
                return f"{self.name} needs {NEEDS[need].phrase}; {name} has {NEEDS[need].lack}"
        return None


SCORES: dict[str, Score] = {}


def score(name: str, direction: Direction | None, *, base: bool, needs: tuple[str, ...] = ()):
    """Register ``fn(reading) -> dict`` as the score ``name``."""

    def register(fn: Callable[[Reading], dict[str, float]]) -> Callable[[Reading], dict[str, float]]:
        SCORES[name] = Score(name, direction, base, needs, fn)
        return fn

    return register


def direction(name: str) -> Direction:
    """The direction of an objective; ValueError for a diagnostic or an unknown name."""
    if name in SCORES and SCORES[name].direction is None:
        raise ValueError(
            f"{name} is a diagnostic, not an objective: it ranks codes that collapse onto their parents first"
        )
    if name not in SCORES:
        raise ValueError(f"unknown objective {name!r}; expected one of {', '.join(objectives())}")
    return SCORES[name].direction


def objectives() -> list[str]:
    """Every score a search may optimize."""
    return [n for n, s in SCORES.items() if s.direction is not None]


def check_objectives(names: Iterable[str], dataset, spec: LatentSpec) -> None:
    """Refuse objectives that are unknown, diagnostics, or that the dataset cannot compute."""
    for name in names:
        direction(name)
        if problem := SCORES[name].missing(dataset, spec):
            raise ValueError(f"objective {problem}")


def available_metrics(dataset, spec: LatentSpec, text: str) -> list[str]:
    """The extra scores named in ``text`` (``all``: every one the dataset allows; ``none``: none)."""
    if text.strip() in ("", "none"):
        return []
    if text == "all":
        return [n for n, s in SCORES.items() if not s.base and s.missing(dataset, spec) is None]
    names = [n.strip() for n in text.split(",") if n.strip()]
    check_objectives(names, dataset, spec)
    return names


# ---- the evaluator ---------------------------------------------------------------------------


class Evaluator:
    """The fixed data every score of one run is computed on, built once per run.

    It holds the held-out real batch (``n_eval`` test images and their labels), the fresh latent
    sample (``n_eval`` draws of (z, c) from the run's code prior, seeded), and the planned
    structural loss of ``agreement``. Calling it on (G, D) scores that model; the same Evaluator
    called at any step compares the steps on the same data.

    Args:
        graph: the run's graph.
        dataset: the run's dataset (its device is the evaluation device).
        n_eval: held-out real images and fresh generated samples.
        seed: seed of the latent sample and of the extra scores' protocols.
        scale: fraction of disentanglement_lib's sample counts for the extra scores.
        sample: ``sample(n, generator) -> (z, c)``, the run's code prior (the spec's when None).
        sample_pairs: ``sample_pairs(n, generator) -> (z, c, c')``, the run's pairs of codes before and
            after an intervention on one code (:func:`gan.pairs.sample_pair_latents`; from the
            spec's independent prior when None).
    """

    def __init__(
        self,
        graph: Graph,
        dataset,
        n_eval: int = 2000,
        seed: int = 0,
        scale: float = 0.2,
        sample: SampleLatents | None = None,
        sample_pairs: SamplePairLatents | None = None,
    ) -> None:
        self.graph, self.spec, self.dataset = graph, graph.spec, dataset
        self.n_eval, self.seed, self.scale = n_eval, seed, scale
        self.device = dataset.device
        self.sample = sample or (lambda n, rng: self.spec.sample(n, rng, self.device))
        self.sample_pairs = sample_pairs or (
            lambda n, rng: sample_pair_latents(CodePrior(self.spec), n, rng, self.device)
        )
        real, self.labels = dataset.test_images(n_eval)
        self.real = real.to(self.device)
        self.z, self.c = self.sample(n_eval, torch.Generator(self.device).manual_seed(seed))
        self.agreement = StructuralLoss(self.spec, graph.parents(), form="deviance", floor=1e-6)

    def __call__(
        self,
        G: torch.nn.Module,
        D: torch.nn.Module,
        extra: Iterable[str] = (),
        only: Iterable[str] | None = None,
        seconds: dict[str, float] | None = None,
    ) -> dict[str, float]:
        """The base scores the dataset allows plus the ``extra`` ones, as a flat dict.

        ``only`` restricts the scores to those names (e.g. the pruner's one objective);
        ``seconds``, when given, receives the time of each score (``time/<name>``, and the finer
        timings a score reports itself, e.g. ``time/codes`` of the disentanglement metrics).
        """
        names = [n for n, s in SCORES.items() if s.base and s.missing(self.dataset, self.spec) is None]
        names += [n for n in dict.fromkeys(extra) if n not in names]
        if only is not None:
            names = [n for n in names if n in set(only)]
        reading = Reading(self, G, D, tuple(names))
        out: dict[str, float] = {}
        for name in names:
            started = time.perf_counter()
            values = SCORES[name].compute(reading)
            out |= {k: v for k, v in values.items() if not k.startswith("time/")}
            if seconds is not None:
                seconds[f"time/{name}"] = time.perf_counter() - started
                seconds |= {k: v for k, v in values.items() if k.startswith("time/")}
        return out


class Reading:
    """One model read through an Evaluator: what several scores share is computed once."""

    def __init__(self, evaluator: Evaluator, G: torch.nn.Module, D: torch.nn.Module, names: tuple[str, ...]):
        self.ev, self.G, self.D, self.names = evaluator, G, D, names

    @cached_property
    def q_real(self) -> torch.Tensor:
        return read(self.real_reader, self.ev.real)  # (n_eval, code_dim)

    @cached_property
    def q_gen(self) -> torch.Tensor:
        return q_codes(self.D, generate(self.G, self.ev.z, self.ev.c))  # (n_eval, code_dim)

    @cached_property
    def info(self) -> dict[str, float]:
        return info_scores(self.ev.spec, self.ev.c, self.q_gen)

    @cached_property
    def disentanglement(self) -> dict[str, float]:
        """Every requested disentanglement metric, on one shared sample of codes."""
        from structsearch import metrics

        wanted = [m for m in DISENTANGLEMENT if m in self.names]
        ev = self.ev
        return metrics.all_disentanglement(self.represent, ev.dataset, seed=ev.seed, scale=ev.scale, metrics=wanted)

    @cached_property
    def real_reader(self) -> torch.nn.Module:
        """D normalized by the held-out real batch's statistics, for small batches of real images."""
        return reading_net(self.D, self.ev.real)

    def represent(self, images: torch.Tensor) -> np.ndarray:
        """images -> Q's codes as a float array (continuous means; categorical codes as their argmax)."""
        with evaluating(self.real_reader):
            out = self.real_reader.q(images.to(self.ev.device).float())
        parts = [
            p.argmax(1, keepdim=True).float() if c.kind == "categorical" else p
            for c, p in zip(self.ev.spec.codes, self.ev.spec.split(out))
        ]
        return torch.cat(parts, 1).cpu().numpy()


# ---- the base scores ---------------------------------------------------------------------------


@score("struct_bic", "maximize", base=True)
def _struct_bic(r: Reading) -> dict[str, float]:
    spec = r.ev.spec
    return {"struct_bic": delta_bic(r.ev.graph, make_table(code_columns(spec, r.q_real, "q"), spec))}


@score("agreement", "minimize", base=True)
def _agreement(r: Reading) -> dict[str, float]:
    return {"agreement": float(r.ev.agreement(r.ev.c, r.q_gen))}


@score("info", "maximize", base=True)
def _info(r: Reading) -> dict[str, float]:
    return {k: v for k, v in r.info.items() if k != "info_min"}


@score("info_min", "maximize", base=True)
def _info_min(r: Reading) -> dict[str, float]:
    return {"info_min": r.info["info_min"]}


@score("cat_acc", "maximize", base=True, needs=("labels",))
def _cat_acc(r: Reading) -> dict[str, float]:
    """On the whole test set (MNIST's 10,000 images, the number the literature reports), not only
    the ``n_eval`` held-out images the other scores read."""
    spec = r.ev.spec
    first = next(i for i, code in enumerate(spec.codes) if code.kind == "categorical")
    images, labels = r.ev.dataset.test_images(None)
    if len(images) > len(r.ev.real):
        images = images.to(r.ev.device)
        q = read(reading_net(r.D, images), images)
    else:
        q, labels = r.q_real, r.ev.labels
    predicted = spec.split(q)[first].argmax(1).cpu().numpy()
    return {"cat_acc": matched_accuracy(predicted, labels.cpu().numpy(), spec.codes[first].n_classes)}


@score("anchor_r2", "maximize", base=True, needs=("anchors",))
def _anchor_r2(r: Reading) -> dict[str, float]:
    ev = r.ev
    targets, mask = ev.dataset.anchor_targets(ev.spec, np.arange(len(ev.real)), split="test")
    return anchor_scores(ev.spec, targets, r.q_real, mask)


@score("bic_gen", None, base=True)
def _bic_gen(r: Reading) -> dict[str, float]:
    spec = r.ev.spec
    table = make_table(code_columns(spec, r.ev.c, "c") | code_columns(spec, r.q_gen, "q"), spec)
    return {"bic_gen": bic(r.ev.graph, table) / len(table)}


# ---- the extra scores --------------------------------------------------------------------------

DISENTANGLEMENT = ("mig", "dci", "sap", "modularity", "factorvae", "betavae")
HEADLINE = {"dci": "dci_disentanglement"}  # the key under which a metric reports its headline number


def _disentanglement(name: str) -> Callable[[Reading], dict[str, float]]:
    def compute(r: Reading) -> dict[str, float]:
        scores = r.disentanglement
        own = {k: v for k, v in scores.items() if k in (name, f"time/{name}", "time/codes") or k.startswith(f"{name}_")}
        return own | {name: scores[HEADLINE.get(name, name)]}

    return compute


for _name in DISENTANGLEMENT:
    score(_name, "maximize", base=False, needs=("factors",))(_disentanglement(_name))


@score("shd", "minimize", base=False, needs=("true_graph",))
def _shd(r: Reading) -> dict[str, float]:
    from structsearch import metrics

    rng = np.random.default_rng(r.ev.seed)
    codes, factors = metrics.generate_factor_codes(r.represent, r.ev.dataset, r.ev.n_eval, rng)
    matching = metrics.match_codes(codes, factors)
    value = float(metrics.shd(r.ev.graph.q_edges, r.ev.dataset.true_edges, matching))
    logger.info("shd %d with code->factor matching %s", value, matching)
    return {"shd": value}


@score("fid", "minimize", base=False, needs=("labels_or_factors",))
def _fid(r: Reading) -> dict[str, float]:
    """Frechet distance between held-out real images and as many generated ones, in the features
    of the dataset's cached :class:`~structsearch.metrics.fid.FeatureNet` (``FID_N_SAMPLES`` a side
    at scale 1, at most the dataset's test images: 2,000 on ``shapes``).

    Its size is that of the features, not a bug: they are 128 unnormalized ReLU activations (on
    ``shapes``, mean activation 27, ``|mu|^2`` 232,000) and the distance is in squared feature
    units. On ``shapes``, two sets of 2,000 real images give about 180 (17 at 10,000 a side),
    uniform noise or blank images about 289,000; a model that has not learned the images yet
    (300 narrow steps) reads about 213,000 (``bench/fid_scale.py``). Compare values within one
    dataset and one feature-net version only.
    """
    from structsearch import metrics

    ev = r.ev
    n = max(ev.n_eval, round(metrics.FID_N_SAMPLES * ev.scale))  # 10,000 at the comparable scale
    net, _ = metrics.load_or_train_feature_net(ev.dataset, device=ev.device)
    real, _ = ev.dataset.test_images(n)
    z, c = ev.sample(len(real), torch.Generator(ev.device).manual_seed(ev.seed))
    return {"fid": float(metrics.fid(real.to(ev.device), generate(r.G, z, c), net))}


@score("pair_energy", "minimize", base=False, needs=("pairs",))
def _pair_energy(r: Reading) -> dict[str, float]:
    """Energy distance of Q's codes (q(x), q(x')) of held-out real pairs and of generated pairs.

    In the features Q reads, standardized by the real images' codes. It is computed in image space
    through one fixed reader, so unlike a criterion fitted to each side's codes it sees the trap:
    a G whose codes are exogenous noise (and whose graph is empty) generates do(child) pairs in
    which the child still depends on its old parents, and real pairs do not.
    """
    ev = r.ev
    real = ev.dataset.test_pairs(ev.n_eval)
    z, c, c_after = ev.sample_pairs(len(real), torch.Generator(ev.device).manual_seed(ev.seed + 1))
    codes = [
        q_codes(r.D, images.to(ev.device))
        for images in (real.images, real.images_after, generate(r.G, z, c), generate(r.G, z, c_after))
    ]
    mean, sd = codes[0].mean(0), codes[0].std(0).clamp_min(1e-6)
    x, x_after, g, g_after = (((q - mean) / sd).cpu().numpy() for q in codes)
    return {"pair_energy": energy_distance(np.hstack([x, x_after]), np.hstack([g, g_after]))}


@score("pair_feature_energy", "minimize", base=False, needs=("pairs", "labels_or_factors"))
def _pair_feature_energy(r: Reading) -> dict[str, float]:
    """Energy distance of real and generated pairs (f(x), f(x')) in one fixed feature space, the
    dataset's :class:`~structsearch.metrics.fid.FeatureNet` (``fid``'s), standardized per feature
    by the held-out real images. Also ``pair_feature_energy/single``: the same for single images
    f(x), the part of the distance that is not about pairs (image quality, the marginal).

    Why a fixed space: ``pair_energy`` reads both sides through the scored model's own Q, so each
    model is measured in coordinates and a metric of its own (a Q blind to one factor makes every
    distance along it vanish), and the numbers of two models do not compare. Here every model's
    pairs are images seen by the same net. The trap cannot win by construction: a G whose codes are
    (width, thickness, height's noise) under the empty graph draws do(noise) pairs in which the new
    height still follows width and thickness; real do(height) pairs do not, and the feature net,
    which reads height, sees the difference whatever the model's codes are. The net is trained on
    the dataset's factor values (as for ``fid``): the models never see them, the score's space does.
    """
    from structsearch import metrics
    from structsearch.metrics.fid import features

    ev = r.ev
    net, _ = metrics.load_or_train_feature_net(ev.dataset, device=ev.device)
    real = ev.dataset.test_pairs(ev.n_eval)
    z, c, c_after = ev.sample_pairs(len(real), torch.Generator(ev.device).manual_seed(ev.seed + 1))
    sides = (real.images, real.images_after, generate(r.G, z, c), generate(r.G, z, c_after))
    x, x_after, g, g_after = standardized(*(features(images, net) for images in sides))
    return {
        "pair_feature_energy": energy_distance(np.hstack([x, x_after]), np.hstack([g, g_after])),
        "pair_feature_energy/single": energy_distance(x, g),
    }


# ---- helpers -----------------------------------------------------------------------------------


@torch.no_grad()
def reading_net(D: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.nn.Module:
    """A copy of D (and its Q head), in eval mode, whose batch norms hold the statistics of ``images``.

    During training D/Q normalizes every batch by its own statistics, and real and generated
    batches alternate, so the running averages mix the two kinds of images. Read in eval mode
    with those, Q misreads real images: an anchored `shapes` model (600 steps, 5% anchors) read
    its codes of real test images with R^2 0.04, 0.82 and -0.43 against the factors, and with 0.97,
    0.96 and 0.95 when normalized by real images' own statistics (docs/results.md). So each set of
    images is read with statistics collected on that set (cumulative averages, one pass).
    """
    norms = [m for m in D.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return D
    net = copy.deepcopy(D)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the pass
    net.train()
    for i in range(0, len(images), batch_size):
        net.q(images[i : i + batch_size])
    return net.eval()


@torch.no_grad()
def q_codes(D: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Q's raw outputs (N, code_dim) on images, in batches, normalized by the images' own statistics
    (:func:`reading_net`)."""
    return read(reading_net(D, images, batch_size), images, batch_size)


@torch.no_grad()
def read(net: torch.nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Q's raw outputs (N, code_dim) of a reading net (:func:`reading_net`) on images, in batches."""
    with evaluating(net):
        return torch.cat([net.q(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]).float()


@torch.no_grad()
def generate(G: torch.nn.Module, z: torch.Tensor, c: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """G's images of (z, c), in batches, eval mode."""
    with evaluating(G):
        return torch.cat([G(z[i : i + batch_size], c[i : i + batch_size]) for i in range(0, len(z), batch_size)])


def standardized(reference: torch.Tensor, *others: torch.Tensor) -> list[np.ndarray]:
    """Every (N, d) set (``reference`` first) as float64 arrays centred and scaled per column by
    ``reference``'s mean and standard deviation (a constant column is left unscaled)."""
    mean, sd = reference.double().mean(0), reference.double().std(0)
    sd = torch.where(sd > 1e-6, sd, torch.ones_like(sd))
    return [((x.double() - mean) / sd).cpu().numpy() for x in (reference, *others)]


@torch.no_grad()
def pair_codes(
    D: torch.nn.Module, spec: LatentSpec, dataset, n: int | None = None, standardize: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Q's codes (v, v'), each (n, d) float64, of the first ``n`` held-out real intervention pairs:
    one column per code, standardized by v's columns (as read when ``standardize`` is False). Both
    sides are read by one reading net whose batch norms hold the statistics of the held-out single
    images, so a code means the same thing on x and on x' (reading each side with its own
    statistics would shift the x' side, whose marginal an intervention changes). ValueError for a categorical code: the pair criterion
    (:mod:`structsearch.pairs`) is linear-Gaussian."""
    if any(code.kind != "continuous" for code in spec.codes):
        raise ValueError(f"the pair criterion needs continuous codes only; codes {spec.text()} are not")
    images, _ = dataset.test_images(n)
    pairs = dataset.test_pairs(n)
    net = reading_net(D, images.to(dataset.device))
    sides = (read(net, x.to(dataset.device)) for x in (pairs.images, pairs.images_after))
    columns = (np.column_stack(list(code_columns(spec, q, "q").values())) for q in sides)
    before, after = (torch.from_numpy(c) for c in columns)
    if not standardize:
        return before.double().numpy(), after.double().numpy()
    return tuple(standardized(before, after))


def code_columns(spec: LatentSpec, flat: torch.Tensor, prefix: str) -> dict[str, np.ndarray]:
    """(N, code_dim) -> {"q1": classes or values, ...}: categorical as argmax class, continuous as value."""
    columns = {}
    for code, part in zip(spec.codes, spec.split(flat)):
        name = prefix + code.name[1:]
        columns[name] = part.argmax(1).cpu().numpy() if code.kind == "categorical" else part[:, 0].cpu().numpy()
    return columns


def info_scores(spec: LatentSpec, c: torch.Tensor, q_out: torch.Tensor) -> dict[str, float]:
    """``info`` (mean), ``info_min`` and ``info/cK`` of codes c read back as Q's outputs q_out."""
    per_code = {}
    for code, ci, qi in zip(spec.codes, spec.split(c), spec.split(q_out)):
        if code.kind == "categorical":
            per_code[code.name] = (qi.argmax(1) == ci.argmax(1)).float().mean().item()
        else:
            per_code[code.name] = readback_r2(ci[:, 0], qi[:, 0])
    return {"info": float(np.mean(list(per_code.values()))), "info_min": min(per_code.values())} | {
        f"info/{k}": v for k, v in per_code.items()
    }


def anchor_scores(
    spec: LatentSpec, targets: torch.Tensor, q_out: torch.Tensor, mask: Iterable[bool]
) -> dict[str, float]:
    """``anchor_r2`` (mean over the codes ``mask`` marks) and ``anchor_r2/cK`` of Q's outputs
    ``q_out`` against known ``targets`` (both (N, code_dim), Q's layout): 1 - SSE / SST for a
    continuous code (NaN for a constant target), accuracy of the argmax for a categorical one."""
    per_code = {}
    for code, anchored, ti, qi in zip(spec.codes, mask, spec.split(targets), spec.split(q_out)):
        if not anchored:
            continue
        if code.kind == "categorical":
            per_code[code.name] = (qi.argmax(1) == ti.argmax(1)).double().mean().item()
        else:
            t, q = ti[:, 0].double(), qi[:, 0].double()
            sst = (t - t.mean()).pow(2).sum()
            per_code[code.name] = float(1 - (q - t).pow(2).sum() / sst) if sst > 0 else float("nan")
    return {"anchor_r2": float(np.mean(list(per_code.values())))} | {f"anchor_r2/{k}": v for k, v in per_code.items()}


def _anchorable(dataset, spec: LatentSpec) -> bool:
    try:
        dataset.anchor_codes(spec)
    except (AttributeError, DatasetError):
        return False
    return True


def readback_r2(c: torch.Tensor, q: torch.Tensor) -> float:
    """R^2 of the least-squares line c ~ a q + b, i.e. corr(c, q)^2 (0 for a constant q, NaN for a
    non-finite one)."""
    c, q = c.double() - c.double().mean(), q.double() - q.double().mean()
    denom = (c @ c) * (q @ q)
    if not torch.isfinite(denom):
        return float("nan")
    return float((c @ q) ** 2 / denom) if denom > 0 else 0.0


def class_matching(predicted: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The confusion matrix of ``k`` clusters (rows) against the labels (columns), and the best
    one-to-one matching of clusters to labels: cluster ``rows[i]`` is matched to label ``cols[i]``."""
    confusion = np.zeros((k, max(k, int(labels.max()) + 1)), dtype=np.int64)
    np.add.at(confusion, (predicted, labels), 1)
    rows, cols = linear_sum_assignment(-confusion)
    return confusion, rows, cols


def matched_accuracy(predicted: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Accuracy of a clustering under the best one-to-one matching of clusters to labels."""
    confusion, rows, cols = class_matching(predicted, labels, k)
    return float(confusion[rows, cols].sum() / len(labels))
