"""A study on a real PostgreSQL server, the storage the README gives for many machines.

The session's server (``postgres`` fixture in conftest.py) is Debian's PostgreSQL, started for the
tests on a unix socket in a temporary folder and stopped after them. What is checked is what a user
of a shared study relies on: two workers lose no trial and train no graph twice, a killed worker's
trial is retried with its graph from its checkpoint, and processes that start at once (creating the
tables, claiming a graph, taking an enqueued trial) never both win.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import FrozenTrial, TrialState

from structsearch import study as study_mod
from structsearch.cli import main

FAST = ["--dataset", "shapes", "--preset", "tiny", "--n-eval", "100", "--tracking", "none"]
HEARTBEAT = ["--heartbeat-interval", "1", "--grace-period", "2"]  # a dead trial is stale after 2 s
N_RACERS = 6


def _optimize(url: str, runs: Path, study: str, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "structsearch", "optimize", *FAST, "--storage", url, "--runs-dir", str(runs)] + [
        "--study",
        study,
        "--trials",
        str(trials),
        "--workers",
        "2",
        *HEARTBEAT,
        *extra,
    ]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def _trained(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Trials that trained their graph (not a repeat answered from, or left to, another trial)."""
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return [t for t in done if not set(study_mod.REPEAT_ATTRS) & set(t.user_attrs)]


def _claims(url: str, study: str) -> dict[str, int]:
    """The claims table of ``study``: graph key -> the trial that holds it."""
    with sa.create_engine(url).connect() as conn:
        rows = conn.execute(sa.select(study_mod.CLAIMS).where(study_mod.CLAIMS.c.study == study)).mappings().all()
    return {row["graph_key"]: row["trial"] for row in rows}


def _check_no_trial_lost_and_no_graph_twice(url: str, study: str, n_graphs: int) -> list[FrozenTrial]:
    trials = optuna.load_study(study_name=study, storage=url).trials
    left = [(t.number, t.state.name) for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert not left, f"trials never finished: {left}"
    trained = _trained(trials)
    keys = [t.user_attrs["graph_key"] for t in trained]
    assert len(set(keys)) == len(keys) >= n_graphs, f"a graph was trained twice, or too few: {keys}"
    assert set(_claims(url, study)) == set(keys)  # every trained graph was claimed, once
    return trials


@pytest.mark.slow
def test_two_workers_lose_no_trial_and_train_no_graph_twice(postgres, tmp_path) -> None:
    url = postgres.create_database("two_workers")
    proc = subprocess.run(_optimize(url, tmp_path, "w", 4), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "study w: 4 graphs trained in" in proc.stdout
    trials = _check_no_trial_lost_and_no_graph_twice(url, "w", 4)
    assert not [t.number for t in trials if t.state == TrialState.FAIL]
    with sa.create_engine(url).connect() as conn:
        workers = conn.execute(sa.select(study_mod.WORKERS.c.pid).where(study_mod.WORKERS.c.study == "w")).all()
    assert len({pid for (pid,) in workers}) == 2  # two worker processes joined the study


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _training_with_checkpoints(storage: optuna.storages.RDBStorage, study: str) -> int:
    """How many trials of ``study`` are running with a checkpoint written (0 before the study exists)."""
    try:
        study_id = storage.get_study_id_from_name(study)
    except KeyError:
        return 0
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    return sum(Path(t.user_attrs.get("run_dir", "/nonexistent"), "checkpoint.pt").exists() for t in running)


@pytest.mark.slow
def test_a_killed_workers_trial_is_retried_with_its_graph_from_its_checkpoint(postgres, tmp_path) -> None:
    """kill -9 one of two workers while both are mid-trial: the other fails the dead trial once its
    heartbeat is stale (or its owner is seen dead), trains its graph from the checkpoint, and the
    study reaches its graphs."""
    url = postgres.create_database("killed_worker")
    log = tmp_path / "optimize.log"
    argv = _optimize(url, tmp_path / "runs", "k", 3, "--steps", "60")  # checkpoints every 10 steps
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=_env(), stdout=out, stderr=subprocess.STDOUT)
        storage = optuna.storages.RDBStorage(url)
        try:
            deadline = time.time() + 300
            while _training_with_checkpoints(storage, "k") < 2 and proc.poll() is None and time.time() < deadline:
                time.sleep(0.2)
            assert _training_with_checkpoints(storage, "k") == 2, "the two workers were never mid-trial together"
            victim = _children(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            proc.wait(timeout=600)
        finally:
            proc.kill()
            proc.wait()
    output = log.read_text()
    trials = _check_no_trial_lost_and_no_graph_twice(url, "k", 3)
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1, output[-3000:]  # the killed worker's trial, and only it
    dead = failed[0]
    retries = [t for t in _trained(trials) if t.user_attrs["graph_key"] == dead.user_attrs["graph_key"]]
    assert len(retries) == 1 and retries[0].number > dead.number, output[-3000:]
    assert retries[0].user_attrs["run_dir"] == dead.user_attrs["run_dir"]  # the dead trial's folder...
    assert f"resumed {dead.user_attrs['run_dir']} at step" in output  # ...and its checkpoint
    assert _claims(url, "k")[dead.user_attrs["graph_key"]] == dead.number  # the claim stayed with the graph


# ---- processes that start at once ----------------------------------------------------------------


def _racer(target, args: tuple, barrier, queue) -> None:
    """One racer: released with the others, it reports what ``target(*args)`` returned or raised."""
    study_mod._engine.cache_clear()  # a forked process never shares its parent's connections
    prepared = target(*args, prepare=True)
    barrier.wait()
    try:
        queue.put(target(*args, prepared=prepared))
    except Exception as err:  # reported, so a racer that failed is named, not waited for
        queue.put(f"{type(err).__name__}: {str(err).splitlines()[0]}")


def _race(target, *args) -> list:
    """``target(*args, i)`` in N_RACERS forked processes released together: their results."""
    ctx = mp.get_context("fork")  # the modules are imported already: the racers start in milliseconds
    barrier, queue = ctx.Barrier(N_RACERS), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(target, (*args, i), barrier, queue)) for i in range(N_RACERS)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return results


def _open(url: str, i: int, prepare: bool = False, prepared=None) -> str | None:
    if prepare:
        return None
    study_mod.open_study(study_mod.SearchConfig(study="race", storage=url))
    return "ok"


def test_commands_starting_one_study_at_once_all_open_it(postgres) -> None:
    """Creating Optuna's tables and the claims table in a fresh database races: every racer opens the study."""
    url = postgres.create_database("open_race")
    assert _race(_open, url) == ["ok"] * N_RACERS
    assert optuna.get_all_study_names(url) == ["race"]
    assert {"structsearch_claims", "structsearch_workers"} <= set(sa.inspect(sa.create_engine(url)).get_table_names())


def _claim(url: str, i: int, prepare: bool = False, prepared=None) -> tuple[int, int] | None:
    return None if prepare else (i, study_mod.claim_graph(url, "s", "c1->q1, q1->q2", i))


def test_racing_claims_of_one_graph_have_one_holder(postgres) -> None:
    url = postgres.create_database("claim_race")
    study_mod.claim_graph(url, "s", "warm-up", -1)  # the tables exist; the race is over the row
    results = _race(_claim, url)
    holders = {result[1] for result in results}
    assert len(holders) == 1 and holders <= set(range(N_RACERS)), results  # all told one winner, a racer
    assert _claims(url, "s")["c1->q1, q1->q2"] == holders.pop()


def _ask(url: str, i: int, prepare: bool = False, prepared=None) -> int | None:
    if prepare:  # loading the study is not part of the race
        return optuna.load_study(study_name="pop", storage=url)
    return prepared.ask().number


def test_racing_workers_take_an_enqueued_trial_once(postgres) -> None:
    """Optuna takes a WAITING trial under SELECT ... FOR UPDATE on PostgreSQL: without ``PopLock``,
    which on SQLite is also what stops this race."""
    url = postgres.create_database("pop_race")
    study = optuna.create_study(study_name="pop", storage=url)
    study.enqueue_trial({"x": 1.0})
    enqueued = study.trials[0].number
    numbers = _race(_ask, url)
    assert all(isinstance(n, int) for n in numbers), numbers
    assert len(set(numbers)) == N_RACERS and numbers.count(enqueued) == 1


def test_the_pop_lock_excludes_every_other_session_until_released(postgres) -> None:
    """``PopLock`` on PostgreSQL: while one worker checks the budget and takes a trial, no other can
    (two workers that both read "3 of 4 trained" would train 5)."""
    url = postgres.create_database("pop_lock")
    lock = study_mod.PopLock(url)

    def other_session_gets_it() -> bool:
        with sa.create_engine(url, poolclass=sa.pool.NullPool).connect() as conn:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": lock.PG_KEY}).scalar_one()
            if got:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": lock.PG_KEY})
            return bool(got)

    assert other_session_gets_it()
    lock.acquire()
    lock.acquire()  # held already: a no-op, not a second lock to release
    assert lock.held() and not other_session_gets_it()
    lock.release()
    assert not lock.held() and other_session_gets_it()


# ---- a URL that names no reachable database ------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("postgresql+psycopg://structsearch@/no_such_db?host={socket}", 'database "no_such_db" does not exist'),
        ("postgresql+psycopg://nobody:secret@/postgres?host={socket}", 'role "nobody" does not exist'),
        ("postgresql+psycopg://structsearch@127.0.0.1:9/db", "Connection refused"),  # no server there
    ],
    ids=["missing-database", "unknown-user", "server-down"],
)
def test_a_storage_url_that_cannot_connect_is_one_line(postgres, tmp_path, capsys, url, phrase) -> None:
    url = url.format(socket=postgres.socket)
    assert main(["worker", "--study", "s", "--storage", url, "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "cannot connect" in err and phrase in err, err
    assert "secret" not in err  # a password is never printed
