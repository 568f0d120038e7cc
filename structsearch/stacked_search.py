"""K trials at a time in one process: Optuna's ask/tell feeding a :class:`gan.stacked.StackedTrainer`.

``structsearch optimize --stack K``. The search is :mod:`structsearch.search`'s, trial for trial:
the same budget (``--trials`` distinct graphs), seeds, repeats answered from stored values, claims
in the study's database, fill-ins after ``MAX_REPEATS`` repeats, per-trial seeds and run folders,
Recorder, pruner and constraint. Only the loop differs: instead of ``study.optimize`` running one
trial to its end, this process asks until it holds K claimed graphs, trains them as one stacked
model (one kernel stream, so a small net fills a GPU), scores and records each as its own run, and
tells each result. A stacked trial's folder, checkpoint and MLflow run are those of a plain trial.

The parts of :class:`structsearch.search.Objective` before and after ``run_trial`` (propose and
claim; record the result) are mirrored here by :func:`propose` and :func:`tell`, using its helpers;
tests/test_stacked_search.py checks that a stacked trial carries the attributes a plain one does.
A trial resumed from a checkpoint (a retry of a killed one) trains in a stack of the trials at its
own step, usually alone.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import optuna
from optuna.storages import fail_stale_trials
from optuna.storages._heartbeat import get_heartbeat_thread  # what study.optimize wraps each trial in
from optuna.trial import TrialState
from tqdm.auto import tqdm

from gan.stacked import StackedTrainer, check_config
from gan.train import TrainConfig, Trainer, TrainResult
from structsearch import tracking
from structsearch.config import RunConfig
from structsearch.graph import Graph
from structsearch.scores import Evaluator
from structsearch.search import (
    MAX_REPEATS,
    Objective,
    Prepared,
    Repeat,
    Taken,
    _enumerate,
    _fill_in,
    _log_progress,
    mark_best,
    prepare,
)
from structsearch.study import SearchConfig, fail_dead_trials, record_owner, retry_failed, trained_graphs
from structsearch.trial import Outcome, Pruning, Recorder, TrialResult, anchor_record, make_trainer

logger = logging.getLogger(__name__)
SCALE = 0.2
"""The extra scores' sample fraction: ``run_trial``'s default, which the plain search uses."""


def check(train: TrainConfig, stack: int, workers: int = 1, gpus: Sequence[str] = ()) -> None:
    """Refuse a ``--stack`` the command cannot honour, before anything is created (ValueError, one line)."""
    if stack <= 1:
        return
    if workers > 1 or gpus:
        where = f"--workers {workers}" if workers > 1 else f"--gpus {','.join(gpus)}"
        raise ValueError(
            f"--stack {stack} trains {stack} trials in this one process and cannot be combined with {where}; "
            "give --device cuda for a GPU, or drop --stack"
        )
    check_config(train)


@dataclass
class Member:
    """One asked trial whose graph this process claimed, and what training it needs."""

    trial: optuna.Trial
    graph: Graph
    run: RunConfig
    recorder: Recorder
    pruning: Pruning | None
    trainer: Trainer | None = None
    evaluator: Evaluator | None = None
    result: TrialResult | None = field(default=None, repr=False)


def optimize_stacked(cfg: SearchConfig, stack: int, prepared: Prepared | None = None) -> optuna.Study:
    """:func:`structsearch.search.optimize`, training ``stack`` trials at a time in this process."""
    p = prepared or prepare(cfg)
    cfg, study = p.cfg, p.study
    objective = Objective(cfg, study, p.dataset, p.space, p.tracker, p.parent_run_id)
    graphs = _enumerate(p.space)
    target = min(cfg.n_trials, len(graphs)) if graphs else cfg.n_trials
    if target < cfg.n_trials:
        logger.info("the space holds %d graphs: --trials %d trains all of them", len(graphs), cfg.n_trials)
    logger.info("training up to %d trials at a time in this process (--stack %d)", stack, stack)
    rng = np.random.default_rng([cfg.seed, len(study.trials)])
    with tracking.study_status(p.tracker, p.parent_run_id):
        while True:
            fail_stale_trials(study)  # a dead worker's trial is failed here and re-enqueued (same graph)
            if trained_graphs(study) >= target:
                break
            batch = ask_batch(objective, stack, target, graphs, rng)
            if batch:
                train_batch(objective, batch)
            _log_progress(study, cfg)
    if graphs and target == len(graphs):
        logger.info("all %d graphs of the space are trained: the search is exhaustive", len(graphs))
    mark_best(study, p.tracker)
    return study


def ask_batch(
    objective: Objective, stack: int, target: int, graphs: list[Graph] | None, rng: np.random.Generator
) -> list[Member]:
    """Ask trials until ``stack`` of them hold a claimed graph, or the budget is met (repeats are
    answered and told on the way)."""
    study, batch = objective.study, []
    while len(batch) < stack:
        if objective.repeats >= MAX_REPEATS and graphs:
            _fill_in(study, objective.space, graphs, rng)
            objective.repeats = 0
        objective.pop_lock.acquire()  # no two workers take one enqueued trial, or one budget slot
        try:
            fail_dead_trials(study, unowned_are_dead=objective.pop_lock.held())  # as search.optimize does
            if trained_graphs(study) >= target:
                break
            with warnings.catch_warnings():  # Optuna warns that ask has no heartbeat: train_batch sends them
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
                trial = study.ask()
            record_owner(trial)  # before the pop lock goes (study.fail_dead_trials)
        finally:
            objective.pop_lock.release()
        member = propose(objective, trial)
        if member is not None:
            batch.append(member)
    return batch


def propose(objective: Objective, trial: optuna.Trial) -> Member | None:
    """The trial's graph claimed for training, or None when it repeats a trained graph (told its
    stored values) or one another trial holds (told pruned): :meth:`Objective.claim`."""
    claimed = objective.claim(trial)
    if isinstance(claimed, Repeat):
        objective.study.tell(trial, claimed.values)
        return None
    if isinstance(claimed, Taken):
        objective.study.tell(trial, state=TrialState.PRUNED)
        return None
    return Member(trial, claimed.graph, claimed.run, claimed.recorder, objective._pruning(trial))


def train_batch(objective: Objective, batch: list[Member]) -> None:
    """Train, score, record and tell every member; trials at one step train as one stack. The
    trials send heartbeats meanwhile; an error fails them all (and is raised, as ``study.optimize`` does)."""
    study = objective.study
    with contextlib.ExitStack() as beats:
        for m in batch:
            beats.enter_context(get_heartbeat_thread(m.trial._trial_id, study._storage))
        try:
            for m in batch:
                start(objective, m)
            steps = sorted({m.trainer.step for m in batch})
            for step in steps:
                train_stack(objective, [m for m in batch if m.trainer.step == step])
        except BaseException:
            for m in batch:
                if m.result is None:
                    study.tell(m.trial, state=TrialState.FAIL)
                    retry_failed(study, m.trial.number)  # a rerun resumes it from its checkpoint
                else:  # trained and recorded before the error
                    tell(objective, m)
            raise
    for m in batch:
        tell(objective, m)


def start(objective: Objective, m: Member) -> None:
    """The member's trainer (restored from its folder's checkpoint on a retry), evaluator and started Recorder."""
    dataset = objective.dataset
    m.trainer = make_trainer(m.run, m.graph, dataset)
    resume = m.recorder.checkpoint.exists()
    if resume:  # before start: a checkpoint that does not load leaves the folder as it was
        m.recorder.restore(m.trainer)
    m.recorder.start(m.run, m.graph, resume, anchor_record(m.run, m.graph.spec, dataset))
    m.evaluator = Evaluator(
        m.graph, dataset, m.run.n_eval, m.run.train.seed, SCALE, m.trainer.sample_latents, m.trainer.sample_pair_latents
    )


def train_stack(objective: Objective, members: list[Member]) -> None:
    """Train the members (all at one step) as one :class:`StackedTrainer`, then score and record each."""
    started = time.time()
    stacked = StackedTrainer([m.trainer for m in members])
    n_steps = stacked.cfg.n_steps
    names = ", ".join(m.recorder.name for m in members)
    with tqdm(total=n_steps, initial=stacked.step, desc=names, unit="step", dynamic_ncols=True) as bar:
        callbacks = [_callback(m, n_steps, bar) for m in members]
        results = stacked.run(callbacks, [m.recorder.save_checkpoint for m in members])
    seconds = time.time() - started  # the stack's wall time, shared by its members
    for m, result in zip(members, results):
        m.result = m.recorder.finish(Outcome(result, _scores(objective, m, result), m.trainer), seconds)


def _callback(m: Member, n_steps: int, bar: tqdm):
    """What ``train_and_score`` does at a log step, for one member: log, and ask its pruner."""

    def callback(step: int, losses: dict[str, float]) -> bool:
        m.recorder.log(step, losses)
        bar.update(step - bar.n)
        pruning = m.pruning
        if pruning and step % pruning.every == 0 and step < n_steps:
            value = m.evaluator(m.trainer.G, m.trainer.D, only=(pruning.objective,))[pruning.objective]
            return pruning.should_stop(step, value)
        return False

    return callback


def _scores(objective: Objective, m: Member, result: TrainResult) -> dict[str, float]:
    """The member's scores after training, as ``train_and_score`` computes them (none when it diverged)."""
    if result.status == "diverged":
        return {}
    return m.evaluator(m.trainer.G, m.trainer.D, extra=objective.cfg.objectives)


def tell(objective: Objective, m: Member) -> None:
    """The member's result recorded on its trial and told: ``Objective.__call__`` after ``run_trial``."""
    values = objective.record(m.trial, m.result)
    if values is None:
        objective.study.tell(m.trial, state=TrialState.PRUNED)
    else:
        objective.study.tell(m.trial, values)
