"""One run of one graph, in two halves: ``train_and_score`` computes, a ``Recorder`` records.

* :func:`train_and_score` trains a graph and scores it with the run's :class:`Evaluator`: no
  files, no tracking, only the callbacks it is given (a logger, a checkpoint writer, a pruner).
* :class:`Recorder` owns a run folder and its tracked MLflow run: the resolved config, the graph,
  the checkpoint, the traversal grids, the scores.
* :func:`run_trial` joins the two; ``structsearch train``, every search trial and the benchmarks
  call it.

    runs/<name>/config.json      resolved RunConfig
                graph.json/.png  the graph
                checkpoint.pt    G, D/Q, optimizers, step, random streams (atomic writes); kept here
                                 only: the MLflow run names it (tags structsearch.checkpoint, _sha256)
                traversals/      one grid per code + extrapolation grids
                scores.json      the scores after training, with the run's status
                run.json         MLflow run id (so --resume continues the same MLflow run)
                anchors.json     with --anchor-labels: the anchored training images (count, seed,
                                 sha256 and the indices themselves)

Anchors (``--anchor-labels F``, ss-InfoGAN): F in (0, 1) anchors round(F * n_train) training
images (at least one), F >= 1 anchors F of them. The subset is drawn by numpy from the run's seed
(:func:`anchor_index`), apart from every torch stream of the run, so it is the same on every
device and a run without anchors draws what it always drew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gan.latents import LatentSpec, get_spec
from gan.train import Anchors, Trainer, TrainResult
from gan.traversal import save_traversals
from structsearch import pairs as pair_criterion
from structsearch import scores as scores_mod
from structsearch.config import RunConfig, resolve_device
from structsearch.drawing import draw_graph
from structsearch.graph import Graph, GraphError, load_graph
from structsearch.scores import Evaluator
from structsearch.scoring import make_table
from structsearch.tracking import NullTracker, Tracker

logger = logging.getLogger(__name__)

OnLog = Callable[[int, dict[str, float], Trainer], bool | None]


@dataclass
class TrialResult:
    status: str  # completed | diverged | stopped
    message: str
    step: int
    run_dir: Path | None
    run_id: str | None
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    resumed_at: int = 0  # the checkpoint's step training continued from (0: from scratch)


@dataclass(frozen=True)
class Pruning:
    """Ask a pruner during training: every ``every`` steps (not the last), score ``objective`` with
    the run's Evaluator and stop when ``should_stop(step, value)`` says so."""

    objective: str
    every: int
    should_stop: Callable[[int, float], bool]


@dataclass
class Outcome:
    """What :func:`train_and_score` returns: how training ended, the scores, the trained models."""

    result: TrainResult
    scores: dict[str, float]
    trainer: Trainer


def load_dataset(cfg: RunConfig, device=None):
    """The run's dataset on its device (``DatasetError`` for a user mistake)."""
    from structsearch.datasets import get_dataset

    options = {"graph": cfg.shapes_graph} if cfg.dataset == "shapes" else {}
    device = device or resolve_device(cfg.device)
    return get_dataset(cfg.dataset, data_dir=cfg.data_dir, device=device, seed=0, **options)


def resolve_graph(cfg: RunConfig, dataset) -> Graph:
    """The run's graph on its latent spec (the dataset's unless ``codes`` says otherwise)."""
    spec = get_spec(cfg.codes or dataset.spec_name)
    return load_graph(cfg.graph, spec)


def graph_params(graph: Graph, possible_edges: list[tuple[str, str]] | None = None) -> dict[str, object]:
    """One 0/1 param per possible edge (``edge/q1_q3``) plus the edge list as text."""
    edges = set(graph.edges)
    possible = possible_edges or sorted(edges)
    return {f"edge/{u}_{v}": int((u, v) in edges) for u, v in possible} | {"graph": graph.key or "(none)"}


def time_limit(minutes: float) -> Callable[[int, dict[str, float], Trainer], bool]:
    """An ``on_log`` for :func:`run_trial` that stops training once ``minutes`` of wall time have passed."""
    deadline = time.monotonic() + 60 * minutes
    return lambda step, losses, trainer: time.monotonic() > deadline


def make_trainer(cfg: RunConfig, graph: Graph, dataset) -> Trainer:
    anchors = make_anchors(cfg, graph.spec, dataset) if cfg.train.anchor_labels > 0 else None
    pairs = None
    if cfg.train.lambda_pair > 0:  # intervention pairs (gan/pairs.py)
        if not dataset.has_pairs:
            from structsearch.datasets import DatasetError

            raise DatasetError(
                f"--lambda-pair needs a dataset with intervention pairs (shapes); {dataset.name} has none"
            )
        pairs = dataset.sample_pair_batch
    return Trainer(
        cfg.train,
        graph.spec,
        graph.parents(),
        dataset.sample,
        dataset.image_shape,
        dataset.device,
        anchors=anchors,
        sample_real_pairs=pairs,
    )


# ---- anchors -----------------------------------------------------------------------------------

ANCHOR_STREAM = 7  # numpy seeds the subset with [ANCHOR_STREAM, seed]: no torch stream of the run is touched


def anchor_count(anchor_labels: float, dataset) -> int:
    """How many training images ``--anchor-labels`` anchors; ValueError for more than the dataset has."""
    n_train = dataset.n_train
    count = max(1, round(anchor_labels * n_train)) if anchor_labels < 1 else int(anchor_labels)
    if count > n_train:
        raise ValueError(
            f"--anchor-labels {anchor_labels:g} asks for {count} anchored images, but {dataset.name} has "
            f"{n_train} training images; give a fraction in (0, 1) or a count <= {n_train}"
        )
    return count


def check_anchors(cfg: RunConfig, spec: LatentSpec, dataset) -> None:
    """Refuse anchors the dataset cannot give (too many, or none of its factors or labels fit the codes):
    ValueError or DatasetError, one line each. Nothing to check without anchors."""
    if cfg.train.anchor_labels > 0:
        anchor_count(cfg.train.anchor_labels, dataset)
        dataset.anchor_codes(spec)


def anchor_index(cfg: RunConfig, dataset) -> np.ndarray:
    """The run's anchored training images: sorted int64 indices, drawn without replacement by numpy
    from the run's seed."""
    count = anchor_count(cfg.train.anchor_labels, dataset)
    rng = np.random.default_rng([ANCHOR_STREAM, cfg.train.seed % 2**63])
    return np.sort(rng.choice(dataset.n_train, size=count, replace=False)).astype(np.int64)


def make_anchors(cfg: RunConfig, spec: LatentSpec, dataset) -> Anchors:
    """The Trainer's anchors: the run's anchored images (fetched per batch) and their known codes."""
    index = anchor_index(cfg, dataset)
    targets, mask = dataset.anchor_targets(spec, index)
    where = torch.from_numpy(index).to(dataset.device)
    return Anchors(lambda positions: dataset.train_images_at(where[positions]), targets, mask)


def anchor_record(cfg: RunConfig, spec: LatentSpec, dataset) -> dict[str, object] | None:
    """What ``anchors.json`` holds (None without anchors): the anchored images and codes, and a
    sha256 of the indices (as little-endian int64) to compare subsets at a glance."""
    if cfg.train.anchor_labels <= 0:
        return None
    index = anchor_index(cfg, dataset)
    codes = dataset.anchor_codes(spec)
    return {
        "anchor_labels": cfg.train.anchor_labels,
        "count": len(index),
        "seed": cfg.train.seed,
        "codes": [spec.codes[i].name for i in sorted(codes)],
        "sha256": hashlib.sha256(index.astype("<i8").tobytes()).hexdigest(),
        "index": index.tolist(),
    }


def train_and_score(
    cfg: RunConfig,
    graph: Graph,
    dataset,
    trainer: Trainer | None = None,
    *,
    extra_scores: Sequence[str] = (),
    scale: float = 0.2,
    on_log: OnLog | None = None,
    checkpoint: Callable[[Trainer], None] | None = None,
    pruning: Pruning | None = None,
) -> Outcome:
    """Train ``graph`` (from ``trainer``'s step, a fresh trainer when None) and score it; never
    raises for a diverged run (its scores are empty). ``on_log(step, losses, trainer)`` and the
    pruner may stop training early; ``checkpoint(trainer)`` is called as ``Trainer.run`` says."""
    trainer = trainer or make_trainer(cfg, graph, dataset)
    evaluator = Evaluator(
        graph, dataset, cfg.n_eval, cfg.train.seed, scale, trainer.sample_latents, trainer.sample_pair_latents
    )

    def callback(step: int, losses: dict[str, float]) -> bool:
        stop = bool(on_log(step, losses, trainer)) if on_log else False
        if pruning and step % pruning.every == 0 and step < cfg.train.n_steps:
            value = evaluator(trainer.G, trainer.D, only=(pruning.objective,))[pruning.objective]
            stop = pruning.should_stop(step, value) or stop
        return stop

    result = trainer.run(callback=callback, checkpoint=checkpoint)
    scores = {} if result.status == "diverged" else evaluator(trainer.G, trainer.D, extra=extra_scores)
    return Outcome(result, scores, trainer)


class Recorder:
    """Owns one run folder and its tracked run (see the module docstring for the folder).

    Args:
        run_dir: the run folder (created).
        tracker: where the run is tracked (none when None).
        name: the tracked run's name (default: the folder's name).
        parent_run_id: the tracked parent run (a study's).
        params: params logged beside the config's and the graph's.
        tags: tags of the tracked run.
        objectives: scores also logged as ``objective/<name>`` when the run completes.
    """

    def __init__(
        self,
        run_dir: Path,
        tracker: Tracker | None = None,
        *,
        name: str | None = None,
        parent_run_id: str | None = None,
        params: Mapping[str, object] | None = None,
        tags: Mapping[str, str] | None = None,
        objectives: Sequence[str] = (),
    ) -> None:
        self.run_dir, self.tracker = Path(run_dir), tracker or NullTracker()
        self.name, self.parent_run_id = name or self.run_dir.name, parent_run_id
        self.params, self.tags, self.objectives = dict(params or {}), dict(tags or {}), tuple(objectives)
        self.checkpoint = self.run_dir / "checkpoint.pt"
        self.run_id: str | None = None
        self.resumed_at = 0
        self.cfg: RunConfig | None = None
        self.graph: Graph | None = None

    def start(
        self, cfg: RunConfig, graph: Graph, resume: bool = False, anchors: Mapping[str, object] | None = None
    ) -> None:
        """Write the config, the graph and the anchors (:func:`anchor_record`); start the tracked run,
        or continue it on a resume."""
        resumed_id = read_run_record(self.run_dir).get("run_id") if resume else None  # read before any write
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg, self.graph = cfg, graph
        cfg.save(self.run_dir / "config.json")
        (self.run_dir / "graph.json").write_text(graph.to_json() + "\n")
        draw_graph(graph, self.run_dir / "graph.png")
        if anchors is not None:
            (self.run_dir / "anchors.json").write_text(json.dumps(dict(anchors)) + "\n")
            self.params |= {f"anchors.{k}": anchors[k] for k in ("count", "sha256")}
        record = self.run_dir / "run.json"
        if resumed_id:
            self.run_id = self.tracker.resume_run(resumed_id)
            return
        params = _flat_params(cfg) | graph_params(graph) | self.params
        self.run_id = self.tracker.start_run(self.name, params, tags=self.tags, parent_run_id=self.parent_run_id)
        record.write_text(
            json.dumps({"run_id": self.run_id, "tracking_uri": getattr(self.tracker, "uri", None)}) + "\n"
        )

    def restore(self, trainer: Trainer) -> None:
        """Load the folder's checkpoint into ``trainer``, when there is one."""
        if self.checkpoint.exists():
            trainer.load(self.checkpoint)
            self.resumed_at = trainer.step
            logger.info("resumed %s at step %d", self.run_dir, trainer.step)

    def save_checkpoint(self, trainer: Trainer) -> None:
        trainer.save(self.checkpoint)

    def log(self, step: int, losses: Mapping[str, float]) -> None:
        self.tracker.log_metrics(self.run_id, losses, step)

    def finish(self, outcome: Outcome, seconds: float) -> TrialResult:
        """Scores, traversal grids and artifacts recorded; the tracked run ended with its status."""
        result, scores, run_id = outcome.result, outcome.scores, self.run_id
        if result.status != "diverged":
            self.tracker.log_metrics(run_id, {f"score/{k}": v for k, v in scores.items()}, result.step)
            traversals = save_traversals(
                outcome.trainer.G, self.graph.spec, self.run_dir / "traversals", seed=self.cfg.train.seed
            )
            for path in traversals:
                self.tracker.log_artifact(run_id, path, "traversals")
        summary = {"status": result.status, "message": result.message, "step": result.step, "scores": scores}
        (self.run_dir / "scores.json").write_text(json.dumps(summary, indent=2) + "\n")
        for artifact in ("config.json", "graph.json", "graph.png", "scores.json", "anchors.json"):
            if artifact != "anchors.json" or (self.run_dir / artifact).exists():
                self.tracker.log_artifact(run_id, self.run_dir / artifact)
        self.tracker.set_tags(run_id, {"status": result.status, "message": result.message} | self._checkpoint_tags())
        status = {"diverged": "FAILED", "stopped": "KILLED"}.get(result.status, "FINISHED")
        self.tracker.end_run(run_id, status)
        if result.status == "completed" and self.objectives:
            self.tracker.log_metrics(run_id, {f"objective/{o}": scores[o] for o in self.objectives})
        return TrialResult(
            result.status, result.message, result.step, self.run_dir, run_id, scores, seconds, self.resumed_at
        )

    def _checkpoint_tags(self) -> dict[str, str]:
        """Where the checkpoint is, instead of a second copy in MLflow's artifacts (it is most of a
        run's bytes, and ``evaluate`` and ``--resume`` read the run folder's): its absolute path,
        size and sha256, to tell that the file is still the one the run ended with."""
        if not self.checkpoint.exists():
            return {}
        digest = hashlib.sha256()
        with open(self.checkpoint, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return {
            "structsearch.checkpoint": str(self.checkpoint.resolve()),
            "structsearch.checkpoint_bytes": str(self.checkpoint.stat().st_size),
            "structsearch.checkpoint_sha256": digest.hexdigest(),
        }


def run_trial(
    cfg: RunConfig,
    graph: Graph,
    dataset,
    recorder: Recorder,
    *,
    resume: bool = False,
    extra_scores: Sequence[str] = (),
    scale: float = 0.2,
    on_log: OnLog | None = None,
    pruning: Pruning | None = None,
    progress: bool = True,
) -> TrialResult:
    """Train and score ``graph`` on ``dataset`` and record it all with ``recorder``, with a progress
    bar; on ``resume`` training continues from the folder's checkpoint. Never raises for a
    diverged run."""
    started = time.time()
    trainer = make_trainer(cfg, graph, dataset)
    if resume:  # before start: a checkpoint that does not load leaves the folder as it was
        recorder.restore(trainer)
    recorder.start(cfg, graph, resume, anchor_record(cfg, graph.spec, dataset))
    bar = tqdm(
        total=cfg.train.n_steps,
        initial=trainer.step,
        desc=recorder.name,
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )

    def log(step: int, losses: dict[str, float], trainer: Trainer) -> bool | None:
        recorder.log(step, losses)
        bar.update(step - bar.n)
        bar.set_postfix({k.split("/")[1]: f"{v:.3g}" for k, v in losses.items()})
        return on_log(step, losses, trainer) if on_log else None

    try:
        outcome = train_and_score(
            cfg,
            graph,
            dataset,
            trainer,
            extra_scores=extra_scores,
            scale=scale,
            on_log=log,
            checkpoint=recorder.save_checkpoint,
            pruning=pruning,
        )
    finally:
        bar.close()
    return recorder.finish(outcome, time.time() - started)


def load_run(run_dir: Path, device: str | None = None):
    """(config, graph, dataset, trainer) of a run folder, the trainer at its last checkpoint."""
    if not (run_dir / "checkpoint.pt").exists():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint.pt; give a run folder written by `structsearch train`")
    cfg = RunConfig.load(run_dir / "config.json")
    if device:
        cfg = dataclasses.replace(cfg, device=device)
    dataset = load_dataset(cfg)
    graph = read_run_graph(run_dir)
    trainer = make_trainer(cfg, graph, dataset)
    trainer.load(run_dir / "checkpoint.pt")
    return cfg, graph, dataset, trainer


def real_codes(run_dir: Path, n: int | None = None, device: str | None = None):
    """(config, graph, dataset, table) of a run folder: the table holds Q's codes (one column per q
    node, :func:`structsearch.scoring.make_table`) of the first ``n`` held-out real images (the run's
    ``n_eval`` when None), read by the run's last checkpoint."""
    cfg, graph, dataset, trainer = load_run(run_dir, device)
    images, _ = dataset.test_images(n or cfg.n_eval)
    q = scores_mod.q_codes(trainer.D, images.to(dataset.device))
    return cfg, graph, dataset, make_table(scores_mod.code_columns(graph.spec, q, "q"), graph.spec)


MAX_PAIR_NODES = 4  # 543 DAGs; 5 codes have 29,281


def real_pair_ranking(run_dir: Path, n: int | None = None, device: str | None = None):
    """(config, graph, dataset, ranking) of a run folder: every DAG over its codes scored by the pair
    criterion (:func:`structsearch.pairs.pair_score`) on Q's codes of the first ``n`` held-out real
    intervention pairs (the run's ``n_eval`` when None), best first. ValueError for a dataset
    without pairs, a categorical code, or more than ``MAX_PAIR_NODES`` codes.

    No factor value is read, so an unanchored run's ranking is the graph up to a relabelling of its
    codes; with anchors code i is factor i (docs/design.md section 8)."""
    cfg, graph, dataset, trainer = load_run(run_dir, device)
    if not getattr(dataset, "has_pairs", False):
        raise ValueError(f"{cfg.dataset} has no intervention pairs; --table pairs needs shapes")
    if len(graph.spec.codes) > MAX_PAIR_NODES:
        raise ValueError(
            f"--table pairs scores every DAG, at most {MAX_PAIR_NODES} codes; this run has {len(graph.spec.codes)}"
        )
    before, after = scores_mod.pair_codes(trainer.D, graph.spec, dataset, n or cfg.n_eval)
    ranked = pair_criterion.ranked_dags(before, after)
    return cfg, graph, dataset, ranked


def anchor_labels_table(run_dir: Path, device: str | None = None):
    """(config, graph, dataset, table) of a run folder trained with ``--anchor-labels``: the table
    holds the anchored training images' known values, one column per q node (code i's known factor
    or label), no network involved. ValueError when the run has no anchors or leaves a code unanchored.

    This is the estimator a user with anchors has before any GAN: on ``shapes`` it finds the true
    graph's Markov class where Q's codes of real images do not (docs/results.md, issue 14)."""
    cfg = RunConfig.load(run_dir / "config.json")
    if device:
        cfg = dataclasses.replace(cfg, device=device)
    if cfg.train.anchor_labels <= 0:
        raise ValueError(f"{run_dir} was trained without --anchor-labels, so it has no known values; use --table codes")
    dataset = load_dataset(cfg)
    graph = read_run_graph(run_dir)
    spec = graph.spec
    columns = dataset.anchor_codes(spec)
    missing = [spec.codes[i].name for i in range(len(spec.codes)) if i not in columns]
    if missing:
        raise ValueError(
            f"{cfg.dataset}'s anchors give no known value for code(s) {', '.join(missing)}, so they cannot "
            "score a graph over every code; use --table codes"
        )
    values = dataset._anchor_values("train", anchor_index(cfg, dataset))
    table = {f"q{i + 1}": values[:, columns[i]] for i in range(len(spec.codes))}
    return cfg, graph, dataset, make_table(table, spec)


def read_run_graph(run_dir: Path, spec=None) -> Graph:
    """The graph a run folder was trained with: its own ``graph.json`` (never the path the config
    names, which may be relative or may have changed since)."""
    path = Path(run_dir) / "graph.json"
    try:
        return Graph.from_json(path.read_bytes().decode("utf-8"), spec)
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist; give a run folder written by `structsearch train`") from None
    except (UnicodeDecodeError, GraphError) as err:
        reason = "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else str(err)
        raise ValueError(f"{path} is not a valid run graph ({reason}); restore it, or start the run over") from None


def read_run_record(run_dir: Path) -> dict:
    """A run folder's ``run.json`` (its MLflow run id and store), ``{}`` when it has none."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_bytes().decode("utf-8"))
    except ValueError:  # not JSON, not UTF-8
        record = None
    if not isinstance(record, dict):
        raise ValueError(f"{path} is not a valid run record (JSON with run_id and tracking_uri); fix or delete it")
    return record


def evaluate_run(
    run_dir: Path, metrics: str = "all", scale: float = 1.0, tracker: Tracker | None = None, device: str | None = None
) -> dict[str, float]:
    """Recompute a run's scores from its checkpoint: the base scores plus ``metrics`` (comma-separated
    names, or ``all`` the dataset allows), with seconds per score; log them to the run's MLflow run."""
    cfg, graph, dataset, trainer = load_run(run_dir, device)
    extra = scores_mod.available_metrics(dataset, graph.spec, metrics)
    timings: dict[str, float] = {}
    evaluator = Evaluator(
        graph, dataset, cfg.n_eval, cfg.train.seed, scale, trainer.sample_latents, trainer.sample_pair_latents
    )
    scores = evaluator(trainer.G, trainer.D, extra=extra, seconds=timings)
    run_id = read_run_record(run_dir).get("run_id")
    if tracker is not None and run_id:
        tracker.log_metrics(run_id, {f"eval/{k}": v for k, v in scores.items()}, trainer.step)
    (run_dir / "evaluation.json").write_text(
        json.dumps({"step": trainer.step, "scale": scale, "scores": scores, "seconds": timings}, indent=2) + "\n"
    )
    return scores | timings


def _flat_params(cfg: RunConfig) -> dict[str, object]:
    data = cfg.to_dict()
    train = data.pop("train")
    return {**{k: v for k, v in data.items() if k != "graph"}, **{f"train.{k}": v for k, v in train.items()}}
