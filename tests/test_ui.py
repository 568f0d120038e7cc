"""The MLflow UI and optuna-dashboard on a real study: what the tracking store says, the URL
`structsearch ui` prints, and that stopping either command stops its server and frees the port.
Real SQLite stores, real servers on free ports of 127.0.0.1, tiny nets."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from structsearch import tracking
from structsearch.cli import main

ROOT = Path(__file__).resolve().parents[1]
# tpe, seed 0: 6 graphs trained, the median pruner stops 2 of them at step 10 (measured).
FAST = ["--dataset", "shapes", "--preset", "tiny", "--steps", "20", "--n-eval", "200", "--sampler", "tpe"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _client(runs: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}")


# ---- the tracking store, no server ---------------------------------------------------------------


def test_a_new_experiment_is_model_training_and_an_old_one_is_marked(tmp_path) -> None:
    runs = tmp_path / "runs"
    tracking.make_tracker(None, "study-new", runs)
    client = _client(runs)
    assert client.get_experiment_by_name("study-new").tags["mlflow.experimentKind"] == "custom_model_development"
    old = client.create_experiment("study-old")  # as a store written before the tag existed
    assert "mlflow.experimentKind" not in client.get_experiment(old).tags
    tracking.make_tracker(None, "study-old", runs)
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.parametrize(
    ("raised", "status"), [(None, "FINISHED"), (KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")]
)
def test_the_parent_run_ends_with_the_study(tmp_path, raised, status) -> None:
    tracker = tracking.make_tracker(None, "study-s", tmp_path / "runs")
    parent = tracker.start_run("study-s", {})
    tracker.end_run(parent)  # a study run before: a rerun sets it RUNNING again
    with pytest.raises(raised) if raised else contextlib.nullcontext():
        with tracking.study_status(tracker, parent):
            assert tracker.client.get_run(parent).info.status == "RUNNING"
            if raised:
                raise raised
    assert tracker.client.get_run(parent).info.status == status


@pytest.mark.parametrize(("state", "status"), [("pruned", "FINISHED"), ("diverged", "FAILED")])
def test_a_trial_run_reads_as_it_ended(tmp_path, state, status) -> None:
    tracker = tracking.make_tracker(None, "study-s", tmp_path / "runs")
    run = tracker.start_run("trial-0000", {})
    tracker.end_run(run, "KILLED")  # what the Recorder says of any stopped run
    tracking.mark_state(tracker, run, state)
    found = tracker.client.get_run(run)
    assert (found.info.status, found.data.tags["structsearch.state"]) == (status, state)


def _read_like_mlflow(url: str) -> dict[str, object]:
    """What MLflow 3.17's compare page reads from a URL: the hash route's query, decoded until it
    no longer changes, then ``runs`` and ``experiments`` as JSON (its reader in 1376.*.chunk.js)."""
    route = urllib.parse.urlsplit(url).fragment
    path, _, query = route.partition("?")
    while (decoded := urllib.parse.unquote(query)) != query:
        query = decoded
    fields = dict(part.split("=", 1) for part in query.split("&"))
    return {"path": path, **{k: json.loads(v) if k != "workflowType" else v for k, v in fields.items()}}


def test_the_compare_url_is_the_route_mlflow_builds() -> None:
    ids = ["0f3a", "b2c4d5"]
    url = tracking.compare_url("http://127.0.0.1:5000/", "7", ids)
    assert url.startswith("http://127.0.0.1:5000/#/compare-runs?runs=")  # runs first: the reader expects it
    assert " " not in url and '"' not in url  # survives a terminal and a shell
    assert _read_like_mlflow(url) == {
        "path": "/compare-runs",
        "runs": ids,
        "experiments": ["7"],
        "workflowType": "machine_learning",
    }
    assert tracking.experiment_url("http://h:1", "7") == "http://h:1/#/experiments/7/runs?workflowType=machine_learning"


def test_ui_refuses_an_unknown_study_before_starting_a_server(tmp_path, capsys) -> None:
    runs = tmp_path / "runs"
    tracking.make_tracker(None, "study-other", runs)
    capsys.readouterr()  # MLflow's own lines when it created the store
    assert main(["ui", "--runs-dir", str(runs), "--study", "nope", "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no study 'nope' in the tracking store" in err[0]


def test_dashboard_without_optuna_dashboard_is_one_line(tmp_path) -> None:
    code = "import sys; sys.modules['optuna_dashboard'] = None; from structsearch.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["dashboard", "--study", "s", "--runs-dir", str(tmp_path)]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=_env(), timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "pip install 'structsearch[dashboard]'" in lines[0]


# ---- a real study, real servers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory) -> Path:
    """A runs folder with study ``s``: 6 graphs trained and tracked in the default MLflow store."""
    runs = tmp_path_factory.mktemp("ui") / "runs"
    assert main(["optimize", *FAST, "--study", "s", "--trials", "6", "--runs-dir", str(runs)]) == 0
    return runs


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def _start(*argv: str, **env: str) -> tuple[subprocess.Popen, list[str]]:
    """A structsearch command in its own process, its stdout lines collected as they come."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "structsearch", *argv], stdout=subprocess.PIPE, text=True, env=_env() | env, cwd=ROOT
    )
    lines: list[str] = []

    def collect() -> None:
        for line in proc.stdout:
            lines.append(line)

    threading.Thread(target=collect, daemon=True).start()
    return proc, lines


def _url_after(lines: list[str], marker: str, proc: subprocess.Popen, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        for i, line in enumerate(lines[:-1]):
            if marker in line:
                return lines[i + 1].strip()
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no URL after {marker!r} in {lines} (exit code {proc.poll()})")


def _group(leader_of: int) -> tuple[int, set[int]]:
    """The process group of ``leader_of``'s child (the server) and its members (Linux /proc)."""
    children = Path(f"/proc/{leader_of}/task/{leader_of}/children").read_text().split()
    assert len(children) == 1, children
    pgid = os.getpgid(int(children[0]))
    return pgid, _members(pgid)


def _members(pgid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.add(int(entry.name))
    return found


def _stop_and_check(proc: subprocess.Popen, how: signal.Signals, port: int) -> None:
    pgid, members = _group(proc.pid)
    assert pgid != os.getpgid(proc.pid) and proc.pid not in members  # the server has a group of its own
    proc.send_signal(how)
    assert proc.wait(timeout=60) == 0
    assert _members(pgid) == set(), f"left running: {_members(pgid)} of {members}"
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens
    with socket.socket() as s:  # and a new server may bind it (as servers do, past TIME_WAIT connections)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


@pytest.mark.slow
def test_the_study_ends_in_the_store_as_it_ended(study_runs) -> None:
    client = _client(study_runs)
    experiment = client.get_experiment_by_name("study-s")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    found = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in found if r.data.tags.get("structsearch.role") == "study"]
    assert parent.info.status == "FINISHED"
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{study_runs / 's' / 'study.db'}")
    by_id = {r.info.run_id: r for r in found}
    pruned = [t for t in study.get_trials(states=(TrialState.PRUNED,)) if t.user_attrs.get("mlflow_run_id")]
    assert pruned, "the median pruner stopped no trial: the fixture no longer tests pruned runs"
    for trial in pruned:
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert (run.info.status, run.data.tags["structsearch.state"]) == ("FINISHED", "pruned")
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        if "duplicate_of" not in trial.user_attrs:
            run = by_id[trial.user_attrs["mlflow_run_id"]]
            assert (run.info.status, run.data.tags["structsearch.state"]) == ("FINISHED", "completed")


@pytest.mark.slow
def test_ui_prints_and_opens_the_compare_page_of_the_best_runs_and_sigterm_stops_the_server(
    study_runs, tmp_path
) -> None:
    port, opened = _free_port(), tmp_path / "opened.txt"
    # webbrowser runs $BROWSER with the URL for %s: a "browser" that writes down what it was given.
    browser = f"{sys.executable} -c 'import sys; open(sys.argv[1], \"w\").write(sys.argv[2])' {opened} %s"
    argv = ["ui", "--runs-dir", str(study_runs), "--port", str(port), "--top", "3", "--open"]
    proc, lines = _start(*argv, BROWSER=browser)
    url = _url_after(lines, "best runs compared", proc)
    try:
        deadline = time.time() + 30
        while not (opened.exists() and opened.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        assert opened.read_text() == url
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
            assert reply.status == 200
        shown = _read_like_mlflow(url)
        client = _client(study_runs)
        experiment = client.get_experiment_by_name("study-s")
        assert shown["path"] == "/compare-runs" and shown["experiments"] == [experiment.experiment_id]
        # The best 3 by the objective, as the store has them: completed trial runs, struct_bic maximized.
        runs = client.search_runs([experiment.experiment_id], "tags.`structsearch.state` = 'completed'")
        value = {r.info.run_id: r.data.metrics["objective/struct_bic"] for r in runs}
        ids = shown["runs"]
        assert len(ids) == len(set(ids)) == 3 and set(ids) <= set(value)
        assert [value[i] for i in ids] == sorted((value[i] for i in ids), reverse=True)
        assert all(value[other] <= value[ids[-1]] for other in set(value) - set(ids))
    finally:
        _stop_and_check(proc, signal.SIGTERM, port)


@pytest.mark.slow
def test_dashboard_reads_our_storage_and_ctrl_c_stops_it(study_runs) -> None:
    pytest.importorskip("optuna_dashboard")
    storage = f"sqlite:///{study_runs / 's' / 'study.db'}"
    tables = sqlalchemy.inspect(sqlalchemy.create_engine(storage)).get_table_names()
    assert {"structsearch_claims", "structsearch_workers"} <= set(tables)  # our tables beside Optuna's
    port = _free_port()
    proc, lines = _start("dashboard", "--runs-dir", str(study_runs), "--study", "s", "--port", str(port))
    url = _url_after(lines, "study s", proc)
    try:
        study_id = url.rsplit("/", 1)[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}", timeout=30) as reply:
            shown = json.load(reply)
        study = optuna.load_study(study_name="s", storage=storage)
        assert shown["name"] == "s" and len(shown["trials"]) == len(study.trials)
        states = {t["number"]: t["state"] for t in shown["trials"]}
        assert states == {t.number: t.state.name.capitalize() for t in study.trials}
    finally:
        _stop_and_check(proc, signal.SIGINT, port)
