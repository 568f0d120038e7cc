"""An existing study: a rerun with other options is refused, export writes a trainable JSON beside
every picture. Real SQLite storage, tiny nets, one trial."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from structsearch.cli import main

FAST = ["--dataset", "shapes", "--preset", "tiny", "--steps", "2", "--n-eval", "100", "--sampler", "random"]


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A runs folder holding study ``s`` with one finished trial."""
    runs = tmp_path_factory.mktemp("made") / "runs"
    argv = ["optimize", *FAST, "--study", "s", "--trials", "1", "--tracking", "none", "--runs-dir", str(runs)]
    assert main(argv) == 0
    return runs


@pytest.fixture
def runs(made, tmp_path) -> Path:
    return Path(shutil.copytree(made, tmp_path / "runs"))


def _optimize(runs: Path, *extra: str) -> int:
    return main(["optimize", *FAST, "--study", "s", "--tracking", "none", "--runs-dir", str(runs), *extra])


def _trials(runs: Path) -> list:
    return optuna.load_study(study_name="s", storage=f"sqlite:///{runs / 's' / 'study.db'}").get_trials()


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    return lines[0]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--objective", "shd"],
            'study \'s\': --objective was ["struct_bic"] when it was made, ["shd"] in this command',
        ),
        (["--sampler", "tpe"], '--sampler was "random" when it was made, "tpe" in this command'),
        (
            ["--lambda-struct", "0.5", "--seed", "3"],
            "--seed was 0 when it was made, 3 in this command (and 1 more: --lambda-struct)",
        ),
        (["--shapes-graph", "chain"], '--shapes-graph was "collider"'),
    ],
)
def test_a_rerun_with_other_options_is_refused_and_trains_nothing(runs, capsys, flags, message) -> None:
    assert _optimize(runs, "--trials", "2", *flags) == 2
    line = _one_line(capsys)
    assert message in line and "start a new study with --study NEW_NAME" in line
    assert (
        "a rerun may change only --data-dir, --device, --log-every, --runs-dir, --storage, --tracking, --trials" in line
    )
    assert len(_trials(runs)) == 1


def test_a_rerun_on_another_dataset_is_refused(runs, capsys, mnist_dir) -> None:
    assert _optimize(runs, "--trials", "2", "--dataset", "mnist", "--data-dir", str(mnist_dir)) == 2
    assert '--dataset was "shapes" when it was made, "mnist" in this command' in _one_line(capsys)
    assert len(_trials(runs)) == 1


def test_a_rerun_may_change_the_budget_device_store_and_logging(runs) -> None:
    storage = f"sqlite:///{runs / 's' / 'study.db'}"
    flags = ["--trials", "2", "--device", "cpu", "--storage", storage, "--log-every", "1", "--heartbeat-interval", "5"]
    assert _optimize(runs, *flags) == 0
    assert len([t for t in _trials(runs) if t.state == TrialState.COMPLETE]) == 2


@pytest.mark.parametrize("fmt", ["png", "dot"])
def test_export_writes_the_json_beside_every_picture_and_it_trains(runs, tmp_path, fmt) -> None:
    assert main(["export", "--study", "s", "--runs-dir", str(runs), "--format", fmt]) == 0
    export = runs / "s" / "export"
    assert sorted(p.name for p in export.iterdir()) == sorted([f"best-1.{fmt}", "best-1.json"])
    assert json.loads((export / "best-1.json").read_text())["edges"][0] == "c1->q1"
    out = tmp_path / "retrain"
    argv = ["train", *FAST[:4], "--steps", "1", "--n-eval", "100", "--tracking", "none", "--out", str(out)]
    assert main([*argv, "--graph", str(export / "best-1.json")]) == 0  # the README's follow-up
    assert (out / "checkpoint.pt").exists()
