"""Faults a trusted tool survives: `optimize` killed at three moments and rerun at once, workers
started by hand sharing the cores, a runs folder that is read-only or whose disk fills. Real
subprocesses, real SQLite storage, real file systems (tests/fs.py), tiny nets."""

from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from gan.train import TrainConfig
from structsearch import search
from structsearch import study as study_mod
from structsearch.cli import main
from structsearch.config import RunConfig, apply_preset
from tests.fs import fill, read_only, small_disk

pytestmark = pytest.mark.slow

FAST = ["--dataset", "shapes", "--preset", "tiny", "--sampler", "random", "--pruner", "none", "--tracking", "none"]
ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 180  # a loaded 2-core machine starts a process in 10-30 s


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)) | extra
    return {k: v for k, v in env.items() if v}


def _optimize(runs: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "structsearch", "optimize", *FAST, "--runs-dir", str(runs), "--study", name, *extra]


def _url(runs: Path, name: str) -> str:
    return f"sqlite:///{runs / name / 'study.db'}"


def _study(runs: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=_url(runs, name))


def _kill_when(argv: list[str], moment: Callable[[], bool], log: Path) -> None:
    """Start ``argv``, poll until ``moment()`` holds, then kill -9 it."""
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + WAIT_S
        while not moment():
            assert proc.poll() is None, f"it ended before the moment, rc {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the moment never came"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()


def _rerun(argv: list[str]) -> str:
    """The same command again, at once: long before the 60 s grace period of heartbeats."""
    started = time.monotonic()
    done = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < 60 or "is dead; retrying it" in done.stderr
    return done.stderr


def _state(runs: Path, name: str, number: int) -> str | None:
    """Trial ``number``'s state straight from the database file (read-only: the run goes on)."""
    db = runs / name / "study.db"
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT state FROM trials WHERE number = ?", (number,)).fetchone()
    except sqlite3.OperationalError:  # tables not there yet, or busy
        return None
    return row[0] if row else None


def _origin(t: FrozenTrial) -> int:
    history = RetryHeartbeatStaleTrialCallback.retry_history(t)
    return history[0] if history else t.number


def _assert_recovered(runs: Path, name: str, n_graphs: int) -> list[FrozenTrial]:
    """The study trained ``n_graphs`` distinct graphs, none twice, with nothing left running, and
    every failed trial retried: the retries, returned."""
    study = _study(runs, name)
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    trained = [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not {"duplicate_of", "taken_by"} & set(t.user_attrs)
    ]
    keys = [t.user_attrs["graph_key"] for t in trained]
    assert len(set(keys)) == len(keys) == n_graphs, keys
    folders = sorted(p.name for p in (runs / name).glob("trial-*"))
    assert folders == sorted(f"trial-{_origin(t):04d}" for t in trained)  # a retry trains in its dead trial's folder
    claims = sa.select(study_mod.CLAIMS.c.graph_key, study_mod.CLAIMS.c.trial)
    with study_mod._engine(_url(runs, name)).connect() as conn:
        assert dict(conn.execute(claims).all()) == {t.user_attrs["graph_key"]: _origin(t) for t in trained}
    retries = [t for t in trials if RetryHeartbeatStaleTrialCallback.retry_history(t)]
    failed = [t.number for t in trials if t.state == TrialState.FAIL]
    assert sorted(RetryHeartbeatStaleTrialCallback.retry_history(t)[-1] for t in retries) == failed
    return retries


def test_killed_mid_trial_a_rerun_at_once_resumes_its_checkpoint(tmp_path) -> None:
    runs, argv = tmp_path / "runs", _optimize(tmp_path / "runs", "mid", "--steps", "60", "--trials", "2")
    checkpoint = runs / "mid" / "trial-0000" / "checkpoint.pt"
    _kill_when(argv, checkpoint.exists, tmp_path / "first.log")  # checkpoints every 10 steps
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < step < 60
    assert _state(runs, "mid", 0) == "RUNNING"

    log = _rerun(argv)
    assert "trial 0: its process (pid" in log and "is dead; retrying it" in log
    (retry,) = _assert_recovered(runs, "mid", 2)
    assert retry.state == TrialState.COMPLETE and _origin(retry) == 0
    assert retry.user_attrs["resumed_at"] == step  # the checkpoint, not step 0
    assert retry.params == _study(runs, "mid").trials[0].params


def test_killed_while_scoring_a_rerun_at_once_scores_the_trained_model(tmp_path) -> None:
    """No checkpoint but the last (--checkpoint-every 0): its file marks the start of scoring,
    which 2,000 held-out images make last long enough to be caught."""
    extra = ["--steps", "20", "--checkpoint-every", "0", "--n-eval", "2000", "--trials", "2"]
    runs, argv = tmp_path / "runs", _optimize(tmp_path / "runs", "score", *extra)
    folder = runs / "score" / "trial-0000"
    _kill_when(argv, (folder / "checkpoint.pt").exists, tmp_path / "first.log")
    assert not (folder / "scores.json").exists(), "killed after scoring, not during it"
    assert _state(runs, "score", 0) == "RUNNING"

    _rerun(argv)
    (retry,) = _assert_recovered(runs, "score", 2)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_at"] == 20  # nothing trained again


def test_killed_right_after_a_trial_finished_a_rerun_at_once_completes_the_study(tmp_path) -> None:
    """Killed as the next trial starts, the hardest instant: it has no checkpoint, and perhaps no
    owner recorded yet (then the pop lock tells that its process is gone)."""
    runs, argv = tmp_path / "runs", _optimize(tmp_path / "runs", "after", "--steps", "10", "--trials", "3")
    _kill_when(argv, lambda: _state(runs, "after", 1) is not None, tmp_path / "first.log")
    assert (_state(runs, "after", 0), _state(runs, "after", 1)) == ("COMPLETE", "RUNNING")

    _rerun(argv)
    (retry,) = _assert_recovered(runs, "after", 3)
    assert _study(runs, "after").trials[0].state == TrialState.COMPLETE  # kept, not trained again
    assert _origin(retry) == 1 and retry.state == TrialState.COMPLETE


def test_interrupted_mid_trial_a_rerun_resumes_its_checkpoint(tmp_path) -> None:
    """Ctrl-C: Optuna marks the trial failed in a process that lives on, so neither its owner nor
    its heartbeats would tell; it is re-enqueued on the way out."""
    runs, argv = tmp_path / "runs", _optimize(tmp_path / "runs", "int", "--steps", "60", "--trials", "2")
    checkpoint = runs / "int" / "trial-0000" / "checkpoint.pt"
    proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + WAIT_S
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=WAIT_S)[1]
    assert proc.returncode == 130 and err.strip().endswith("interrupted") and "Traceback" not in err, err[-3000:]
    step = torch.load(checkpoint, weights_only=True)["step"]

    _rerun(argv)
    (retry,) = _assert_recovered(runs, "int", 2)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_at"] == step > 0


def test_a_worker_started_by_hand_shares_the_cores_with_the_live_workers(tmp_path) -> None:
    """This test process registers as a live worker of the study; a `worker` started without
    OMP_NUM_THREADS then takes cores // 2 threads, and says so."""
    runs = tmp_path / "runs"
    cfg = study_mod.SearchConfig(
        study="hand",
        n_trials=1,
        runs_dir=str(runs),
        tracking="none",
        sampler="random",
        pruner="none",
        run=RunConfig(
            dataset="shapes", n_eval=200, train=dataclasses.replace(apply_preset(TrainConfig(), "tiny"), n_steps=5)
        ),
    )
    search.prepare(cfg)
    study_mod.register_worker(cfg.storage_url(), "hand")  # alive for the whole test
    argv = [sys.executable, "-m", "structsearch", "worker", "--study", "hand", "--storage", cfg.storage_url()]
    done = subprocess.run(argv, env=_env(OMP_NUM_THREADS=""), capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    share = max(1, search.cores() // 2)
    assert f"threads: {share} per trial ({search.cores()} cores, 2 live workers on this machine" in done.stderr
    (trial,) = _study(runs, "hand").get_trials(states=(TrialState.COMPLETE,))
    assert trial.user_attrs["threads"] == share


# ---- a runs folder that cannot be written -----------------------------------------------------

OS_WRITE_ERRORS = ("Read-only file system", "Permission denied", "Operation not permitted")


def _one_line(capsys, argv: list[str], code: int) -> str:
    capsys.readouterr()
    assert main(argv) == code, argv
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_a_read_only_runs_folder_is_one_line_for_every_command_that_writes(tmp_path, capsys) -> None:
    """A complete study, its folder made read-only: Optuna's "exceeding max length" before."""
    runs = tmp_path / "runs"
    argv = ["optimize", *FAST, "--steps", "2", "--n-eval", "100", "--runs-dir", str(runs), "--study", "ro"]
    assert main([*argv, "--trials", "1"]) == 0
    commands = {
        "optimize": [*argv, "--trials", "1"],
        "optimize more trials": [*argv, "--trials", "2"],
        "worker": ["worker", "--study", "ro", "--storage", _url(runs, "ro")],
        "train": ["train", "--dataset", "shapes", "--preset", "tiny", "--runs-dir", str(runs), "--tracking", "none"],
        "export": ["export", "--study", "ro", "--runs-dir", str(runs)],
        "evaluate": ["evaluate", str(runs / "ro" / "trial-0000"), "--scale", "0.01", "--tracking", "none"],
    }
    with read_only(runs) as how:
        for name, command in commands.items():
            line = _one_line(capsys, command, 2)
            assert str(runs) in line and "cannot " in line, (name, how, line)
            assert any(e in line for e in OS_WRITE_ERRORS), (name, how, line)
        out = tmp_path / "elsewhere"
        assert main(["export", "--study", "ro", "--runs-dir", str(runs), "--out", str(out)]) == 0  # reading works
    assert (out / "best-1.json").exists()


def test_a_disk_that_fills_mid_run_ends_in_one_line_and_a_rerun_resumes(tmp_path) -> None:
    """Exit 1, not 2: the command was right and the machine failed it, after work had begun."""
    with small_disk(tmp_path / "disk") as disk:
        runs, log = disk / "runs", tmp_path / "first.log"
        argv = _optimize(runs, "full", "--steps", "60", "--trials", "2")
        with open(log, "w") as out:
            proc = subprocess.Popen(argv, env=_env(), stdout=out, stderr=subprocess.STDOUT)
        checkpoint = runs / "full" / "trial-0000" / "checkpoint.pt"
        deadline = time.monotonic() + WAIT_S
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        filler = fill(disk)
        assert proc.wait(timeout=WAIT_S) == 1, log.read_text()[-3000:]
        text = log.read_text()
        last = text.strip().splitlines()[-1]
        assert "Traceback" not in text, text[-3000:]
        assert last.startswith("structsearch optimize: error: cannot write"), last
        assert "No space left on device" in last or "database or disk is full" in last, last

        filler.unlink()
        _rerun(argv)
        (retry,) = _assert_recovered(runs, "full", 2)
        assert retry.user_attrs["resumed_at"] >= 10  # from its last checkpoint
