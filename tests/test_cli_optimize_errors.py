from __future__ import annotations

import pytest

from structsearch.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objective", "bic_gen"], "bic_gen is a diagnostic, not an objective"),
        (["--objective", "cat_acc"], "objective cat_acc needs a labelled dataset and a categorical code"),
        (["--objective", "accuracy"], "unknown objective 'accuracy'"),
        (["--trials", "0"], "argument --trials: expected an integer >= 1, got '0'"),
        (["--trials", "-3"], "argument --trials: expected an integer >= 1, got '-3'"),
        (["--workers", "0"], "argument --workers: expected an integer >= 1, got '0'"),
        (["--space", "classes", "--objective", "info"], "--space classes trains one DAG per Markov class"),
        (
            ["--sampler", "grid", "--codes", "cont,cont,cont,cont,cont,cont;noise=0"],
            "would examine 14,348,907 edge combinations (limit 200,000)",
        ),
        (["--space", "fixed-order", "--order", "q1,q3"], "must list every q node once: q1, q2, q3"),
        (["--forbid", "c1->q1"], "both required (by default every ci->qi) and forbidden: c1->q1"),
        (["--seed-graph", "q1->q3, q3->q1"], "cycle q1 -> q3 -> q1"),
        (["--anchor-labels", "1.5"], "--anchor-labels must be 0 (off), a fraction in (0, 1) or a whole count >= 1"),
        (["--anchor-labels", "20001"], "--anchor-labels 20001 asks for 20001 anchored images, but shapes has 20000"),
        (["--anchor-labels", "5", "--codes", "cat4,cat4"], "shapes anchors continuous codes among c1..c3"),
        (["--objective", "anchor_r2", "--codes", "cat4,cat4"], "objective anchor_r2 needs known factor values"),
    ],
)
def test_optimize_refuses_bad_input_before_training(tmp_path, capsys, args, message) -> None:
    argv = ["optimize", "--dataset", "shapes", "--preset", "tiny", "--runs-dir", str(tmp_path), "--tracking", "none"]
    assert main([*argv, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*/trial-*"))  # nothing was trained
