"""One run of one graph, in two halves: ``train_and_score`` computes, a ``Recorder`` records.

* :func:`train_and_score` trains a graph and scores it with the run's :class:`Evaluator`: no
  files, no tracking, only the callbacks it is given (a logger, a checkpoint writer, a pruner).
* :class:`Recorder` owns a run folder and its tracked MLflow run: the resolved config, the graph,
  the checkpoint, the traversal grids, the scores.
* :func:`run_trial` joins the two; ``structsearch train``, every search trial and the benchmarks
  call it.

    runs/<name>/config.json      resolved RunConfig
                graph.json/.png  the graph
                checkpoint.pt    G, D/Q, optimizers, step, random streams (atomic writes)
                traversals/      one grid per code + extrapolation grids
                scores.json      the scores after training, with the run's status
                run.json         MLflow run id (so --resume continues the same MLflow run)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from gan.latents import get_spec
from gan.train import Trainer, TrainResult
from gan.traversal import save_traversals
from structsearch import scores as scores_mod
from structsearch.config import RunConfig, resolve_device
from structsearch.drawing import draw_graph
from structsearch.graph import Graph, load_graph
from structsearch.scores import Evaluator
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
    pairs = None
    if cfg.train.lambda_pair > 0:  # intervention pairs (gan/pairs.py)
        if not dataset.has_pairs:
            from structsearch.datasets import DatasetError

            raise DatasetError(
                f"--lambda-pair needs a dataset with intervention pairs (shapes); {dataset.name} has none"
            )
        pairs = dataset.sample_pair_batch
    return Trainer(cfg.train, graph.spec, graph.parents(), dataset.sample, dataset.image_shape, dataset.device, pairs)


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
        self.cfg: RunConfig | None = None
        self.graph: Graph | None = None

    def start(self, cfg: RunConfig, graph: Graph, resume: bool = False) -> None:
        """Write the config and the graph; start the tracked run, or continue it on a resume."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg, self.graph = cfg, graph
        cfg.save(self.run_dir / "config.json")
        (self.run_dir / "graph.json").write_text(graph.to_json() + "\n")
        draw_graph(graph, self.run_dir / "graph.png")
        record = self.run_dir / "run.json"
        if resume and record.exists() and (run_id := json.loads(record.read_text()).get("run_id")):
            self.run_id = self.tracker.resume_run(run_id)
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
        for artifact in ("config.json", "graph.json", "graph.png", "scores.json", "checkpoint.pt"):
            self.tracker.log_artifact(run_id, self.run_dir / artifact)
        self.tracker.set_tags(run_id, {"status": result.status, "message": result.message})
        status = {"diverged": "FAILED", "stopped": "KILLED"}.get(result.status, "FINISHED")
        self.tracker.end_run(run_id, status)
        if result.status == "completed" and self.objectives:
            self.tracker.log_metrics(run_id, {f"objective/{o}": scores[o] for o in self.objectives})
        return TrialResult(result.status, result.message, result.step, self.run_dir, run_id, scores, seconds)


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
    recorder.start(cfg, graph, resume)
    trainer = make_trainer(cfg, graph, dataset)
    if resume:
        recorder.restore(trainer)
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
    graph = Graph.from_json((run_dir / "graph.json").read_text())
    trainer = make_trainer(cfg, graph, dataset)
    trainer.load(run_dir / "checkpoint.pt")
    return cfg, graph, dataset, trainer


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
    record = run_dir / "run.json"
    run_id = json.loads(record.read_text()).get("run_id") if record.exists() else None
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
