"""One run of one graph: the only place where training, scoring and tracking meet.

``run_trial`` is what ``structsearch train`` calls once and what every search trial calls. It
writes a self-contained run folder (resolved config, graph, checkpoint, pictures, scores) and,
unless tracking is off, one MLflow run with the same content.

    runs/<name>/config.json      resolved RunConfig
                graph.json/.png  the graph
                checkpoint.pt    G, D/Q, optimizers, step, random streams (atomic writes)
                traversals/      one grid per code + extrapolation grids
                scores.json      the scores after training, with the run's status
                run.json         MLflow run id (so --resume continues the same MLflow run)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from gan.latents import get_spec
from gan.train import Trainer, TrainResult, resolve_device
from gan.traversal import save_traversals
from structsearch import objectives
from structsearch.config import RunConfig
from structsearch.drawing import draw_graph
from structsearch.evaluate import compute_scores
from structsearch.graph import Graph, load_graph
from structsearch.tracking import NullTracker, Tracker

logger = logging.getLogger(__name__)


@dataclass
class TrialResult:
    status: str  # completed | diverged | stopped
    message: str
    step: int
    run_dir: Path
    run_id: str | None
    scores: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


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


def run_trial(
    cfg: RunConfig,
    graph: Graph,
    dataset,
    run_dir: Path,
    tracker: Tracker | None = None,
    *,
    name: str | None = None,
    parent_run_id: str | None = None,
    extra_params: dict[str, object] | None = None,
    tags: dict[str, str] | None = None,
    resume: bool = False,
    extra_scores: Sequence[str] = (),
    scale: float = 0.2,
    on_log: Callable[[int, dict[str, float], Trainer], bool | None] | None = None,
    progress: bool = True,
) -> TrialResult:
    """Train ``graph`` on ``dataset``, score it, track it; never raises for a diverged run."""
    started = time.time()
    tracker = tracker or NullTracker()
    run_dir.mkdir(parents=True, exist_ok=True)
    device = dataset.device
    checkpoint = run_dir / "checkpoint.pt"
    cfg.save(run_dir / "config.json")
    (run_dir / "graph.json").write_text(graph.to_json() + "\n")
    draw_graph(graph, run_dir / "graph.png")

    run_id = _start_or_resume(tracker, cfg, graph, run_dir, name, parent_run_id, extra_params, tags, resume)
    trainer = Trainer(cfg.train, graph.spec, graph.parents(), dataset.sample, dataset.image_shape, device)
    if resume and checkpoint.exists():
        trainer.load(checkpoint)
        logger.info("resumed %s at step %d", run_dir, trainer.step)

    bar = tqdm(
        total=cfg.train.n_steps,
        initial=trainer.step,
        desc=name or run_dir.name,
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
    )

    def log(step: int, losses: dict[str, float]) -> bool | None:
        tracker.log_metrics(run_id, losses, step)
        bar.update(step - bar.n)
        bar.set_postfix({k.split("/")[1]: f"{v:.3g}" for k, v in losses.items()})
        return on_log(step, losses, trainer) if on_log else None

    try:
        result: TrainResult = trainer.run(callback=log, checkpoint=lambda t: t.save(checkpoint))
    finally:
        bar.close()
    scores: dict[str, float] = {}
    if result.status != "diverged":
        scores = compute_scores(
            trainer.G, trainer.D, graph.spec, graph, dataset, cfg.n_eval, cfg.train.seed, trainer.sample_latents
        )
        if extra_scores:
            scores |= objectives.extra_scores(
                trainer.G,
                trainer.D,
                graph,
                dataset,
                extra_scores,
                cfg.n_eval,
                cfg.train.seed,
                scale,
                sample=trainer.sample_latents,
            )
        tracker.log_metrics(run_id, {f"score/{k}": v for k, v in scores.items()}, result.step)
        for path in save_traversals(trainer.G, graph.spec, run_dir / "traversals", seed=cfg.train.seed):
            tracker.log_artifact(run_id, path, "traversals")
    summary = {"status": result.status, "message": result.message, "step": result.step, "scores": scores}
    (run_dir / "scores.json").write_text(json.dumps(summary, indent=2) + "\n")
    for artifact in ("config.json", "graph.json", "graph.png", "scores.json", "checkpoint.pt"):
        tracker.log_artifact(run_id, run_dir / artifact)
    tracker.set_tags(run_id, {"status": result.status, "message": result.message})
    tracker.end_run(
        run_id, "FAILED" if result.status == "diverged" else "KILLED" if result.status == "stopped" else "FINISHED"
    )
    return TrialResult(result.status, result.message, result.step, run_dir, run_id, scores, time.time() - started)


def load_run(run_dir: Path, device: str | None = None):
    """(config, graph, dataset, trainer) of a run folder, the trainer at its last checkpoint."""
    if not (run_dir / "checkpoint.pt").exists():
        raise FileNotFoundError(f"{run_dir} holds no checkpoint.pt; give a run folder written by `structsearch train`")
    cfg = RunConfig.load(run_dir / "config.json")
    if device:
        cfg.device = device
    dataset = load_dataset(cfg)
    graph = Graph.from_json((run_dir / "graph.json").read_text())
    trainer = Trainer(cfg.train, graph.spec, graph.parents(), dataset.sample, dataset.image_shape, dataset.device)
    trainer.load(run_dir / "checkpoint.pt")
    return cfg, graph, dataset, trainer


def evaluate_run(
    run_dir: Path, metrics: str = "all", scale: float = 1.0, tracker: Tracker | None = None, device: str | None = None
) -> dict[str, float]:
    """Recompute a run's scores from its checkpoint: the base scores plus ``metrics`` (comma-separated
    names, or ``all`` the dataset allows), with seconds per metric; log them to the run's MLflow run."""
    cfg, graph, dataset, trainer = load_run(run_dir, device)
    metrics = objectives.available_metrics(dataset, graph.spec, metrics)
    timings: dict[str, float] = {}
    started = time.time()
    scores = compute_scores(
        trainer.G, trainer.D, graph.spec, graph, dataset, cfg.n_eval, cfg.train.seed, trainer.sample_latents
    )
    timings["time/base"] = time.time() - started
    scores |= objectives.extra_scores(
        trainer.G,
        trainer.D,
        graph,
        dataset,
        metrics,
        cfg.n_eval,
        cfg.train.seed,
        scale,
        trainer.sample_latents,
        timings,
    )
    record = run_dir / "run.json"
    run_id = json.loads(record.read_text()).get("run_id") if record.exists() else None
    if tracker is not None and run_id:
        tracker.log_metrics(run_id, {f"eval/{k}": v for k, v in scores.items()}, trainer.step)
    (run_dir / "evaluation.json").write_text(
        json.dumps({"step": trainer.step, "scale": scale, "scores": scores, "seconds": timings}, indent=2) + "\n"
    )
    return scores | timings


def _start_or_resume(tracker, cfg, graph, run_dir, name, parent_run_id, extra_params, tags, resume) -> str | None:
    record = run_dir / "run.json"
    if resume and record.exists():
        run_id = json.loads(record.read_text()).get("run_id")
        if run_id:
            return tracker.resume_run(run_id)
    params = _flat_params(cfg) | graph_params(graph) | (extra_params or {})
    run_id = tracker.start_run(name or run_dir.name, params, tags=tags, parent_run_id=parent_run_id)
    record.write_text(json.dumps({"run_id": run_id, "tracking_uri": getattr(tracker, "uri", None)}) + "\n")
    return run_id


def _flat_params(cfg: RunConfig) -> dict[str, object]:
    data = cfg.to_dict()
    train = data.pop("train")
    return {**{k: v for k, v in data.items() if k != "graph"}, **{f"train.{k}": v for k, v in train.items()}}
