"""Experiment tracking with MLflow (the project's only mlflow import).

Runs are addressed by id through ``MlflowClient`` (no global "active run"), so a study's parent
run and its trials' child runs can live in different processes and machines: a child names its
parent with the ``mlflow.parentRunId`` tag, which is what the MLflow UI nests by.

The default store is ``sqlite:///<project>/runs/mlflow.db`` (MLflow's file store is deprecated),
and artifacts go to ``runs/mlartifacts`` next to it, set explicitly when the experiment is
created so nothing depends on the current directory.

What the MLflow UI shows (3.17):

* A study's experiment is tagged ``mlflow.experimentKind = custom_model_development``, the kind the
  UI's experiment-type selector calls model training. The 3.17 UI itself decides between its GenAI
  pages (Traces, an assistant) and its model-training pages (Runs) by a ``workflowType`` switch
  (the URL's ``workflowType=machine_learning``, else the browser's last choice, GenAI at first), so
  the URLs :func:`experiment_url` and :func:`compare_url` build carry ``workflowType`` too.
* A study's parent run is RUNNING while a process works on the study and FINISHED when the study
  ends, KILLED on Ctrl-C, FAILED on an error (:func:`study_status`).
* A trial run carries ``structsearch.state`` (completed, pruned, diverged). A pruned trial ends
  FINISHED, not KILLED: the pruner stopped it on purpose and its scores at that step are real, while
  MLflow's KILLED reads as "someone killed it" (:func:`mark_state`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import socket
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

NONE = "none"
# Schemes MLflow tracks to (its file store, a bare path, is deprecated and refused).
SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
ACCEPTED = "expected sqlite:///PATH/mlflow.db, http(s)://HOST:PORT, a database URL, or 'none'"
PROBE_TIMEOUT_S = 5  # a server that does not answer is refused at once, not after MLflow's retries
STUDY_PREFIX = "study-"  # a study's experiment is study-<name>
# The experiment type MLflow 3's UI offers for classic training (its selector writes this tag).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
WORKFLOW = "workflowType=machine_learning"  # the 3.17 UI's switch from its GenAI pages to the Runs pages
STATE_TAG = "structsearch.state"
STATE_STATUS = {"completed": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED"}


class Tracker(Protocol):
    def start_run(
        self,
        name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> str | None: ...
    def resume_run(self, run_id: str) -> str | None: ...
    def log_metrics(self, run_id: str | None, metrics: Mapping[str, float], step: int | None = None) -> None: ...
    def log_params(self, run_id: str | None, params: Mapping[str, Any]) -> None: ...
    def set_tags(self, run_id: str | None, tags: Mapping[str, str]) -> None: ...
    def log_artifact(self, run_id: str | None, path: str | os.PathLike, artifact_path: str | None = None) -> None: ...
    def end_run(self, run_id: str | None, status: str = "FINISHED") -> None: ...


class NullTracker:
    """``--tracking none``: every call does nothing."""

    uri = NONE

    def start_run(self, name, params, tags=None, parent_run_id=None):
        return None

    def resume_run(self, run_id):
        return None

    def log_metrics(self, run_id, metrics, step=None):
        pass

    def log_params(self, run_id, params):
        pass

    def set_tags(self, run_id, tags):
        pass

    def log_artifact(self, run_id, path, artifact_path=None):
        pass

    def end_run(self, run_id, status="FINISHED"):
        pass


class MlflowTracker:
    """One MLflow experiment in one tracking store."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path | None = None) -> None:
        import mlflow  # slow to import: only when tracking is on
        from mlflow.tracking import MlflowClient

        self.uri = uri
        mlflow.set_tracking_uri(uri)
        self.client = MlflowClient(tracking_uri=uri)
        with _store_lock(uri):  # the first client of a new SQLite store creates its tables
            found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = artifact_root.resolve().as_uri() if artifact_root else None
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=location, tags=EXPERIMENT_KIND
                )
            except Exception:  # another worker created it first
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                self.experiment_id = found.experiment_id
        else:
            self.experiment_id = found.experiment_id
            if not set(EXPERIMENT_KIND) <= set(found.tags):  # an experiment made before the tag was set
                for key, value in EXPERIMENT_KIND.items():
                    self.client.set_experiment_tag(self.experiment_id, key, value)

    def start_run(self, name, params, tags=None, parent_run_id=None):
        tags = dict(tags or {})
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def resume_run(self, run_id):
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def log_metrics(self, run_id, metrics, step=None):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None and math.isfinite(float(v))
        ]
        if run_id and batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_params(self, run_id, params):
        from mlflow.entities import Param

        existing = set(self.client.get_run(run_id).data.params)
        batch = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in existing]
        for i in range(0, len(batch), 100):  # MLflow caps a batch at 100 params
            self.client.log_batch(run_id, params=batch[i : i + 100])

    def set_tags(self, run_id, tags):
        for k, v in tags.items():
            self.client.set_tag(run_id, k, str(v))

    def log_artifact(self, run_id, path, artifact_path=None):
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        elif path.exists():
            self.client.log_artifact(run_id, str(path), artifact_path)

    def end_run(self, run_id, status="FINISHED"):
        if run_id:
            self.client.set_terminated(run_id, status=status)

    def find_runs(self, filter_string: str) -> list:
        return self.client.search_runs([self.experiment_id], filter_string=filter_string)


@contextlib.contextmanager
def _store_lock(uri: str):
    """Serialize processes that open a SQLite store: MLflow's schema migration is not safe to run
    twice at once (two workers starting together fail with an alembic CommandError)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    lock_path = Path(uri.removeprefix("sqlite:///") + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mark_best(
    tracker: Tracker, run_id: str | None, previous: str | None, parent: str | None, summary: Mapping[str, str]
) -> None:
    """Tag ``run_id`` as the study's best (``structsearch.best=1``), untag the ``previous`` best, and
    put ``summary`` (best graph, best trial) on the study's ``parent`` run."""
    if previous and previous != run_id:
        tracker.set_tags(previous, {"structsearch.best": "0"})
    if run_id:
        tracker.set_tags(run_id, {"structsearch.best": "1"})
    if parent:
        tracker.set_tags(parent, summary)


def mark_state(tracker: Tracker, run_id: str | None, state: str) -> None:
    """Tag a trial's run with how it ended (``structsearch.state``: completed, pruned or diverged)
    and give it the MLflow status that reads right (:data:`STATE_STATUS`)."""
    if run_id:
        tracker.set_tags(run_id, {STATE_TAG: state})
        tracker.end_run(run_id, STATE_STATUS[state])


@contextlib.contextmanager
def study_status(tracker: Tracker, run_id: str | None) -> Iterator[None]:
    """The study's parent run is RUNNING inside the block, then FINISHED; KILLED when the block is
    interrupted (Ctrl-C, ``sys.exit``), FAILED when it raises. Several workers each wrap their own
    loop, so the status is that of the last one to stop."""
    if not run_id:
        yield
        return
    tracker.resume_run(run_id)
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        tracker.end_run(run_id, "KILLED")
        raise
    except BaseException:
        tracker.end_run(run_id, "FAILED")
        raise
    tracker.end_run(run_id, "FINISHED")


# ---- the UI's pages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRuns:
    """A study as the tracking store holds it: its experiment, its parent run, the Optuna storage."""

    study: str
    experiment_id: str
    parent_run_id: str | None
    storage: str | None  # the parent run's ``storage`` param


def find_study(uri: str, study: str | None = None) -> StudyRuns | None:
    """The experiment ``study-<study>`` in the store at ``uri``; with no name, the study whose
    experiment was updated last. None when there is no such experiment."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # nothing tracked yet; looking never creates a store
    client = MlflowClient(tracking_uri=uri)
    with _store_lock(uri):  # the first client of a new SQLite store creates its tables
        experiments = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000)
    studies = [e for e in experiments if e.name.startswith(STUDY_PREFIX)]
    if study is not None:
        found = next((e for e in studies if e.name == STUDY_PREFIX + study), None)
    else:
        found = max(studies, key=lambda e: e.last_update_time or e.creation_time or 0, default=None)
    if found is None:
        return None
    role = "tags.`structsearch.role` = 'study'"
    parents = client.search_runs([found.experiment_id], filter_string=role, max_results=1)
    parent = parents[0] if parents else None
    return StudyRuns(
        found.name.removeprefix(STUDY_PREFIX),
        found.experiment_id,
        parent.info.run_id if parent else None,
        parent.data.params.get("storage") if parent else None,
    )


def experiment_url(base: str, experiment_id: str) -> str:
    """The experiment's Runs page in the MLflow UI at ``base`` (http://HOST:PORT)."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{WORKFLOW}"


def compare_url(base: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's compare-runs page for ``run_ids``: the route the 3.17 UI builds itself
    (``getCompareRunPageRoute``: ``#/compare-runs?runs=<JSON list>&experiments=<JSON list>``), whose
    reader parses ``runs`` as the first key. The JSON is percent-encoded, which the reader undoes, so
    the URL survives a terminal and a shell."""

    def encoded(value: list[str]) -> str:
        return urllib.parse.quote(json.dumps(value, separators=(",", ":")), safe="")

    query = f"runs={encoded(list(run_ids))}&experiments={encoded([experiment_id])}&{WORKFLOW}"
    return f"{base.rstrip('/')}/#/compare-runs?{query}"


def default_uri(runs_dir: Path) -> str:
    """``sqlite:///<absolute runs dir>/mlflow.db``."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(runs_dir / 'mlflow.db').resolve()}"


def make_tracker(uri: str | None, experiment: str, runs_dir: Path) -> Tracker:
    """``none`` turns tracking off; None means the project's default SQLite store under ``runs_dir``."""
    if uri == NONE:
        return NullTracker()
    if uri is None:
        uri = default_uri(runs_dir)
    check_uri(uri)
    # Artifacts beside a SQLite store; a server or database URL keeps its own artifact root.
    artifact_root = (
        Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" if uri.startswith("sqlite:///") else None
    )
    from mlflow.exceptions import MlflowException

    try:
        return MlflowTracker(uri, experiment, artifact_root)
    except MlflowException as err:  # a store that answers but refuses: one line, not MLflow's traceback
        raise ValueError(f"tracking URI {uri!r}: {str(err).strip().splitlines()[0][:300]}") from None


def check_uri(uri: str) -> str:
    """Refuse a tracking URI MLflow cannot use, before anything is created: a path (the deprecated
    file store), an unknown scheme, a SQLite file in a missing folder, a database without its
    driver, or a server that does not answer within ``PROBE_TIMEOUT_S``. MLflow's own retries
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, 7 with backoff, about 4 minutes) stay as they are for a
    run in progress: there they ride out rate limits and server restarts."""
    from structsearch.inputs import check_database_url

    if uri == NONE:
        return uri
    scheme, sep, _ = uri.partition("://")
    if scheme == "file" or not sep and (uri.startswith("file:") or ":" not in uri):
        raise ValueError(
            f"tracking URI {uri!r} is MLflow's deprecated file store; use e.g. sqlite:///runs/mlflow.db or 'none'"
        )
    if not sep:
        raise ValueError(f"tracking URI {uri!r} is not a URI MLflow can track to; {ACCEPTED}")
    base = scheme.split("+")[0].lower()
    if base not in SCHEMES:
        raise ValueError(f"tracking URI {uri!r}: unsupported scheme {base!r}; {ACCEPTED}")
    if base in ("http", "https"):
        _probe(uri)
    elif base != "databricks":
        check_database_url(uri, "tracking URI")
    return uri


def _probe(uri: str) -> None:
    """Connect once to the server of an http(s) URI, with a short timeout."""
    parts = urllib.parse.urlsplit(uri)
    try:
        host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a port that is not a number, or out of range
        host = port = None
    if not host or not port:
        raise ValueError(f"tracking URI {uri!r} names no valid host and port; expected e.g. http://127.0.0.1:5000")
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        raise ValueError(
            f"tracking server {uri} does not answer ({err.strerror or err}); start it "
            f"(`structsearch ui --port {port}` serves one on this machine) or pass --tracking none"
        ) from None
