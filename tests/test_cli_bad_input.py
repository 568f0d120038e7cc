"""Every user mistake exits 2 with one line on stderr naming the bad value, creates nothing, and
never shows a traceback: one table over every command."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from structsearch.cli import main
from tests.fs import read_only

DEADLINE_S = 30  # a refusal is quick: no minutes of retries against a server that is down


class Env:
    """What a case's command line refers to, all under ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.runs = tmp, tmp / "runs"
        self._sockets: list[socket.socket] = []
        self._read_only = contextlib.ExitStack()

    def optimize(self, *extra: str) -> list[str]:
        fast = ["--dataset", "shapes", "--preset", "tiny", "--steps", "1", "--n-eval", "100", "--trials", "1"]
        return ["optimize", *fast, "--tracking", "none", "--runs-dir", str(self.runs), *extra]

    def train(self, *extra: str) -> list[str]:
        fast = ["--dataset", "shapes", "--preset", "tiny", "--steps", "1", "--n-eval", "100"]
        return ["train", *fast, "--runs-dir", str(self.runs), "--out", str(self.runs / "r"), *extra]

    def file(self, name: str, content: bytes | str) -> str:
        path = self.tmp / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def run_folder(self, config: str, record: str | None = None) -> str:
        """A run folder whose config.json holds ``config`` (and a checkpoint, never reached)."""
        folder = self.tmp / "run"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(config)
        (folder / "graph.json").write_text('{"codes": ["cont", "cont", "cont"], "noise_dim": 0, "edges": []}\n')
        (folder / "checkpoint.pt").write_bytes(b"never read")
        if record is not None:
            (folder / "run.json").write_text(record)
        return str(folder)

    def busy_port(self) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        self._sockets.append(sock)
        return str(sock.getsockname()[1])

    def read_only(self, path: str | Path) -> str:
        """``path`` (made if missing) and everything in it unwritable until ``close`` (tests/fs.py)."""
        self._read_only.enter_context(read_only(Path(path)))
        return str(path)

    def read_only_study(self) -> str:
        """The storage URL of a real study (its config stored, no trial run: what `worker` joins)
        whose runs folder, ``ro``, is then made unwritable."""
        from structsearch.study import SearchConfig, open_study

        cfg = SearchConfig(study="s", runs_dir=str(self.tmp / "ro"))
        open_study(cfg)
        self.read_only(self.tmp / "ro")
        return cfg.storage_url()

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._read_only.close()


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[Env], list[str]]
    phrase: str
    skip: str | None = None


GRAPH = '{{"codes": ["cont", "cont", "cont"], "noise_dim": {}, "edges": ["c1->q1"]}}'
NO_GPU = "this machine has a CUDA GPU" if torch.cuda.is_available() else None
NAME_RULE = "[A-Za-z0-9._-]{1,100}"

CASES = [
    # --storage
    Case("storage-not-a-url", lambda e: e.optimize("--storage", "foo"), "storage URL 'foo' is not a database URL"),
    Case("storage-one-slash", lambda e: e.optimize("--storage", "sqlite:/x"), "storage URL 'sqlite:/x' is not"),
    Case(
        "storage-postgresql-no-driver",
        lambda e: e.optimize("--storage", "postgresql+psycopg2://u@h/db"),  # the [test] extra installs psycopg 3 only
        "pip install psycopg2-binary",
    ),
    Case("storage-unknown-database", lambda e: e.optimize("--storage", "oracle2://h/db"), "unknown database 'oracle2'"),
    Case(
        "storage-sqlite-missing-folder",
        lambda e: e.optimize("--storage", f"sqlite:///{e.tmp}/missing/dir/study.db"),
        "missing/dir does not exist",
    ),
    Case("worker-storage-not-a-url", lambda e: ["worker", "--study", "s", "--storage", "foo"], "storage URL 'foo'"),
    Case(
        "worker-missing-sqlite-study",
        lambda e: ["worker", "--study", "s", "--storage", f"sqlite:///{e.tmp}/none.db"],
        "none.db does not exist",
    ),
    # --tracking
    Case("tracking-not-a-uri", lambda e: e.train("--tracking", "foo"), "tracking URI 'foo'"),
    Case("tracking-one-slash", lambda e: e.train("--tracking", "sqlite:/x"), "tracking URI 'sqlite:/x' is not"),
    Case("tracking-unknown-scheme", lambda e: e.optimize("--tracking", "ftp://h/x"), "unsupported scheme 'ftp'"),
    Case(
        "tracking-sqlite-missing-folder",
        lambda e: e.train("--tracking", f"sqlite:///{e.tmp}/missing/dir/mlflow.db"),
        "missing/dir does not exist",
    ),
    Case("tracking-server-down", lambda e: e.train("--tracking", "http://127.0.0.1:9"), "does not answer"),
    # graph files
    Case("graph-noise-null", lambda e: ["graph", e.file("g.json", GRAPH.format("null"))], '"noise_dim" must be'),
    Case("graph-noise-1e400", lambda e: ["graph", e.file("g.json", GRAPH.format("1e400"))], '"noise_dim" must be'),
    Case(
        "graph-codes-not-strings",
        lambda e: ["graph", e.file("g.json", '{"codes": [1, 2], "edges": []}')],
        '"codes" must be',
    ),
    Case("graph-not-utf8", lambda e: ["graph", e.file("g.json", b'\xff\xfe{"edges": []}')], "is not UTF-8 text"),
    Case("graph-empty-json", lambda e: ["graph", e.file("g.json", "")], "g.json' is empty"),
    Case("train-graph-empty-json", lambda e: e.train("--graph", e.file("g.json", "\n")), "g.json' is empty"),
    Case("struct-pool-decay-one", lambda e: e.train("--struct-pool-decay", "1"), "struct_pool_decay must be in (0, 1)"),
    Case("struct-fit-unknown", lambda e: e.train("--struct-fit", "pool"), "invalid choice: 'pool'"),
    Case(
        "stack-struct-fit-pooled",
        lambda e: e.optimize("--stack", "2", "--struct-fit", "pooled"),
        "struct_fit='pooled': a pooled R_G's pool is not stacked",
    ),
    # devices
    Case("gpus-without-cuda", lambda e: e.optimize("--gpus", "0"), "torch sees no CUDA GPU", skip=NO_GPU),
    Case("gpus-not-numbers", lambda e: e.optimize("--gpus", "first"), "--gpus 'first'"),
    # ui
    Case("ui-port-out-of-range", lambda e: ["ui", "--runs-dir", str(e.runs), "--port", "99999"], "1-65535"),
    Case("ui-port-busy", lambda e: ["ui", "--runs-dir", str(e.runs), "--port", e.busy_port()], "is in use"),
    # evaluate
    Case("evaluate-scale-zero", lambda e: ["evaluate", e.run_folder("{}"), "--scale", "0"], "--scale: expected"),
    Case("evaluate-scale-negative", lambda e: ["evaluate", e.run_folder("{}"), "--scale", "-1"], "--scale: expected"),
    # export
    Case("export-top-negative", lambda e: ["export", "--study", "s", "--top", "-1"], "--top: expected an integer >= 1"),
    Case("export-missing-study", lambda e: ["export", "--study", "nope", "--runs-dir", str(e.runs)], "no study 'nope'"),
    # a run folder's config.json
    Case(
        "resume-config-not-json",
        lambda e: ["train", "--resume", "--out", e.run_folder("{not json"), "--tracking", "none"],
        "is not a valid structsearch run config",
    ),
    Case(
        "resume-config-not-an-object",
        lambda e: ["train", "--resume", "--out", e.run_folder("[]"), "--tracking", "none"],
        "is not a valid structsearch run config",
    ),
    Case(
        "evaluate-config-not-json",
        lambda e: ["evaluate", e.run_folder("{not json"), "--tracking", "none"],
        "is not a valid structsearch run config",
    ),
    Case(
        "evaluate-config-unknown-field",
        lambda e: ["evaluate", e.run_folder(json.dumps({"dataset": "shapes", "bogus": 1})), "--tracking", "none"],
        "unknown field 'bogus'",
    ),
    Case(
        "evaluate-run-record-not-json",
        lambda e: ["evaluate", e.run_folder(json.dumps({"dataset": "shapes"}), record="{oops")],
        "run.json is not a valid run record",
    ),
    Case(
        "resume-run-record-not-json",
        lambda e: [
            "train",
            "--resume",
            "--out",
            e.run_folder('{"dataset": "shapes"}', record="[1]"),
            "--tracking",
            "none",
        ],
        "run.json is not a valid run record",
    ),
    # --trials
    Case("trials-zero", lambda e: e.optimize("--trials", "0"), "--trials: expected an integer >= 1, got '0'"),
    Case("trials-negative", lambda e: e.optimize("--trials", "-3"), "--trials: expected an integer >= 1, got '-3'"),
    Case("trials-not-integer", lambda e: e.optimize("--trials", "2.5"), "--trials: expected an integer >= 1"),
    Case(
        "worker-trials-zero",
        lambda e: ["worker", "--study", "s", "--storage", "sqlite:///x.db", "--trials", "0"],
        "--trials: expected an integer >= 1",
    ),
    # study names become folders
    Case("study-parent-escape", lambda e: e.optimize("--study", "../escape"), NAME_RULE),
    Case("study-absolute-path", lambda e: e.optimize("--study", f"{e.tmp}/abs"), NAME_RULE),
    Case("study-subfolder", lambda e: e.optimize("--study", "a/b"), NAME_RULE),
    Case("study-newline", lambda e: e.optimize("--study", "a\nb"), NAME_RULE),
    Case("study-empty", lambda e: e.optimize("--study", ""), NAME_RULE),
    Case("study-dot-dot", lambda e: e.optimize("--study", ".."), NAME_RULE),
    Case("study-300-characters", lambda e: e.optimize("--study", "s" * 300), NAME_RULE),
    Case("export-study-escape", lambda e: ["export", "--study", "../x", "--runs-dir", str(e.runs)], NAME_RULE),
    Case("worker-study-escape", lambda e: ["worker", "--study", "../x", "--storage", "sqlite:///x.db"], NAME_RULE),
    # outputs never create missing folders
    Case(
        "graph-out-missing-folder",
        lambda e: ["graph", "independent", "--out", f"{e.tmp}/missing/dir/g.png"],
        "missing/dir does not exist",
    ),
    Case(
        "graph-json-missing-folder",
        lambda e: ["graph", "independent", "--json", f"{e.tmp}/missing/g.json"],
        "missing does not exist",
    ),
    Case(
        "graph-dot-missing-folder",
        lambda e: ["graph", "independent", "--dot", f"{e.tmp}/missing/g.dot"],
        "missing does not exist",
    ),
    Case(
        "train-out-missing-folder",
        lambda e: ["train", "--out", f"{e.tmp}/missing/dir/run", "--runs-dir", str(e.runs), "--tracking", "none"],
        "missing/dir does not exist",
    ),
    Case(
        "export-out-missing-folder",
        lambda e: ["export", "--study", "s", "--runs-dir", str(e.runs), "--out", f"{e.tmp}/missing/dir/x"],
        "missing/dir does not exist",
    ),
    Case("runs-dir-missing-folder", lambda e: e.train("--runs-dir", f"{e.tmp}/missing/runs"), "missing does not exist"),
    # folders and databases that cannot be written: refused before any work (tests/fs.py says how)
    Case(
        "optimize-runs-dir-read-only",
        lambda e: e.optimize("--runs-dir", e.read_only(e.tmp / "ro")),
        "/ro: cannot write in it: ",
    ),
    Case(
        "optimize-storage-read-only",
        lambda e: e.optimize("--storage", f"sqlite:///{e.read_only(e.tmp / 'ro')}/study.db"),
        "/ro/study.db: cannot write in ",
    ),
    Case(
        "train-runs-dir-read-only",
        lambda e: ["train", "--dataset", "shapes", "--runs-dir", e.read_only(e.tmp / "ro"), "--tracking", "none"],
        "/ro: cannot write in it: ",
    ),
    Case(
        "train-out-read-only",
        lambda e: e.train("--out", f"{e.read_only(e.tmp / 'ro')}/run", "--tracking", "none"),
        "/ro/run: cannot create it in ",
    ),
    Case(
        "tracking-sqlite-read-only",
        lambda e: e.train("--tracking", f"sqlite:///{e.read_only(e.tmp / 'ro')}/mlflow.db"),
        "tracking URI sqlite:///",
    ),
    Case(
        "export-out-read-only",
        lambda e: ["export", "--study", "s", "--runs-dir", str(e.runs), "--out", f"{e.read_only(e.tmp / 'ro')}/x"],
        "/ro/x: cannot create it in ",
    ),
    Case(
        "evaluate-run-folder-read-only",
        lambda e: ["evaluate", e.read_only(e.run_folder(json.dumps({"dataset": "shapes"}))), "--tracking", "none"],
        "/run: cannot write in it: ",
    ),
    Case(
        "worker-runs-dir-read-only",
        lambda e: ["worker", "--study", "s", "--storage", e.read_only_study()],
        "/ro: cannot write in it: ",
    ),
]


def _files(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.fixture
def deadline():
    def expired(signum, frame):
        raise TimeoutError(f"no answer within {DEADLINE_S} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(DEADLINE_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_exits_2_with_one_line_and_creates_nothing(case: Case, tmp_path, capsys, monkeypatch, deadline):
    if case.skip:
        pytest.skip(case.skip)
    monkeypatch.chdir(tmp_path)  # relative defaults (runs/, x.db) land in tmp_path too
    env = Env(tmp_path)
    try:
        argv = case.argv(env)
        before = _files(tmp_path)
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err
    finally:
        env.close()
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert code == 2, err
    assert len(lines) == 1, err
    assert case.phrase in lines[0], lines[0]
    assert _files(tmp_path) == before, "a refused command created files"
