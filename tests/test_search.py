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
    assert "this ranking is not an identification of the true graph" in printed  # i.i.d. images only

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


def _trained(study) -> list:
    """Trials that trained their graph (not a repeat answered from another trial)."""
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return [t for t in study.get_trials(states=states) if not {"duplicate_of", "taken_by"} & set(t.user_attrs)]


def test_trials_count_distinct_graphs_and_a_rerun_trains_only_new_ones(tmp_path) -> None:
    """--trials 4 trains 4 distinct graphs; rerun with --trials 6, the study trains 2 more (6 child runs)."""
    runs = tmp_path / "runs"
    assert _optimize(runs, "r", 4, "--sampler", "tpe") == 0
    first = _trained(_study(runs, "r"))
    assert len({t.user_attrs["graph_key"] for t in first}) == len(first) == 4
    before = {t.number: (t.values, t.datetime_complete) for t in _study(runs, "r").trials}
    assert _optimize(runs, "r", 6, "--sampler", "tpe") == 0
    study = _study(runs, "r")
    trained = _trained(study)
    assert len({t.user_attrs["graph_key"] for t in trained}) == len(trained) == 6
    assert {t.number: (t.values, t.datetime_complete) for t in study.trials if t.number in before} == before
    for repeat in (t for t in study.trials if "duplicate_of" in t.user_attrs):  # answered, not trained
        original = study.trials[repeat.user_attrs["duplicate_of"]]
        assert repeat.values == original.values and not (runs / "r" / f"trial-{repeat.number:04d}").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("study-r")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 6


def test_duplicate_graph_is_not_trained_again(tmp_path) -> None:
    runs = tmp_path / "runs"
    candidates = tmp_path / "candidates.txt"
    candidates.write_text("c1->q1, c2->q2, c3->q3\nc1->q1, c2->q2, c3->q3, q1->q2\n")
    argv = ["--space", "candidates", "--candidates", str(candidates), "--tracking", "none", "--seed", "2"]
    assert _optimize(runs, "d", 2, *argv) == 0
    study = _study(runs, "d")
    assert len(_trained(study)) == 2
    repeats = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert repeats, "seed 2 repeats the seed graph before proposing the other one"
    for repeat in repeats:
        assert repeat.values == study.trials[repeat.user_attrs["duplicate_of"]].values
        assert not (runs / "d" / f"trial-{repeat.number:04d}").exists()


def test_a_space_smaller_than_the_budget_is_trained_whole_and_the_study_ends(tmp_path, caplog) -> None:
    runs = tmp_path / "runs"
    with caplog.at_level("INFO", logger="structsearch.search"):
        assert _optimize(runs, "g", 30, "--sampler", "grid", "--tracking", "none") == 0
    study = _study(runs, "g")
    assert len(study.trials) == len(_trained(study)) == 25  # the grid proposes every DAG once
    assert "the space holds 25 graphs: --trials 30 trains all of them" in caplog.text
    assert "all 25 graphs of the space are trained" in caplog.text


def test_tpe_on_a_small_space_trains_every_graph_once(tmp_path, caplog) -> None:
    """TPE repeats trained graphs often on a small space (here the 11 Markov classes); repeats cost
    nothing, and the fill-in ends it."""
    runs = tmp_path / "runs"
    fast = ["--steps", "1", "--n-eval", "100", "--tracking", "none", "--space", "classes"]
    with caplog.at_level("INFO", logger="structsearch.search"):
        assert _optimize(runs, "t", 15, "--sampler", "tpe", *fast) == 0
    study = _study(runs, "t")
    trained = _trained(study)
    assert len({t.user_attrs["graph_key"] for t in trained}) == len(trained) == 11
    assert len(study.trials) > 11  # TPE did propose repeats, which trained nothing
    assert "all 11 graphs of the space are trained" in caplog.text


def test_the_classes_space_trains_one_dag_per_markov_class(tmp_path) -> None:
    from gan import dag

    runs = tmp_path / "runs"
    assert _optimize(runs, "c", 20, "--space", "classes", "--sampler", "grid", "--tracking", "none") == 0
    trained = _trained(_study(runs, "c"))
    classes = {dag.markov_class(_q_edges(t)) for t in trained}
    assert len(trained) == len(classes) == 11


def _q_edges(trial) -> list[tuple[str, str]]:
    pairs = [tuple(e.split("->")) for e in json.loads(trial.user_attrs["graph_json"])["edges"]]
    return [(u, v) for u, v in pairs if u[0] == "q"]


def _worker_env():
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def test_a_killed_trial_of_another_machine_is_retried_once_its_heartbeats_stop(tmp_path) -> None:
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
        "60",  # killed at its first checkpoint (step 10); a rerun repeats the study's options
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
    # As if it ran on another machine, whose processes this one cannot see: only heartbeats tell.
    owner = killed.user_attrs["owner"] | {"host": "another-machine"}
    optuna.storages.RDBStorage(f"sqlite:///{runs / 'k' / 'study.db'}").set_trial_user_attr(
        killed._trial_id, "owner", owner
    )
    time.sleep(4)  # past the grace period: its heartbeat is stale

    rerun = subprocess.run(argv, env=_worker_env(), timeout=600, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "is dead; retrying it" not in rerun.stderr  # not judged by its owner
    trials = _study(runs, "k").trials
    assert trials[0].state == TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert retried[0].params == killed.params
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 2


def test_two_workers_share_one_study(tmp_path) -> None:
    runs = tmp_path / "runs"
    assert _optimize(runs, "w", 4, "--workers", "2", "--tracking", "none", "--space", "brute-force") == 0
    study = _study(runs, "w")
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.FAIL)]  # none lost
    trained = _trained(study)
    keys = [t.user_attrs["graph_key"] for t in trained]
    assert len(set(keys)) == len(keys) >= 4  # no graph trained twice, the budget met


def test_optimize_with_anchors_anchors_every_trial_under_its_own_seed(tmp_path, capsys) -> None:
    runs = tmp_path / "runs"
    assert _optimize(runs, "a", 2, "--anchor-labels", "0.005", "--objective", "anchor_r2", "--tracking", "none") == 0
    best = _study(runs, "a").best_trial.user_attrs["run_dir"]
    assert f"structsearch learn-structure {best} --table anchors" in capsys.readouterr().out  # the better estimator
    numbers = sorted(t.number for t in _trained(_study(runs, "a")))
    records = [json.loads((runs / "a" / f"trial-{n:04d}" / "anchors.json").read_text()) for n in numbers]
    assert [r["count"] for r in records] == [100, 100] and [r["seed"] for r in records] == numbers
    assert records[0]["sha256"] != records[1]["sha256"]  # the subset follows each trial's seed
    study = _study(runs, "a")
    assert all("anchor_r2" in t.user_attrs["scores"] for t in study.get_trials(states=(TrialState.COMPLETE,)))
    assert json.loads(study.user_attrs["structsearch_config"])["run"]["train"]["anchor_labels"] == 0.005  # workers too
