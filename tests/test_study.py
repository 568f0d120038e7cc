"""The study's own tables (claims, workers), per-worker samplers and trial owners, on real SQLite storage."""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from structsearch import study as study_mod
from structsearch.study import Owner, SearchConfig, claim_graph, register_worker

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


def _url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


def test_a_graph_is_claimed_once(tmp_path) -> None:
    url = _url(tmp_path)
    assert claim_graph(url, "s", "c1->q1", 3) == 3
    assert claim_graph(url, "s", "c1->q1", 5) == 3  # taken: the holder is named
    assert claim_graph(url, "s", "c1->q1", 3) == 3  # a retry of the holder keeps it
    assert claim_graph(url, "other", "c1->q1", 5) == 5  # claims are per study
    assert claim_graph(url, "s", "c1->q1, q1->q2", 5) == 5


def _claim_all(url: str, worker: int, keys: list[str], out) -> None:
    out.put([(key, claim_graph(url, "s", key, worker)) for key in keys])


@pytest.mark.slow
def test_racing_workers_each_win_a_graph_once(tmp_path) -> None:
    """Four processes claim the same 30 graphs at once: every graph has exactly one holder."""
    url, keys = _url(tmp_path), [f"c1->q1, q1->q{i}" for i in range(2, 32)]
    claim_graph(url, "s", "warm-up", -1)  # the tables exist before the race
    out = mp.get_context("spawn").Queue()
    procs = [mp.get_context("spawn").Process(target=_claim_all, args=(url, w, keys, out)) for w in range(4)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join()
    for i, key in enumerate(keys):
        holders = {r[i][1] for r in results}
        assert len(holders) == 1, (key, holders)  # every process was told the same holder
        assert sum(r[i][1] == w for w, r in enumerate(results)) <= 1  # ...and at most one won it


def test_workers_get_distinct_indices_and_samplers(tmp_path) -> None:
    url = _url(tmp_path)
    indices = [register_worker(url, "s") for _ in range(3)]
    assert len(set(indices)) == 3 and min(indices) >= 1
    cfg = SearchConfig(study="s", sampler="random", seed=7)
    draws = []
    for worker in (0, *indices):
        sampler = study_mod.make_sampler(cfg, worker)
        study = optuna.create_study(sampler=sampler)
        draws.append(tuple(study.ask().suggest_float("x", 0, 1) for _ in range(1)))
    assert len(set(draws)) == len(draws)  # each worker its own stream
    again = optuna.create_study(sampler=study_mod.make_sampler(cfg, 0)).ask().suggest_float("x", 0, 1)
    assert (again,) == draws[0]  # worker 0 is the study seed itself: a lone worker is reproducible


# ---- owners: a trial whose process died on this machine is retried at once ---------------------


def _running_trials(tmp_path, n: int) -> tuple[optuna.Study, list[optuna.Trial]]:
    cfg = SearchConfig(study="s", storage=_url(tmp_path), grace_period=3600)  # heartbeats never tell here
    study = study_mod.open_study(cfg)
    return study, [study.ask() for _ in range(n)]


def _dead_owner() -> Owner:
    """The owner record of a real process, taken while it lived; it is dead on return."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        owner = Owner(socket.gethostname(), proc.pid, study_mod._process_start(proc.pid), study_mod._pid_space())
    finally:
        proc.kill()
        proc.wait()
    return owner


def _set_owner(trial: optuna.Trial, owner: Owner) -> None:
    trial.set_user_attr(study_mod.OWNER_ATTR, dataclasses.asdict(owner) | {"trial": trial.number})


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="no /proc: owners are judged by heartbeats only")
def test_trials_of_dead_owners_here_are_failed_and_retried_and_no_others(tmp_path) -> None:
    study, trials = _running_trials(tmp_path, 6)
    me = Owner.this_process()
    assert me.alive() is True and me.start is not None
    _set_owner(trials[0], _dead_owner())
    study_mod.record_owner(trials[1])  # this process: alive
    _set_owner(trials[2], dataclasses.replace(me, host="another-machine"))  # cannot be checked from here
    # trials[3] records no owner
    _set_owner(trials[4], dataclasses.replace(me, start=me.start - 1))  # a later process that reused a dead pid
    _set_owner(trials[5], dataclasses.replace(_dead_owner(), space="another-boot/pid:[1]"))  # not this pid space

    assert study_mod.fail_dead_trials(study) == [0, 4]
    assert study_mod.fail_dead_trials(study, unowned_are_dead=True) == [3]  # only under the pop lock
    assert study_mod.fail_dead_trials(study, unowned_are_dead=True) == []  # each is failed once
    states = [t.state.name for t in study.get_trials()[:6]]
    assert states == ["FAIL", "RUNNING", "RUNNING", "FAIL", "FAIL", "RUNNING"]
    retries = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert sorted(RetryHeartbeatStaleTrialCallback.retry_history(t)[0] for t in retries) == [0, 3, 4]
    for retry in retries:  # the retry inherits the dead trial's record, which names the dead trial
        assert study_mod.owner_of(retry) is None


def test_a_retry_records_its_own_owner(tmp_path) -> None:
    study, (trial,) = _running_trials(tmp_path, 1)
    _set_owner(trial, _dead_owner())
    assert study_mod.fail_dead_trials(study) == [0]
    retry = study.ask()  # takes the enqueued retry
    assert RetryHeartbeatStaleTrialCallback.retry_history(study._storage.get_trial(retry._trial_id)) == [0]
    study_mod.record_owner(retry)
    assert study_mod.owner_of(study._storage.get_trial(retry._trial_id)) == Owner.this_process()
    assert study_mod.fail_dead_trials(study, unowned_are_dead=True) == []


def test_a_trial_ended_by_an_error_is_retried(tmp_path) -> None:
    study, (trial,) = _running_trials(tmp_path, 1)
    study.tell(trial, state=TrialState.FAIL)  # what Optuna does on Ctrl-C or an exception
    study_mod.retry_failed(study, trial.number)
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert RetryHeartbeatStaleTrialCallback.retry_history(retry) == [0]


def test_live_workers_counts_live_processes_on_this_machine(tmp_path) -> None:
    url, env = _url(tmp_path), os.environ | {"PYTHONPATH": str(ROOT)}
    register_worker(url, "s")  # this process
    register = "import sys; from structsearch.study import register_worker; register_worker(sys.argv[1], 't')"
    subprocess.run([sys.executable, "-c", register, url], check=True, env=env)  # a worker that has ended
    other = dataclasses.replace(Owner.this_process(), host="another-machine")
    with study_mod._engine(url).begin() as conn:  # a worker of another machine
        conn.execute(
            sa.insert(study_mod.WORKERS).values(
                study="s", host=other.host, pid=other.pid, started=0.0, owner=other.to_json()
            )
        )
    assert study_mod.live_workers(url) == 1
    register_worker(url, "u")  # the same process joining another study of this database
    assert study_mod.live_workers(url) == 1
    alive = subprocess.Popen(
        [sys.executable, "-c", register + "; print(flush=True); input()", url],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        alive.stdout.readline()  # registered
        assert study_mod.live_workers(url) == 2  # any study of this database: they share the cores
    finally:
        alive.communicate("")
    assert study_mod.live_workers(url) == 1


def test_an_old_workers_table_gets_its_owner_column(tmp_path) -> None:
    url = _url(tmp_path)
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # the table as the previous version made it
        conn.execute(
            sa.text(
                "CREATE TABLE structsearch_workers (id INTEGER PRIMARY KEY AUTOINCREMENT, study VARCHAR(512) "
                "NOT NULL, host VARCHAR(255) NOT NULL, pid INTEGER NOT NULL, started FLOAT NOT NULL)"
            )
        )
        conn.execute(sa.text("INSERT INTO structsearch_workers (study, host, pid, started) VALUES ('s', 'h', 1, 0)"))
    assert register_worker(url, "s") == 2
    assert study_mod.live_workers(url) == 1


def test_thread_share_divides_the_cores() -> None:
    from structsearch.search import cores, thread_share

    assert thread_share(1) is None  # a lone worker keeps torch's default
    assert thread_share(2) == max(1, cores() // 2)
    assert thread_share(4 * cores()) == 1
