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
        (["--workers", "0"], "argument --workers: expected an integer >= 1, got '0'"),
        (["--space", "fixed-order", "--order", "q1,q3"], "must list every q node once: q1, q2, q3"),
        (["--forbid", "c1->q1"], "both required (by default every ci->qi) and forbidden: c1->q1"),
        (["--seed-graph", "q1->q3, q3->q1"], "cycle q1 -> q3 -> q1"),
    ],
)
def test_optimize_refuses_bad_input_before_training(tmp_path, capsys, args, message) -> None:
    argv = ["optimize", "--dataset", "shapes", "--preset", "tiny", "--runs-dir", str(tmp_path), "--tracking", "none"]
    assert main([*argv, *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*/trial-*"))  # nothing was trained
