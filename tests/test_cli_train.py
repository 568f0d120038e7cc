"""End to end: `structsearch train` as a user runs it, tiny nets, tens of steps."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from structsearch.cli import main

pytestmark = pytest.mark.slow


def _only_run(db):
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    run = runs[0]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)} | {
        a.path for a in client.list_artifacts(run.info.run_id, "traversals")
    }
    return client, run, artifacts


def test_train_on_shapes_tracks_everything_and_resumes(tmp_path, capsys) -> None:
    runs, out = tmp_path / "runs", tmp_path / "runs" / "collider"
    argv = [
        "train",
        "--dataset",
        "shapes",
        "--graph",
        "collider",
        "--preset",
        "tiny",
        "--runs-dir",
        str(runs),
        "--out",
        str(out),
    ]
    assert main([*argv, "--steps", "10"]) == 0
    printed = capsys.readouterr().out
    assert "struct_bic" in printed and f"open with  structsearch ui --runs-dir {runs}\n" in printed

    client, run, artifacts = _only_run(runs / "mlflow.db")
    assert run.data.params["graph"] == "c1->q1, c2->q2, c3->q3, q1->q3, q2->q3"
    assert run.data.params["edge/q1_q3"] == "1" and run.data.params["edge/c3_q3"] == "1"
    assert {"loss/d", "loss/g", "loss/info", "loss/struct"} <= set(run.data.metrics)
    scores = {k: v for k, v in run.data.metrics.items() if k.startswith("score/")}
    assert {"score/struct_bic", "score/agreement", "score/info"} <= set(scores)
    assert all(math.isfinite(v) for v in scores.values())
    assert {"graph.png", "graph.json", "config.json", "traversals/traversal_c1.png"} <= artifacts
    # The checkpoint is stored once, in the run folder; the MLflow run names it.
    assert "checkpoint.pt" not in artifacts
    checkpoint = out / "checkpoint.pt"
    assert run.data.tags["structsearch.checkpoint"] == str(checkpoint.resolve())
    assert run.data.tags["structsearch.checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert run.data.tags["structsearch.checkpoint_bytes"] == str(checkpoint.stat().st_size)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run.info.run_id, "loss/d")) == 2  # every log_every=5 steps

    # A killed run continues from its checkpoint, into the same MLflow run.
    assert main([*argv, "--resume", "--steps", "20"]) == 0
    _, resumed, _ = _only_run(runs / "mlflow.db")
    assert resumed.info.run_id == run.info.run_id
    assert resumed.data.tags["structsearch.checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert resumed.data.tags["structsearch.checkpoint_sha256"] != run.data.tags["structsearch.checkpoint_sha256"]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["step"] == 20
    assert json.loads((out / "scores.json").read_text())["step"] == 20

    # `evaluate` recomputes metrics from the checkpoint and logs them to the same MLflow run.
    assert main(["evaluate", str(out), "--metrics", "mig,shd", "--scale", "0.02", "--runs-dir", str(runs)]) == 0
    table = capsys.readouterr().out
    assert "mig" in table and "shd" in table and "time/mig" in table
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["step"] == 20 and 0 <= evaluation["scores"]["shd"] <= 3
    _, evaluated, _ = _only_run(runs / "mlflow.db")
    assert {"eval/mig", "eval/shd", "eval/struct_bic"} <= set(evaluated.data.metrics)
    assert main(["evaluate", str(out), "--metrics", "cat_acc_typo"]) == 2


def test_datasets_command_lists_every_dataset(capsys, mnist_dir) -> None:
    assert main(["datasets", "--data-dir", str(mnist_dir)]) == 0
    out = capsys.readouterr().out
    for name in ("mnist", "fashion-mnist", "dsprites", "shapes"):
        assert name in out
    assert str(mnist_dir) in out and "60,000" in out


def test_train_on_real_mnist(tmp_path, mnist_dir) -> None:
    runs = tmp_path / "runs"
    argv = ["train", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--graph", "independent", "--preset", "tiny"]
    assert main([*argv, "--runs-dir", str(runs), "--n-eval", "500"]) == 0
    _, run, artifacts = _only_run(runs / "mlflow.db")
    assert run.data.params["graph"] == "c1->q1, c2->q2, c3->q3"
    assert 0.0 <= run.data.metrics["score/cat_acc"] <= 1.0
    assert "traversals/traversal_c1.png" in artifacts


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "mnsit"], "unknown dataset 'mnsit'"),
        (["--graph", "q1->q3, q3->q1"], "cycle q1 -> q3 -> q1"),
        (["--graph", "c1->q1, q4->q1"], "unknown node 'q4'"),
        (["--steps", "-3"], "--steps must be >= 0, got -3"),
        (["--dataset", "mnist", "--data-dir", "/nonexistent", "--device", "cpu"], "--data-dir"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--max-minutes", "0"], "--max-minutes must be > 0, got 0.0"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, monkeypatch, args, message) -> None:
    from structsearch.datasets import download

    monkeypatch.setenv("HOME", str(tmp_path))  # no cached MNIST
    monkeypatch.setattr(download, "urlopen", _offline, raising=False)
    code = main(["train", "--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--tracking", "none", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--anchor-labels", "-0.5"],
            "--anchor-labels must be 0 (off), a fraction in (0, 1) or a whole count >= 1, got -0.5",
        ),
        (
            ["--anchor-labels", "2.5"],
            "--anchor-labels must be 0 (off), a fraction in (0, 1) or a whole count >= 1, got 2.5",
        ),
        (["--anchor-labels", "inf"], "a whole count >= 1, got inf"),
        (["--lambda-anchor", "-1"], "--lambda-anchor must be >= 0, got -1"),
        (["--anchor-labels", "20001"], "--anchor-labels 20001 asks for 20001 anchored images, but shapes has 20000"),
        (["--anchor-labels", "10", "--codes", "cat10,cat4"], "shapes anchors continuous codes among c1..c3"),
        (["--anchor-labels", "5", "--dataset", "mnist", "--codes", "mnist3"], "needs a categorical(10) code"),
    ],
)
def test_bad_anchors_exit_2_with_one_line_before_training(tmp_path, capsys, request, args, message) -> None:
    data = ["--data-dir", str(request.getfixturevalue("mnist_dir"))] if "mnist" in args else []
    argv = ["train", "--preset", "tiny", *data, "--out", str(tmp_path / "run"), "--tracking", "none", *args]
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("INFO ")]
    assert len(lines) == 1 and lines[0].startswith("structsearch train: error: ") and message in lines[0]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # nothing was trained


def _offline(*args, **kwargs):
    raise OSError("network is unreachable")


def test_a_run_resumes_with_its_own_codes_after_the_default_spec_changed(tmp_path, monkeypatch) -> None:
    from gan import latents

    out = tmp_path / "run"
    argv = ["train", "--dataset", "shapes", "--preset", "tiny", "--tracking", "none", "--out", str(out)]
    assert main([*argv, "--steps", "5"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["codes"] == latents.SPECS["shapes"].text()  # recorded at creation
    config["codes"] = None  # as runs made before codes were recorded
    (out / "config.json").write_text(json.dumps(config))
    monkeypatch.setitem(latents.SPECS, "shapes", latents.continuous_spec(3, 7))  # the default moves on
    assert main([*argv, "--resume", "--steps", "10"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 10


def test_a_time_limit_stops_scores_and_checkpoints_a_run_that_resumes(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--dataset", "shapes", "--preset", "tiny", "--tracking", "none", "--out", str(out)]
    assert main([*argv, "--steps", "20", "--max-minutes", "1e-9"]) == 0  # over at the first log (step 5)
    assert "limit was reached at step 5 of 20" in capsys.readouterr().out
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 5
    assert json.loads((out / "scores.json").read_text())["step"] == 5
    assert (out / "traversals" / "traversal_c1.png").exists()
    assert main([*argv, "--resume", "--steps", "20"]) == 0
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 20


def test_learn_structure_reads_an_anchored_run_and_compares_with_the_truth(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--dataset", "shapes", "--preset", "tiny", "--tracking", "none", "--out", str(out)]
    assert main([*argv, "--anchor-labels", "0.01", "--n-eval", "300"]) == 0
    assert json.loads((out / "anchors.json").read_text())["count"] == 200
    capsys.readouterr()
    for method in ("hill-climb", "pc"):
        assert main(["learn-structure", str(out), "--method", method]) == 0
        printed = capsys.readouterr().out
        assert f"method:     {method}" in printed and "Q's codes of 300 held-out real images" in printed
        assert "truth:      q1->q3, q2->q3; its class: q1->q3, q2->q3" in printed
        assert "equivalent: yes" in printed or "equivalent: no, not" in printed
        assert "anchors:    --anchor-labels 0.01: 200 images, codes c1, c2, c3, seed 0" in printed
        assert ("undirected:" in printed) == (method == "pc")
    # The anchors' own known values (200 rows, no network) find the collider's class whatever Q learned.
    assert main(["learn-structure", str(out), "--table", "anchors"]) == 0
    printed = capsys.readouterr().out
    assert "the known values of the 200 anchored training images (no network)" in printed
    assert "edges:      q1->q3, q2->q3" in printed and "equivalent: yes" in printed
    # Intervention pairs: every DAG ranked by the pair criterion on Q's codes of 300 real pairs.
    assert main(["learn-structure", str(out), "--table", "pairs"]) == 0
    printed = capsys.readouterr().out
    assert "Q's codes of 300 held-out real intervention pairs (x, x'), no factor values" in printed
    assert "method:     pair criterion (all 25 DAGs, structsearch/pairs.py)" in printed
    ranking = [float(line.split(". ")[1].split()[0]) for line in printed.splitlines() if " nats/pair " in line]
    assert len(ranking) == 5 and ranking == sorted(ranking, reverse=True)
    best = printed.split("edges:      ")[1].splitlines()[0]
    assert f"1. {ranking[0]:+.4f} nats/pair  {best}" in printed
    rank = int(printed.split("true DAG:   ")[1].split("ranked ")[1].split("/")[0])
    assert (rank == 1) == (best == "q1->q3, q2->q3") and 1 <= rank <= 25
    assert main(["learn-structure", str(out), "--significance-level", "2"]) == 2
    assert main(["learn-structure", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "--significance-level must be in (0, 1), got 2.0" in err and "is not a run folder" in err


def test_learn_structure_from_pairs_refuses_a_categorical_code(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--dataset", "shapes", "--preset", "tiny", "--steps", "2", "--tracking", "none", "--out", str(out)]
    assert main([*argv, "--n-eval", "64", "--codes", "cat4,cont,cont"]) == 0
    capsys.readouterr()
    assert main(["learn-structure", str(out), "--table", "pairs"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "continuous codes only" in err and "cat4,cont,cont" in err


def test_learn_structure_from_anchors_refuses_a_run_without_them(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    argv = ["train", "--dataset", "shapes", "--preset", "tiny", "--steps", "2", "--tracking", "none", "--out", str(out)]
    assert main([*argv, "--n-eval", "64"]) == 0
    capsys.readouterr()
    assert main(["learn-structure", str(out), "--table", "anchors"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "trained without --anchor-labels" in err and "--table codes" in err
