"""The Optuna study behind a search: its config, storage, sampler, pruner, seeds and ranking.

A study lives in an Optuna storage (SQLite under ``runs/<study>/`` by default; a PostgreSQL URL
lets workers on many machines join). Its :class:`SearchConfig` is stored in the study itself, so
``structsearch worker --study NAME --storage URL`` needs nothing else.

A trial whose process died is failed and re-enqueued with the same graph by Optuna's
``RetryHeartbeatStaleTrialCallback``, found in one of two ways. Each trial records its owner
(:class:`Owner`: host, pid, the process's start time): a worker fails at once every running trial
whose owner on this machine is dead (:func:`fail_dead_trials`). An owner on another machine cannot
be checked, so its trial is failed once its heartbeats stop for ``grace_period`` seconds.
"""

from __future__ import annotations

import copy
import dataclasses
import fcntl
import functools
import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy as sa
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

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"

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


SAMPLERS = ("tpe", "gp", "random", "nsga2", "grid")


def make_sampler(cfg: SearchConfig, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler, seeded from the study seed and the worker index (0: the seed itself), so
    that workers sharing a study do not propose the same graphs in the same order."""
    seed = cfg.seed if worker == 0 else int(np.random.SeedSequence([cfg.seed, worker]).generate_state(1)[0])
    constraints = _constraint_values if cfg.min_info is not None else None
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constraints_func=constraints, multivariate=True)
    if cfg.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, constraints_func=constraints)
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints)
    if cfg.sampler == "grid":  # every graph of the space once, in a seeded order (the space is enumerated)
        return optuna.samplers.BruteForceSampler(seed=seed)
    raise ValueError(f"unknown sampler {cfg.sampler!r}; expected {', '.join(SAMPLERS)}")


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


def open_study(cfg: SearchConfig, worker: int = 0) -> optuna.Study:
    """Create or load the study; a new one gets the config stored (seeds: :func:`enqueue_seeds`)."""
    storage = _rdb_storage(cfg)
    check_rerun(storage, cfg)
    study = optuna.create_study(
        storage=storage,
        study_name=cfg.study,
        directions=[direction(o) for o in cfg.objectives],
        sampler=make_sampler(cfg, worker),
        pruner=make_pruner(cfg),
        load_if_exists=True,
    )
    if CONFIG_ATTR not in study.user_attrs:
        study.set_user_attr(CONFIG_ATTR, cfg.to_json())
    _engine(cfg.storage_url())  # the study's own tables exist before any worker of this study starts
    return study


# What a CREATE TABLE that lost a race with another process raises: SQLite's "already exists"
# (OperationalError), PostgreSQL's DuplicateTable (ProgrammingError) or, when both create a table at
# the same moment, a unique violation in PostgreSQL's own catalog pg_type (IntegrityError).
LOST_CREATE_RACE = (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError)


def _rdb_storage(cfg: SearchConfig, attempts: int = 3) -> RDBStorage:
    """The study's Optuna storage. Two commands starting a study in a fresh PostgreSQL database at
    once race to create Optuna's tables (``LOST_CREATE_RACE``); by the time the loser's CREATE
    TABLE fails, the winner's tables exist, so it tries again."""
    for attempt in range(attempts):
        try:
            return RDBStorage(
                cfg.storage_url(),
                heartbeat_interval=cfg.heartbeat_interval,
                grace_period=cfg.grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
        except LOST_CREATE_RACE:
            if attempt == attempts - 1:
                raise
            logger.debug("another process created the study's tables at the same moment; trying again")
    raise AssertionError("unreachable")


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


REPEAT_ATTRS = ("duplicate_of", "taken_by")
"""User attrs of a trial that trained nothing: its graph was trained (or is being trained) by another."""


def trained_graphs(study: optuna.Study) -> int:
    """Distinct graphs trained or in training: what ``--trials`` counts.

    Finished and running trials count once per graph key; a repeat of a trained graph
    (``duplicate_of``, ``taken_by``) counts for nothing, and a running trial that has not yet
    proposed its graph counts as one.
    """
    keys, pending = set(), 0
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    for t in study.get_trials(deepcopy=False, states=states):
        if any(a in t.user_attrs for a in REPEAT_ATTRS):
            continue
        key = t.user_attrs.get("graph_key")
        if key is None:
            pending += t.state == TrialState.RUNNING
        else:
            keys.add(key)
    return len(keys) + pending


# ---- the study's own tables, in the study's database -------------------------------------------
# Optuna's storage has no unique index over user attrs, so "this graph is being trained" needs a
# table of its own: inserting a claim is atomic in SQLite and PostgreSQL alike.

_META = sa.MetaData()
CLAIMS = sa.Table(
    "structsearch_claims",
    _META,
    sa.Column("study", sa.String(512), primary_key=True),
    sa.Column("graph_hash", sa.String(40), primary_key=True),  # sha1 of the canonical key
    sa.Column("graph_key", sa.Text, nullable=False),
    sa.Column("trial", sa.Integer, nullable=False),
)
WORKERS = sa.Table(
    "structsearch_workers",
    _META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study", sa.String(512), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started", sa.Float, nullable=False),
    sa.Column("owner", sa.Text, nullable=True),  # Owner.to_json(): whether the worker still lives
)


@functools.lru_cache(maxsize=8)
def _engine(url: str) -> sa.Engine:
    # SQLite: wait for a busy database (workers write at once) instead of failing after 5 s
    engine = sa.create_engine(url, connect_args={"timeout": 60} if url.startswith("sqlite") else {})
    try:
        _META.create_all(engine, checkfirst=True)
    except LOST_CREATE_RACE:  # another worker created them in between
        missing = set(_META.tables) - set(sa.inspect(engine).get_table_names())
        if missing:
            raise
    _add_owner_column(engine)
    return engine


def _add_owner_column(engine: sa.Engine) -> None:
    """Give a workers table made before owners were recorded its ``owner`` column."""
    if "owner" in {c["name"] for c in sa.inspect(engine).get_columns(WORKERS.name)}:
        return
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {WORKERS.name} ADD COLUMN owner TEXT"))
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):  # another worker added it in between
        if "owner" not in {c["name"] for c in sa.inspect(engine).get_columns(WORKERS.name)}:
            raise


def claim_graph(url: str, study: str, key: str, trial: int) -> int:
    """Claim graph ``key`` for ``trial``: the number of the trial that holds it (``trial`` itself when
    this claim is the first, or when ``trial`` already held it)."""
    digest = hashlib.sha1(key.encode()).hexdigest()
    engine = _engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(CLAIMS).values(study=study, graph_hash=digest, graph_key=key, trial=trial))
        return trial
    except sa.exc.IntegrityError:
        with engine.connect() as conn:
            query = sa.select(CLAIMS.c.trial).where(CLAIMS.c.study == study, CLAIMS.c.graph_hash == digest)
            return int(conn.execute(query).scalar_one())


class PopLock:
    """Serializes, across worker processes, the moment a worker checks the budget and takes the
    next trial.

    Two workers that check "3 of 4 graphs trained" at once would both start a trial and train 5.
    Under the lock, a trial is RUNNING (and counted by :func:`trained_graphs`) before the next
    worker checks. SQLite needs it for one more reason: Optuna takes an enqueued (WAITING) trial
    with a read-then-write that PostgreSQL locks (``SELECT ... FOR UPDATE``) and SQLite does not,
    so two workers could both take one enqueued trial. A file lock beside a SQLite database; a
    session-level advisory lock on PostgreSQL (freed by the server if the process dies); a no-op
    for other databases. ``acquire`` before taking a trial; the objective calls ``release`` as its
    first step, once its trial is its own and its owner recorded.
    """

    # pg_advisory_lock's key: one bigint for structsearch's pop lock in any database
    PG_KEY = int(hashlib.sha1(b"structsearch pop lock").hexdigest()[:15], 16)

    def __init__(self, url: str) -> None:
        self.path = Path(url.removeprefix("sqlite:///") + ".pop.lock") if url.startswith("sqlite:///") else None
        self.url = url if url.startswith("postgresql") else None
        self.handle = None  # the open lock file, or the connection that holds the advisory lock
        self._pg_engine = None

    def acquire(self) -> None:
        if self.handle is not None:
            return
        if self.path is not None:
            self.handle = open(self.path, "w")  # noqa: SIM115 (held across calls)
            fcntl.flock(self.handle, fcntl.LOCK_EX)
        elif self.url is not None:
            if self._pg_engine is None:  # no pool: a closed connection is gone, and its lock with it
                self._pg_engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool)
            conn = self._pg_engine.connect()
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": self.PG_KEY})
            self.handle = conn

    def release(self) -> None:
        if self.handle is None:
            return
        if self.path is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
        else:
            self.handle.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self.PG_KEY})
        self.handle.close()
        self.handle = None

    def held(self) -> bool:
        """Whether this process holds the lock (never for a database that needs none)."""
        return self.handle is not None


def register_worker(url: str, study: str) -> int:
    """A new worker index (1, 2, ...) recorded in the study's database, with this process as its owner."""
    me = Owner.this_process()
    with _engine(url).begin() as conn:
        row = conn.execute(
            sa.insert(WORKERS).values(study=study, host=me.host, pid=me.pid, started=time.time(), owner=me.to_json())
        )
        return int(row.inserted_primary_key[0])


def live_workers(url: str) -> int:
    """Worker processes recorded in this database (any study: they share the cores) that are alive
    on this machine."""
    query = sa.select(WORKERS.c.owner).where(WORKERS.c.host == socket.gethostname(), WORKERS.c.owner.is_not(None))
    with _engine(url).connect() as conn:
        owners = [Owner.from_dict(json.loads(text)) for text in conn.execute(query).scalars()]
    return len({(o.pid, o.start) for o in owners if o.alive()})  # a process that registered twice counts once


# ---- who runs a trial, and failing the trials of dead processes ---------------------------------

OWNER_ATTR = "owner"
"""User attr of a trial: the :class:`Owner` record of the process running it, with its trial number."""


@dataclass(frozen=True)
class Owner:
    """A process, named so that a pid reused by a later process is not mistaken for it.

    ``start`` is the process's start time in clock ticks since boot (``/proc/<pid>/stat`` field
    22); ``space`` the boot and pid namespace in which ``pid`` and ``start`` mean something (two
    containers may share a hostname but not a pid namespace). Both are None where ``/proc`` is
    missing, and then no owner is ever judged dead: only heartbeats tell.
    """

    host: str
    pid: int
    start: int | None
    space: str | None

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname(), os.getpid(), _process_start(os.getpid()), _pid_space())

    def alive(self) -> bool | None:
        """True or False when this machine can tell (same host, boot and pid namespace), else None."""
        if self.start is None or self.space is None or self.space != _pid_space():
            return None
        if self.host != socket.gethostname():
            return None
        return _process_start(self.pid) == self.start

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Owner:
        return cls(str(data["host"]), int(data["pid"]), data.get("start"), data.get("space"))


def _process_start(pid: int) -> int | None:
    """A live process's start time in clock ticks since boot; None for no process or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold ')'
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])  # fields[0] is field 3 (state), fields[19] field 22


@functools.lru_cache(maxsize=1)
def _pid_space() -> str | None:
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def record_owner(trial: optuna.Trial) -> None:
    """Name this process as ``trial``'s owner (a retry inherits its dead trial's record, so the
    record carries the trial number it was written for)."""
    trial.set_user_attr(OWNER_ATTR, asdict(Owner.this_process()) | {"trial": trial.number})


def owner_of(trial: FrozenTrial) -> Owner | None:
    """The owner recorded for this very trial, None when it has recorded none yet."""
    record = trial.user_attrs.get(OWNER_ATTR)
    if not isinstance(record, dict) or record.get("trial") != trial.number:
        return None
    return Owner.from_dict(record)


def fail_dead_trials(study: optuna.Study, unowned_are_dead: bool = False) -> list[int]:
    """Fail every running trial whose owner is dead on this machine and re-enqueue it with the
    same graph, as Optuna does with a trial whose heartbeat is stale; the numbers failed.

    ``unowned_are_dead``: a running trial that has recorded no owner is dead too. True only while
    holding the :class:`PopLock`: a live process records its trial's owner before
    releasing that lock, so a trial without one lost its process between ask and record.
    """
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = owner_of(t)
        if (owner is None and unowned_are_dead) or (owner is not None and owner.alive() is False):
            dead.append(t)
    for t in dead:
        owner = owner_of(t)
        logger.info("trial %d: its process (%s) is dead; retrying it", t.number, owner or "unrecorded")
        _fail_and_retry(study, t._trial_id)
    return [t.number for t in dead]


def retry_failed(study: optuna.Study, number: int | None) -> None:
    """Re-enqueue trial ``number`` when it ended in an error (Ctrl-C, a full disk): its process
    lives on, so neither heartbeats nor owners would; a rerun then resumes its checkpoint. Best
    effort: a database that cannot be written leaves the trial running, for the owner check."""
    if number is None:
        return
    try:
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        if trial.state in (TrialState.RUNNING, TrialState.FAIL):
            _fail_and_retry(study, trial._trial_id, failed=trial.state == TrialState.FAIL)
    except Exception:  # noqa: BLE001 (the error that ended the trial is the one to report)
        logger.warning(
            "trial %d could not be re-enqueued now; a rerun retries it",
            number,
            exc_info=logger.isEnabledFor(logging.DEBUG),
        )


def _fail_and_retry(study: optuna.Study, trial_id: int, failed: bool = False) -> None:
    """What ``optuna.storages.fail_stale_trials`` does with one stale trial: fail it, then hand it to
    the storage's stale-trial callback (our ``RetryHeartbeatStaleTrialCallback``), which enqueues
    a copy whose ``retry_history`` names the original (its run folder, seed and graph claim)."""
    storage = study._storage
    if not failed:
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                return
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed it first
            return
    callback = getattr(storage, "get_heartbeat_stale_trial_callback", lambda: None)()
    if callback is not None:
        callback(study, copy.deepcopy(storage.get_trial(trial_id)))


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
