"""The search over graphs: one Optuna trial = one graph = one call of ``run_trial``.

docs/design.md section 5. The study itself (config, storage, sampler, ranking) is :mod:`structsearch.study`.

* Seeds: on a new study, the ``independent`` graph and every ``--seed-graph`` are enqueued first.
* The budget: ``--trials N`` is N distinct graphs trained (or the whole space, when it holds fewer;
  the study then ends saying so). A proposal that repeats a trained graph is answered from the
  stored values (``duplicate_of``) so that the sampler learns, and counts for nothing. After
  ``MAX_REPEATS`` repeats in a row, an untrained graph of the space is enqueued (``fill_in``).
* Claims: before training, a trial claims its graph in the study's database (an atomic insert,
  :func:`structsearch.study.claim_graph`); a worker whose proposal is claimed by a running trial
  prunes it (``taken_by``) and takes another proposal, so no graph is trained twice.
* Workers: each worker process has its own sampler seed, from the study seed and a worker index
  recorded in the study's database.
* Kills: a trial records its owner process. Before every trial, a worker fails the running
  trials whose owner on this machine is dead and re-enqueues each with the same graph
  (``RetryHeartbeatStaleTrialCallback``); the retry resumes the dead trial's checkpoint, under its
  seed, in its folder, holding its graph claim. An owner on another machine is judged by its
  heartbeats instead, after ``grace_period`` seconds. A trial ended by an error in a live process
  (Ctrl-C, a full disk) is re-enqueued the same way.
* Threads: CPU workers sharing a machine share its cores (:func:`thread_share`): ``--workers N``
  gives each cores // N, and a worker started by hand counts the live workers on this machine
  before each trial.
* Infeasible: with ``--min-info X``, a trial whose worst code is recovered with info below X
  violates a constraint (Optuna's ``constraints_func``), so a collapsed model never wins.
* A diverged trial is pruned with its reason, never a crash of the study.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from search_spaces import SCORE_EQUIVALENT, CandidatesSpace, SearchSpace
from structsearch import scores, tracking
from structsearch.config import RunConfig
from structsearch.graph import Graph, load_graph
from structsearch.study import (
    PopLock,
    SearchConfig,
    claim_graph,
    config_of,  # noqa: F401
    enqueue_seeds,
    fail_dead_trials,
    fmt_values,
    live_workers,
    load_existing,  # noqa: F401 (the CLI's entry points live here)
    make_search_space,
    open_study,
    ranked,
    record_owner,
    register_worker,
    retry_failed,
    trained_graphs,
)
from structsearch.tracking import Tracker, make_tracker
from structsearch.trial import Pruning, Recorder, check_anchors, graph_params, load_dataset, resolve_graph, run_trial

logger = logging.getLogger(__name__)
PARENT_ATTR = "mlflow_parent_run_id"
MAX_REPEATS = 20
"""Repeated proposals in a row after which an untrained graph of the space is enqueued."""
ENUMERATE_LIMIT = 20_000
"""Spaces with at most this many edge combinations are enumerated, to know when they are exhausted."""


@dataclasses.dataclass(frozen=True)
class Claimed:
    """A graph this trial trains: its run config (the trial's seed), folder and Recorder."""

    graph: Graph
    run: RunConfig
    run_dir: Path
    recorder: Recorder


@dataclasses.dataclass(frozen=True)
class Repeat:
    """A graph already trained: the trial is answered with its stored values."""

    values: tuple[float, ...] | float


@dataclasses.dataclass(frozen=True)
class Taken:
    """A graph another trial holds: this trial is pruned, and the worker takes another proposal."""

    message: str


class Objective:
    """The trial function: graph from the space, stored result or a fresh run, values out."""

    def __init__(
        self,
        cfg: SearchConfig,
        study: optuna.Study,
        dataset,
        space: SearchSpace,
        tracker: Tracker,
        parent_run_id: str | None,
    ) -> None:
        self.cfg, self.study, self.dataset, self.space = cfg, study, dataset, space
        self.tracker, self.parent_run_id = tracker, parent_run_id
        self.possible_edges = space.possible_edges()
        self.repeats = 0  # proposals in a row that repeated a trained graph
        self.pop_lock = PopLock(cfg.storage_url())
        self.trial_number: int | None = None  # the trial in progress, re-enqueued if it ends in an error

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...] | float:
        record_owner(trial)  # before the pop lock goes: a trial without an owner there is an orphan
        self.pop_lock.release()  # the trial is ours: the next worker may take one
        self.trial_number = trial.number
        claimed = self.claim(trial)
        if isinstance(claimed, Repeat):
            return claimed.values
        if isinstance(claimed, Taken):
            raise optuna.TrialPruned(claimed.message)
        result = run_trial(
            claimed.run,
            claimed.graph,
            self.dataset,
            claimed.recorder,
            resume=(claimed.run_dir / "checkpoint.pt").exists(),
            extra_scores=self.cfg.objectives,
            pruning=self._pruning(trial),
        )
        values = self.record(trial, result)
        if result.status == "diverged":
            raise optuna.TrialPruned(result.message)
        if result.status == "stopped":
            raise optuna.TrialPruned(f"pruned at step {result.step}")
        return values

    def claim(self, trial: optuna.Trial) -> Claimed | Repeat | Taken:
        """The trial's graph from the space, and what to do with it: a repeat of a trained graph is
        answered from its stored values, a graph another trial holds is taken, and otherwise this
        trial claims it, with its run config (seed), run folder and Recorder. Shared by the plain
        loop (:meth:`__call__`) and the stacked one (:mod:`structsearch.stacked_search`)."""
        cfg = self.cfg
        graph = self.space.suggest(trial)
        trial.set_user_attr("graph_key", graph.key)
        trial.set_user_attr("graph_json", graph.to_json(indent=None))
        self.repeats += 1
        done = self._completed_with(graph.key)
        if done is not None:
            trial.set_user_attr("duplicate_of", done.number)
            for k in ("scores", "constraint", "mlflow_run_id", "run_dir"):
                if k in done.user_attrs:
                    trial.set_user_attr(k, done.user_attrs[k])
            logger.info(
                "trial %d: graph %s already trained in trial %d; reusing its values",
                trial.number,
                graph.key,
                done.number,
            )
            return Repeat(self._values(done.values))
        number = self._original_number(trial)  # a retry reuses the dead trial's seed and folder
        holder = claim_graph(cfg.storage_url(), cfg.study, graph.key, number)
        if holder != number:
            trial.set_user_attr("taken_by", holder)
            logger.info("trial %d: graph %s is trained by trial %d; taking another", trial.number, graph.key, holder)
            return Taken(f"graph {graph.key} is trained by trial {holder}")
        self.repeats = 0
        run = dataclasses.replace(cfg.run, train=dataclasses.replace(cfg.run.train, seed=cfg.seed * 10_000 + number))
        run_dir = Path(cfg.runs_dir) / cfg.study / f"trial-{number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("threads", torch.get_num_threads())
        recorder = Recorder(
            run_dir,
            self.tracker,
            name=f"trial-{trial.number:04d}",
            parent_run_id=self.parent_run_id,
            params=graph_params(graph, self.possible_edges)
            | {f"trial.{k}": v for k, v in trial.params.items()}
            | {"trial": trial.number},
            tags={"study": cfg.study},
            objectives=cfg.objectives,
        )
        return Claimed(graph, run, run_dir, recorder)

    def record(self, trial: optuna.Trial, result) -> tuple[float, ...] | float | None:
        """A trained trial's result on the trial (attributes, constraint) and on its MLflow run (how it
        ended); returns the objective values to tell, None when it did not complete."""
        trial.set_user_attr("mlflow_run_id", result.run_id)
        if result.resumed_at:
            trial.set_user_attr("resumed_at", result.resumed_at)
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("scores", result.scores)
        state = {"diverged": "diverged", "stopped": "pruned"}.get(result.status, "completed")
        tracking.mark_state(self.tracker, result.run_id, state)
        if result.status == "diverged":
            trial.set_user_attr("reason", result.message)
        if result.status != "completed":
            return None
        if self.cfg.min_info is not None:
            trial.set_user_attr("constraint", [self.cfg.min_info - result.scores["info_min"]])
        return self._values(result.scores[o] for o in self.cfg.objectives)

    def _values(self, values) -> tuple[float, ...] | float:
        values = tuple(float(v) for v in values)
        return values[0] if len(values) == 1 else values

    def _original_number(self, trial: optuna.Trial) -> int:
        frozen = next(
            t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number == trial.number
        )
        first = RetryHeartbeatStaleTrialCallback.retry_history(frozen)
        return first[0] if first else trial.number

    def _completed_with(self, key: str) -> FrozenTrial | None:
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if t.user_attrs.get("graph_key") == key:
                return t
        return None

    def _pruning(self, trial: optuna.Trial) -> Pruning | None:
        """Every checkpoint interval, report the single objective and ask the study's pruner."""
        objective = self.cfg.objectives[0]
        if len(self.cfg.objectives) > 1 or self.cfg.pruner == "none" or not scores.SCORES[objective].base:
            return None

        def should_stop(step: int, value: float) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        return Pruning(objective, self.cfg.run.train.checkpoint_every or self.cfg.run.train.n_steps, should_stop)


@dataclass
class Prepared:
    """What every trial of this process shares; building it is where a bad command fails."""

    cfg: SearchConfig  # the command's config with the latent spec resolved
    study: optuna.Study
    dataset: Any
    space: SearchSpace
    tracker: Tracker
    parent_run_id: str | None


def prepare(cfg: SearchConfig, worker: int = 0) -> Prepared:
    """Dataset, space, study (created or loaded, seeds enqueued), tracker and the parent run.

    Every user mistake (dataset, objective, space, constraints, seed graph, a study created with
    other directions) raises here, as ``ValueError``/``GraphError``/``DatasetError``, before any
    training; errors after this point are bugs and keep their traceback."""
    dataset = load_dataset(cfg.run)
    independent = resolve_graph(dataclasses.replace(cfg.run, graph="independent"), dataset)
    spec = independent.spec
    # The spec is stored with a new study: its trials never depend on the dataset's default spec.
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, codes=spec.text()))
    scores.check_objectives(cfg.objectives, dataset, spec)
    check_anchors(cfg.run, spec, dataset)
    if cfg.space == "classes" and (bad := [o for o in cfg.objectives if o not in SCORE_EQUIVALENT]):
        raise ValueError(
            f"--space classes trains one DAG per Markov class, which only a score-equivalent objective "
            f"may rank; {', '.join(bad)} is not (use {', '.join(SCORE_EQUIVALENT)}, or --space brute-force)"
        )
    space = make_search_space(cfg, spec)
    if cfg.sampler == "grid" and not isinstance(space, CandidatesSpace):  # one categorical choice to enumerate
        space = CandidatesSpace(spec, space.constraints, graphs=space.all_graphs())
    study = open_study(cfg, worker)
    if not study.metric_names:  # named objectives in optuna-dashboard and study.trials_dataframe()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(cfg.objectives))
    enqueue_seeds(study, space, [independent] + [load_graph(g, spec) for g in cfg.seed_graphs])
    tracker = make_tracker(cfg.tracking, f"study-{cfg.study}", Path(cfg.runs_dir))
    return Prepared(cfg, study, dataset, space, tracker, _parent_run(study, tracker, cfg, space))


def optimize(cfg: SearchConfig, prepared: Prepared | None = None, threads: int | None = None) -> optuna.Study:
    """Run trials in this process until the study has trained ``n_trials`` distinct graphs (or every
    graph of the space); the study's parent run says whether that ended well (``study_status``).
    ``threads``: torch threads per trial; None shares the cores with the live workers on this
    machine, counted before each trial (:func:`thread_share`)."""
    p = prepared or prepare(cfg)
    with tracking.study_status(p.tracker, p.parent_run_id):
        return _optimize(cfg, p, threads)


def _optimize(cfg: SearchConfig, prepared: Prepared, threads: int | None) -> optuna.Study:
    p = prepared
    cfg, study, tracker = p.cfg, p.study, p.tracker
    objective = Objective(cfg, study, p.dataset, p.space, tracker, p.parent_run_id)
    graphs = _enumerate(p.space)
    target = min(cfg.n_trials, len(graphs)) if graphs else cfg.n_trials
    if target < cfg.n_trials:
        logger.info("the space holds %d graphs: --trials %d trains all of them", len(graphs), cfg.n_trials)
    rng = np.random.default_rng([cfg.seed, len(study.trials)])
    set_threads = _thread_setter(cfg.storage_url(), threads)
    while True:
        # Under the pop lock: no other worker is between checking the budget, taking a trial and naming its owner.
        objective.pop_lock.acquire()
        try:
            fail_stale_trials(study)  # an owner on another machine: its heartbeats stopped
            fail_dead_trials(study, unowned_are_dead=objective.pop_lock.held())  # an owner here: dead
            if trained_graphs(study) >= target:
                break
            if objective.repeats >= MAX_REPEATS and graphs:
                _fill_in(study, p.space, graphs, rng)
                objective.repeats = 0
            set_threads()
            objective.trial_number = None
            try:
                study.optimize(objective, n_trials=1, catch=())
            except BaseException:
                retry_failed(study, objective.trial_number)  # a rerun resumes it from its checkpoint
                raise
        finally:
            objective.pop_lock.release()
        _log_progress(study, cfg)
    if graphs and target == len(graphs):
        logger.info("all %d graphs of the space are trained: the search is exhaustive", len(graphs))
    mark_best(study, tracker)
    return study


def _enumerate(space: SearchSpace) -> list[Graph] | None:
    """Every graph of a small space (None for a large one, whose repeats are rare)."""
    try:
        return space.all_graphs(limit=ENUMERATE_LIMIT)
    except ValueError:
        return None


def _fill_in(study: optuna.Study, space: SearchSpace, graphs: list[Graph], rng: np.random.Generator) -> None:
    """Enqueue a random graph of the space that no trial has trained, after too many repeats."""
    seen = {t.user_attrs.get("graph_key") for t in study.get_trials(deepcopy=False)}
    untrained = [g for g in graphs if g.key not in seen]
    if untrained:
        graph = untrained[rng.integers(len(untrained))]
        logger.info("the sampler repeated %d trained graphs in a row; enqueueing %s", MAX_REPEATS, graph.key)
        study.enqueue_trial(space.params_for(graph), user_attrs={"fill_in": MAX_REPEATS})


def run_search(
    cfg: SearchConfig,
    workers: int = 1,
    gpus: list[str] | None = None,
    prepared: Prepared | None = None,
    threads: int | None = None,
) -> optuna.Study:
    """``optimize`` here, or in ``workers`` processes sharing the study (worker i on GPU i mod len);
    ``threads`` per worker, or None for :func:`thread_share`."""
    gpus = gpus or []
    n = max(workers, len(gpus), 1)
    prepared = prepared or prepare(cfg)  # the study, seeds and parent run exist before any worker starts
    if n == 1 and not gpus:
        register_worker(cfg.storage_url(), cfg.study)  # counted by workers started by hand (its seed stays the study's)
        return optimize(cfg, prepared, threads)
    cfg, study, tracker = prepared.cfg, prepared.study, prepared.tracker
    procs = []
    for i in range(n):
        cmd = [
            sys.executable,
            "-m",
            "structsearch",
            "worker",
            "--study",
            cfg.study,
            "--storage",
            cfg.storage_url(),
            "--trials",
            str(cfg.n_trials),
            "--runs-dir",
            cfg.runs_dir,
        ]
        cmd += ["--tracking", cfg.tracking] if cfg.tracking else []
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
            cmd += ["--device", "cuda"]
        elif threads or "OMP_NUM_THREADS" not in env:  # CPU workers share the cores instead of each taking all
            env["OMP_NUM_THREADS"] = str(threads or thread_share(n))
        procs.append(subprocess.Popen(cmd, env=env))
    with tracking.study_status(tracker, prepared.parent_run_id):
        codes = [p.wait() for p in procs]
        if any(codes):
            raise WorkersFailed(f"worker exit codes {codes}; each said why above. Rerun the same command to resume")
        mark_best(study, tracker)
    return study


class WorkersFailed(RuntimeError):
    """A worker process of ``--workers`` exited with an error (it printed its own message)."""


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_share(n_workers: int) -> int | None:
    """Torch threads for each of ``n_workers`` CPU workers sharing this machine: cores // n, at least
    1. None for a lone worker, which keeps torch's own default (all physical cores). One rule for
    ``--workers N`` and for workers started by hand, so two workers never each take every core
    (trials then ran 3-4 times slower)."""
    return max(1, cores() // n_workers) if n_workers > 1 else None


def _thread_setter(url: str, threads: int | None) -> Callable[[], None]:
    """A function to call before each trial: it sets torch's threads (``threads``, or this
    machine's cores shared among its live workers) and says so at the start and on a change."""
    if threads is not None:
        torch.set_num_threads(threads)
        logger.info("threads: %d per trial (--threads or OMP_NUM_THREADS)", threads)
        return lambda: None
    default, current = torch.get_num_threads(), None

    def set_threads() -> None:
        nonlocal current
        live = max(1, live_workers(url))  # this process is one of them
        count = thread_share(live) or default
        if count != current:
            torch.set_num_threads(count)
            logger.info(
                "threads: %d per trial (%d cores, %d live workers on this machine; --threads N to choose)",
                count,
                cores(),
                live,
            )
            current = count

    return set_threads


def _parent_run(study: optuna.Study, tracker: Tracker, cfg: SearchConfig, space: SearchSpace) -> str | None:
    """The study's MLflow parent run, created once and shared by every worker through the study."""
    run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        return run_id
    params = {
        "dataset": cfg.run.dataset,
        "space": space.describe(),
        "sampler": cfg.sampler,
        "pruner": cfg.pruner,
        "seed": cfg.seed,
        "objectives": ",".join(cfg.objectives),
        "n_trials": cfg.n_trials,
        "min_info": cfg.min_info,
        "storage": cfg.storage_url(),
    } | {f"train.{k}": v for k, v in asdict(cfg.run.train).items() if k != "seed"}
    run_id = tracker.start_run(f"study-{cfg.study}", params, tags={"study": cfg.study, "structsearch.role": "study"})
    if run_id:
        study.set_user_attr(PARENT_ATTR, run_id)
    return run_id


def mark_best(study: optuna.Study, tracker: Tracker) -> None:
    """Tag the study's best trial's run (and untag the previous best), name it on the parent run."""
    best = ranked(study)
    if not best:
        return
    run_id = best[0].user_attrs.get("mlflow_run_id")
    tracking.mark_best(
        tracker,
        run_id,
        previous=study.user_attrs.get("best_run_id"),
        parent=study.user_attrs.get(PARENT_ATTR),
        summary={"best_graph": best[0].user_attrs.get("graph_key", ""), "best_trial": str(best[0].number)},
    )
    if run_id:
        study.set_user_attr("best_run_id", run_id)


def _log_progress(study: optuna.Study, cfg: SearchConfig) -> None:
    best = ranked(study)
    text = f"{best[0].user_attrs.get('graph_key')} ({fmt_values(best[0].values)})" if best else "none yet"
    logger.info("graphs trained %d/%d; best so far: %s", trained_graphs(study), cfg.n_trials, text)
