"""``optimize --stack K``: K trials at a time in one process, each an ordinary trial in the end."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from structsearch.cli import main
from structsearch.config import RunConfig
from structsearch.trial import Recorder, evaluate_run, load_dataset, read_run_graph, run_trial

FAST = ["--dataset", "shapes", "--preset", "tiny", "--steps", "4", "--n-eval", "200", "--sampler", "random"]


def _optimize(runs: Path, name: str, trials: int, *extra: str) -> int:
    return main(["optimize", *FAST, "--runs-dir", str(runs), "--study", name, "--trials", str(trials), *extra])


def _trained(study: optuna.Study) -> list:
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return [t for t in study.get_trials(states=states) if not {"duplicate_of", "taken_by"} & set(t.user_attrs)]


def _study(runs: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{runs / name / 'study.db'}")


@pytest.mark.slow
def test_stack_2_trains_4_distinct_graphs_as_ordinary_trials(tmp_path) -> None:
    runs = tmp_path / "runs"
    assert _optimize(runs, "k", 4, "--stack", "2", "--steps", "20") == 0  # the pruner asked at step 10
    study = _study(runs, "k")
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING))
    trained = _trained(study)
    keys = [t.user_attrs["graph_key"] for t in trained]
    assert len(set(keys)) == len(keys) == 4
    assert trained[0].user_attrs["graph_key"] == "c1->q1, c2->q2, c3->q3"  # the independent seed first
    assert study.metric_names == ["struct_bic"]  # named in optuna-dashboard
    assert all(set(t.intermediate_values) == {10} for t in trained)  # reported to the (median) pruner
    for repeat in (t for t in study.trials if "duplicate_of" in t.user_attrs):  # answered, not trained
        assert repeat.values == study.trials[repeat.user_attrs["duplicate_of"]].values

    client = MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("study-k")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 4 and all("objective/struct_bic" in r.data.metrics for r in children)
    assert sum(r.data.tags.get("structsearch.best") == "1" for r in children) == 1
    assert all(r.data.tags.get("structsearch.state") in ("completed", "pruned") for r in children)
    parent = next(r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "FINISHED"  # the study's run ends with the study, as a plain one's does

    # A plain study's trial carries the same attributes.
    assert _optimize(runs, "plain", 2, "--tracking", "none") == 0
    plain = _trained(_study(runs, "plain"))[1]
    assert set(trained[1].user_attrs) == set(plain.user_attrs)

    # Each folder is an ordinary run: `evaluate` rescores its checkpoint to the recorded scores.
    for t in trained:
        run_dir = Path(t.user_attrs["run_dir"])
        recorded = json.loads((run_dir / "scores.json").read_text())
        assert recorded["status"] == "completed" and recorded["scores"] == t.user_attrs["scores"]
        again = evaluate_run(run_dir, metrics="none", scale=0.1)
        assert {k: again[k] for k in recorded["scores"]} == pytest.approx(recorded["scores"], rel=1e-9, abs=1e-12)


@pytest.mark.slow
def test_a_stacked_trial_is_the_trial_trained_alone(tmp_path) -> None:
    """The same seed, graph and random streams as training it alone; the weights agree to what fp32
    training allows (tests/test_stacked.py: Adam moves each weight by about lr per step at most, so
    two roundings of one run stay within 2 lr_g per step; measured here: 8.4e-4 over 4 steps)."""
    runs = tmp_path / "runs"
    assert _optimize(runs, "a", 2, "--stack", "2", "--tracking", "none") == 0
    for t in _trained(_study(runs, "a")):
        run_dir = Path(t.user_attrs["run_dir"])
        cfg, graph = RunConfig.load(run_dir / "config.json"), read_run_graph(run_dir)
        assert cfg.train.seed == t.number and graph.key == t.user_attrs["graph_key"]
        alone = run_trial(cfg, graph, load_dataset(cfg), Recorder(tmp_path / f"alone-{t.number}"), progress=False)
        assert alone.status == "completed"
        stacked, plain = (torch.load(d / "checkpoint.pt") for d in (run_dir, tmp_path / f"alone-{t.number}"))
        assert stacked["step"] == plain["step"] == 4
        for stream in ("data_rng", "latent_rng"):  # every draw the run made was its own
            assert torch.equal(stacked[stream], plain[stream])
        tolerance = 2 * cfg.train.lr_g * cfg.train.n_steps
        for side in ("G", "D"):
            worst = max((stacked[side][k].double() - plain[side][k].double()).abs().max().item() for k in plain[side])
            assert worst <= tolerance, f"{side} differs by {worst:.3g}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stack", "0"], "argument --stack: expected an integer >= 1, got '0'"),
        (["--stack", "2", "--workers", "2"], "--stack 2 trains 2 trials in this one process and cannot be combined"),
        (["--stack", "2", "--precision", "bf16"], "precision='bf16': stacked training runs in fp32 only"),
        (["--stack", "2", "--lambda-pair", "0.5", "--code-prior", "graph"], "lambda_pair=0.5: intervention pairs"),
    ],
)
def test_stack_refuses_what_it_cannot_honour_before_anything_exists(tmp_path, capsys, args, message) -> None:
    assert _optimize(tmp_path, "r", 2, "--tracking", "none", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # no study, no trial


@pytest.mark.slow
def test_killed_stack_is_retried_from_its_checkpoints_beside_a_fresh_trial(tmp_path) -> None:
    """Killed mid-stack, both trials are retried from their checkpoints (one stack at their step) while
    a third graph trains from step 0 in a stack of its own."""
    runs = tmp_path / "runs"
    argv = [sys.executable, "-m", "structsearch", "optimize", *FAST, "--runs-dir", str(runs), "--study", "k"]
    argv += ["--tracking", "none", "--heartbeat-interval", "1", "--grace-period", "3", "--steps", "60"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([*argv, "--trials", "2", "--stack", "2"], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (runs / "k" / "trial-0001" / "checkpoint.pt").exists():
            time.sleep(0.1)
        assert (runs / "k" / "trial-0001" / "checkpoint.pt").exists(), "the stack never reached its first checkpoint"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [t.state for t in _study(runs, "k").trials] == [TrialState.RUNNING] * 2
    time.sleep(4)  # past the grace period: their heartbeats are stale

    rerun = subprocess.run(
        [*argv, "--trials", "3", "--stack", "3"], env=env, capture_output=True, text=True, timeout=600
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert re.search(r"trial-\d{4}, trial-\d{4}: ", rerun.stderr)  # the two retries' stack (progress bar)
    assert re.search(r"(^|[\r\n])trial-\d{4}:\s+0%", rerun.stderr)  # the fresh trial's, from step 0
    assert "resumed" in rerun.stderr and "trial-0000 at step" in rerun.stderr and "trial-0001 at step" in rerun.stderr
    trials = _study(runs, "k").trials
    assert [t.state for t in trials[:2]] == [TrialState.FAIL] * 2
    retried = {t.system_attrs.get("failed_trial"): t for t in trials if "failed_trial" in t.system_attrs}
    assert set(retried) == {0, 1} and all(t.state == TrialState.COMPLETE for t in retried.values())
    assert all(retried[n].params == trials[n].params for n in (0, 1))
    trained = _trained(_study(runs, "k"))
    assert len({t.user_attrs["graph_key"] for t in trained}) == len(trained) == 3
    for t in trained:
        assert json.loads((Path(t.user_attrs["run_dir"]) / "scores.json").read_text())["step"] == 60
