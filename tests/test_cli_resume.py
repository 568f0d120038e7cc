"""`train --resume` and `evaluate` on a run folder: the folder's own graph, a changed config or a bad
checkpoint refused in one line, and a refused command leaves the folder as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gan.latents import get_spec
from structsearch.cli import main

ARGS = ["--dataset", "shapes", "--preset", "tiny", "--n-eval", "100", "--tracking", "none"]
GRAPH = {"edges": ["c1->q1", "c2->q2", "c3->q3", "q1->q3"]}


class Payload:
    """Unpickled, this creates ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run folder trained 5 steps on the graph file ``g.json``, given by a relative path."""
    root = tmp_path_factory.mktemp("trained")
    (root / "g.json").write_text(json.dumps(GRAPH))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert main(["train", *ARGS, "--graph", "g.json", "--steps", "5", "--out", "run"]) == 0
    assert json.loads((root / "run" / "config.json").read_text())["graph"] == "g.json"
    return root / "run"


@pytest.fixture
def run(trained, tmp_path, monkeypatch) -> Path:
    """A copy of the trained folder; the current directory holds a changed ``g.json``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "g.json").write_text(json.dumps({"edges": ["c1->q1"]}))
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _resume(run: Path, *extra: str) -> int:
    return main(["train", *ARGS, "--resume", "--out", str(run), *extra])


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


def test_resume_trains_the_folders_own_graph_whatever_the_config_names(run, tmp_path, monkeypatch) -> None:
    graph = (run / "graph.json").read_text()
    assert _resume(run, "--steps", "10") == 0  # g.json here has changed since
    assert (run / "graph.json").read_text() == graph
    monkeypatch.chdir(tmp_path.parent)  # where g.json does not exist at all
    assert _resume(run, "--steps", "15") == 0
    assert (run / "graph.json").read_text() == graph
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 15
    assert json.loads((run / "config.json").read_text())["train"]["n_steps"] == 15


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lambda-struct", "0.5"], "--resume: --lambda-struct was 0.1 in "),
        (["--graph", "collider"], '--graph was "g.json" in '),
        (["--batch-size", "32", "--width", "0.5"], "--batch-size was 16 in "),
    ],
)
def test_resume_refuses_a_changed_config_and_leaves_the_folder_as_it_was(run, capsys, flags, message) -> None:
    before = _files(run)
    assert _resume(run, *flags) == 2
    line = _one_line(capsys)
    assert message in line and "a resume may change only --checkpoint-every" in line and "--out NEW_FOLDER" in line
    assert _files(run) == before


def test_resume_may_change_the_steps_intervals_device_and_time_limit(run) -> None:
    flags = ["--steps", "8", "--log-every", "4", "--checkpoint-every", "4", "--device", "cpu", "--max-minutes", "5"]
    assert _resume(run, *flags) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 8


def test_resume_takes_a_latent_presets_name_for_the_text_the_folder_recorded(run, capsys) -> None:
    recorded = json.loads((run / "config.json").read_text())["codes"]
    assert recorded != "shapes" and recorded == get_spec("shapes").text()
    assert _resume(run, "--codes", "shapes", "--steps", "6") == 0  # the same spec, named
    capsys.readouterr()
    assert _resume(run, "--codes", "cont,cont,cont;noise=uniform8", "--steps", "7") == 2  # another one
    assert "--codes was" in _one_line(capsys)


@pytest.mark.parametrize("command", ["resume", "evaluate"])
@pytest.mark.parametrize("kind", ["empty", "truncated", "malicious"])
def test_a_bad_checkpoint_is_one_line_runs_nothing_and_changes_nothing(run, capsys, tmp_path, command, kind) -> None:
    marker = tmp_path / "ran"
    checkpoint = run / "checkpoint.pt"
    if kind == "empty":
        checkpoint.write_bytes(b"")
    elif kind == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    else:
        torch.save({"step": 5, "G": Payload(marker)}, checkpoint)
    before = _files(run)
    argv = ["evaluate", str(run), "--metrics", "none", "--tracking", "none"] if command == "evaluate" else None
    assert (main(argv) if argv else _resume(run, "--steps", "10")) == 2
    line = _one_line(capsys)
    assert f"{checkpoint} is not a valid structsearch checkpoint" in line and "weights_only" not in line
    assert not marker.exists()
    assert _files(run) == before  # config.json, graph.json and the rest untouched
