"""The Optuna study behind a search: its config, storage, sampler, pruner, seeds and ranking.

A study lives in an Optuna storage (SQLite under ``runs/<study>/`` by default; a PostgreSQL URL
lets workers on many machines join). Its :class:`SearchConfig` is stored in the study itself, so
``structsearch worker --study NAME --storage URL`` needs nothing else. Trials send heartbeats; a
trial whose process died is failed after ``grace_period`` seconds by the next worker and
re-enqueued with the same graph (``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from search_spaces import Constraints, SearchSpace, make_space
from structsearch.config import RunConfig, describe_difference, differences, flag_of
from structsearch.graph import Graph
from structsearch.inputs import check_name
from structsearch.scores import direction

logger = logging.getLogger(__name__)
# Heartbeats and trial retries are "experimental" in Optuna since v2.9; they are what resume relies on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

CONFIG_ATTR = "structsearch_config"


@dataclass(frozen=True)
class SearchConfig:
    """A whole search: what to train (``run``), which graphs, which objectives, which sampler."""

    study: str
    n_trials: int = 50
    storage: str | None = None  # default sqlite:///<runs_dir>/<study>/study.db
    runs_dir: str = "runs"
    tracking: str | None = None  # MLflow URI, 'none', or None for the default store
    space: str = "ordered"
    cross_edges: bool = False
    max_parents: int | None = None
    forbidden: tuple[str, ...] = ()
    order: tuple[str, ...] = ()  # fixed-order space
    candidates: str | None = None  # candidates space: file of graphs
    # struct_bic: none did better in the recovery benchmark (docs/results.md, "Defaults, from the evidence").
    objectives: tuple[str, ...] = ("struct_bic",)
    min_info: float | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    seed_graphs: tuple[str, ...] = ()
    heartbeat_interval: int = 10
    grace_period: int = 60
    run: RunConfig = field(default_factory=RunConfig)

    def storage_url(self) -> str:
        if self.storage:
            return self.storage
        folder = Path(self.runs_dir) / check_name(self.study)  # the name becomes a folder
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(folder / 'study.db').resolve()}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SearchConfig:
        data = json.loads(text)
        run = RunConfig.from_dict(data.pop("run"))
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**(data | tuples), run=run)


def make_search_space(cfg: SearchConfig, spec) -> SearchSpace:
    forbidden = tuple(tuple(e.split("->")) for e in cfg.forbidden)
    constraints = Constraints(forbidden=forbidden, max_parents=cfg.max_parents, cross_edges=cfg.cross_edges)
    options: dict[str, Any] = {}
    if cfg.space == "fixed-order":
        options["order"] = cfg.order
    if cfg.space == "candidates":
        options["path"] = cfg.candidates
    return make_space(cfg.space, spec, constraints, **options)


def make_sampler(cfg: SearchConfig) -> optuna.samplers.BaseSampler:
    constraints = _constraint_values if cfg.min_info is not None else None
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=cfg.seed, constraints_func=constraints, multivariate=True)
    if cfg.sampler == "gp":
        return optuna.samplers.GPSampler(seed=cfg.seed, constraints_func=constraints)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=cfg.seed, constraints_func=constraints)
    raise ValueError(f"unknown sampler {cfg.sampler!r}; expected tpe, gp, random or nsga2")


def make_pruner(cfg: SearchConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "none" or len(cfg.objectives) > 1:  # Optuna prunes single-objective studies only
        return optuna.pruners.NopPruner()
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, cfg.run.train.n_steps // 3))
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(1, cfg.run.train.n_steps // 10), max_resource=max(1, cfg.run.train.n_steps)
        )
    raise ValueError(f"unknown pruner {cfg.pruner!r}; expected none, median or hyperband")


def _constraint_values(trial: FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get("constraint", [0.0]))


def open_study(cfg: SearchConfig) -> optuna.Study:
    """Create or load the study; a new one gets the config stored and its seeds enqueued."""
    storage = RDBStorage(
        cfg.storage_url(),
        heartbeat_interval=cfg.heartbeat_interval,
        grace_period=cfg.grace_period,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
    )
    check_rerun(storage, cfg)
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.study,
        directions=[direction(o) for o in cfg.objectives],
        sampler=make_sampler(cfg),
        pruner=make_pruner(cfg),
        load_if_exists=True,
    )
    if CONFIG_ATTR not in study.user_attrs:
        study.set_user_attr(CONFIG_ATTR, cfg.to_json())
    return study


# What a rerun of a study (or a worker joining it) may change: where its files, store and data
# are, how many trials it should reach, this process's device, logging and heartbeats. Everything
# else decides what a trial computes or which graphs are proposed, and a study mixing two of them
# would rank trials that are not comparable.
RERUN_MAY_DIFFER = frozenset(
    {
        "n_trials",
        "storage",
        "runs_dir",
        "tracking",
        "heartbeat_interval",
        "grace_period",
        "run.device",
        "run.data_dir",
        "run.train.log_every",
    }
)


def check_rerun(storage: optuna.storages.BaseStorage, cfg: SearchConfig) -> None:
    """Refuse to continue an existing study under another config than the one stored in it
    (fields in ``RERUN_MAY_DIFFER`` aside): one ``ValueError`` line naming the first difference."""
    try:
        study_id = storage.get_study_id_from_name(cfg.study)
    except KeyError:
        return  # a new study
    stored = storage.get_study_user_attrs(study_id).get(CONFIG_ATTR)
    if stored is None:
        return
    try:
        old = SearchConfig.from_json(stored)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(
            f"study {cfg.study!r} holds a config this version cannot read ({err}); start a new study with --study NEW_NAME"
        ) from None
    changed = differences(old, cfg, RERUN_MAY_DIFFER)
    if changed:
        allowed = ", ".join(sorted({flag_of(k) for k in RERUN_MAY_DIFFER} - {"--heartbeat-interval", "--grace-period"}))
        raise ValueError(
            f"study {cfg.study!r}: {describe_difference(changed, 'when it was made', 'in this command')}; a rerun may "
            f"change only {allowed}: rerun with the study's own options, or start a new study with --study NEW_NAME"
        )


def config_of(study_name: str, storage: str) -> SearchConfig:
    """The search config stored in an existing study (what ``worker`` joins with)."""
    try:
        summary = optuna.study.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise ValueError(f"no study {study_name!r} in {storage}; start it with `structsearch optimize`") from None
    if CONFIG_ATTR not in summary.user_attrs:
        raise ValueError(f"study {study_name!r} in {storage} was not made by structsearch (no stored config)")
    cfg = SearchConfig.from_json(summary.user_attrs[CONFIG_ATTR])
    return dataclasses.replace(cfg, storage=storage)


def enqueue_seeds(study: optuna.Study, space: SearchSpace, graphs: list[Graph]) -> None:
    if study.trials:  # seeds are for a new study only; a resumed one already has them
        return
    for graph in graphs:
        params = space.params_for(graph)
        if params is None:
            logger.warning("seed graph %s cannot be expressed in the %s space; skipped", graph.key, space.name)
            continue
        study.enqueue_trial(params, user_attrs={"seed_graph": graph.key}, skip_if_exists=True)


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def load_existing(study_name: str, storage: str) -> optuna.Study:
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise ValueError(f"no study {study_name!r} in {storage}") from None


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """Completed, non-duplicate trials, feasible first, best first (Pareto rank for several objectives)."""
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "duplicate_of" not in t.user_attrs
    ]
    signs = [1 if d == optuna.study.StudyDirection.MAXIMIZE else -1 for d in study.directions]

    def key(t: FrozenTrial):
        feasible = all(v <= 0 for v in t.user_attrs.get("constraint", [0.0]))
        dominated_by = sum(
            all(s * a >= s * b for s, a, b in zip(signs, o.values, t.values)) and o.values != t.values for o in trials
        )
        return (not feasible, dominated_by, tuple(-s * v for s, v in zip(signs, t.values)))

    return sorted(trials, key=key)


def fmt_values(values) -> str:
    return ", ".join(
        "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}" for v in values or []
    )
