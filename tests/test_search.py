"""The search end to end on `shapes`: tiny nets, a few steps, real Optuna storage, real MLflow."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from structsearch.cli import main

pytestmark = pytest.mark.slow

FAST = ["--dataset", "shapes", "--preset", "tiny", "--steps", "4", "--n-eval", "200", "--sampler", "random"]


def _study(runs, name):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{runs / name / 'study.db'}")


def _optimize(runs, name, trials, *extra) -> int:
    return main(["optimize", *FAST, "--runs-dir", str(runs), "--study", name, "--trials", str(trials), *extra])


def test_optimize_tracks_trials_in_mlflow_and_exports_a_trainable_graph(tmp_path, capsys) -> None:
    runs = tmp_path / "runs"
    assert _optimize(runs, "s", 3) == 0
    printed = capsys.readouterr().out
    assert "top 3 graphs" in printed and "struct_bic" in printed

    study = _study(runs, "s")
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 3
    assert complete[0].user_attrs["graph_key"] == "c1->q1, c2->q2, c3->q3"  # the independent seed comes first

    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("study-s")
    runs_found = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs_found if r.data.tags.get("structsearch.role") == "study"]
    children = [r for r in runs_found if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 3
    for child in children:
        assert {"edge/q1_q2", "edge/q1_q3", "edge/q2_q3", "edge/c1_q1"} <= set(child.data.params)
        assert "objective/struct_bic" in child.data.metrics
    assert sum(r.data.tags.get("structsearch.best") == "1" for r in children) == 1

    assert main(["export", "--study", "s", "--runs-dir", str(runs), "--top", "2"]) == 0
    exported = runs / "s" / "export" / "best-1.json"
    graph = json.loads(exported.read_text())
    assert graph["edges"][0] == "c1->q1"
    out = tmp_path / "retrain"
    assert (
        main(
            [
                "train",
                "--dataset",
                "shapes",
                "--graph",
                str(exported),
                "--preset",
                "tiny",
                "--steps",
                "2",
                "--n-eval",
                "100",
                "--tracking",
                "none",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads((out / "scores.json").read_text())["status"] == "completed"


def test_rerun_resumes_the_study_without_touching_finished_trials(tmp_path) -> None:
    runs = tmp_path / "runs"
    assert _optimize(runs, "r", 2, "--tracking", "none") == 0
    before = {t.number: (t.values, t.datetime_complete) for t in _study(runs, "r").trials}
    assert _optimize(runs, "r", 4, "--tracking", "none") == 0
    trials = _study(runs, "r").get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 4
    assert {t.number: (t.values, t.datetime_complete) for t in trials if t.number in before} == before


def test_duplicate_graph_is_not_trained_again(tmp_path) -> None:
    runs = tmp_path / "runs"
    candidates = tmp_path / "candidates.txt"
    candidates.write_text("c1->q1, c2->q2, c3->q3\n")
    assert _optimize(runs, "d", 2, "--space", "candidates", "--candidates", str(candidates), "--tracking", "none") == 0
    first, second = _study(runs, "d").trials
    assert second.user_attrs["duplicate_of"] == first.number
    assert second.values == first.values
    assert not (runs / "d" / f"trial-{second.number:04d}").exists()


def _worker_env():
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def test_killed_worker_trial_is_retried_with_the_same_graph(tmp_path) -> None:
    runs = tmp_path / "runs"
    argv = [
        sys.executable,
        "-m",
        "structsearch",
        "optimize",
        *FAST,
        "--runs-dir",
        str(runs),
        "--study",
        "k",
        "--trials",
        "2",
        "--tracking",
        "none",
        "--heartbeat-interval",
        "1",
        "--grace-period",
        "3",
        "--steps",
        "200",  # killed at its first checkpoint (step 10); a rerun repeats the study's options
    ]
    proc = subprocess.Popen(argv, env=_worker_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (runs / "k" / "trial-0000" / "checkpoint.pt").exists():
            time.sleep(0.1)
        assert (runs / "k" / "trial-0000" / "checkpoint.pt").exists(), "the worker never reached its first checkpoint"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = _study(runs, "k").trials[0]
    assert killed.state == TrialState.RUNNING  # nobody has noticed yet
    time.sleep(4)  # past the grace period: its heartbeat is stale

    assert subprocess.run(argv, env=_worker_env(), timeout=600).returncode == 0
    trials = _study(runs, "k").trials
    assert trials[0].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == killed.params
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 2


def test_two_workers_share_one_study(tmp_path) -> None:
    runs = tmp_path / "runs"
    assert _optimize(runs, "w", 4, "--workers", "2", "--tracking", "none", "--space", "brute-force") == 0
    trials = _study(runs, "w").trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and len(trials) == 4  # each trial once, none lost, none extra
    trained = [t for t in finished if "duplicate_of" not in t.user_attrs]
    assert len({t.number for t in trained}) == len(trained)
