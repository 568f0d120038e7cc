"""bench/pairs_recovery.py: the verdicts of its summary, and a tiny real run that stops, resumes and is summarized."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import time

import pytest

from gan import dag
from structsearch.datasets.shapes import GRAPHS, NODES
from tests import bench_scripts

COLLIDER = GRAPHS["collider"]  # q1->q3, q2->q3


@pytest.fixture(scope="module")
def bench():
    """bench/pairs_recovery.py as a module."""
    return bench_scripts.load("pairs_recovery")


def test_shapes_split_the_25_dags_by_relabelling(bench) -> None:
    shapes = {}
    for edges in dag.all_dags(NODES):
        shapes.setdefault(bench.shape(edges), []).append(edges)
    assert sorted(len(v) for v in shapes.values()) == [1, 3, 3, 6, 6, 6]  # empty, fork, collider, edge, chain, complete
    assert bench.shape((("q1", "q2"), ("q3", "q2"))) == bench.shape(COLLIDER)  # a collider at q2
    assert bench.shape(GRAPHS["fork"]) != bench.shape(COLLIDER)
    assert bench.chance(COLLIDER) == (1 / 25, 1 / 25, 3 / 25)
    assert bench.chance(GRAPHS["chain"]) == (1 / 25, 3 / 25, 6 / 25)
    assert bench.chance(GRAPHS["fork"]) == (1 / 25, 3 / 25, 3 / 25)


def test_shape_candidates_are_one_dag_per_shape(bench) -> None:
    shapes = bench.candidates("shapes")
    assert len(shapes) == 6 and {bench.shape(e) for e in shapes} == {bench.shape(e) for e in dag.all_dags(NODES)}
    assert COLLIDER not in shapes and (("q1", "q2"), ("q3", "q2")) in shapes  # the collider's is at q2
    # chance over the candidates run: the truth's shape is 1 of 6; the true collider DAG is not among them
    assert bench.chance(COLLIDER, shapes) == (0.0, 0.0, 1 / 6)
    assert bench.chance(GRAPHS["chain"], shapes) == (1 / 6, 1 / 6, 1 / 6)


def _rows(best: tuple, matched: tuple | None = None) -> list[dict]:
    """25 completed rows of one (truth, seed): ``best`` has the lowest pair score and the highest struct_bic."""
    rows = []
    for i, edges in enumerate(dag.all_dags(NODES)):
        value = 0.0 if edges == best else 1.0 + i
        row = {"truth": "collider", "seed": 0, "graph": bench_text(edges), "status": "completed"}
        row |= {"pair_feature_energy": value, "struct_bic": -value}
        if edges == best and matched is not None:
            row["matched_graph"] = bench_text(matched)
        rows.append(row)
    return rows


def bench_text(edges: tuple) -> str:
    return ", ".join(f"{u}->{v}" for u, v in edges) or "(no edges)"


def test_judge_reads_each_ranking_in_its_direction(bench) -> None:
    truth_first = bench.judge(_rows(COLLIDER, matched=COLLIDER), "pair_feature_energy", COLLIDER)
    assert truth_first | {"gap": 0.0} == {
        "n": 25,
        "top": "q1->q3, q2->q3",
        "true_rank": 1,
        "dag_first": True,
        "class_first": True,
        "shape_first": True,
        "matched_first": True,
        "gap": 0.0,
    }
    assert bench.judge(_rows(COLLIDER), "struct_bic", COLLIDER)["true_rank"] == 1  # higher is better there

    # A collider at q2 wins: the truth's shape, not its DAG or class; after matching codes to
    # factors (q2 reads height) it is the truth.
    at_q2 = (("q1", "q2"), ("q3", "q2"))
    permuted = bench.judge(_rows(at_q2, matched=COLLIDER), "pair_feature_energy", COLLIDER)
    assert (permuted["dag_first"], permuted["class_first"], permuted["shape_first"]) == (False, False, True)
    assert permuted["matched_first"] and permuted["true_rank"] > 1 and permuted["gap"] > 0
    empty = bench.judge(_rows(()), "pair_feature_energy", COLLIDER)
    assert not (empty["class_first"] or empty["shape_first"] or empty["matched_first"])
    assert bench.judge(_rows(()), "pixel_pair_energy", COLLIDER) is None  # no row has that score


def test_summary_counts_seeds(bench) -> None:
    rows = _rows(COLLIDER) + [r | {"seed": 1} for r in _rows(())]
    summary = bench.summarize(rows)
    line = next(x for x in summary.splitlines() if x.startswith("| collider | pair_feature_energy |"))
    assert "| 2 | 1/2 (chance 0.04) | 1/2 (0.04) | 1/2 (0.12) | 0/2 |" in line
    assert "| 1/25, " in line and "| q1->q3, q2->q3; (no edges) |" in line


def test_summary_gives_chance_over_the_candidates_run(bench) -> None:
    shapes = {bench_text(e) for e in bench.candidates("shapes")}
    rows = [r for r in _rows(()) if r["graph"] in shapes]  # the 6-shape grid, the empty graph first
    line = next(x for x in bench.summarize(rows).splitlines() if x.startswith("| collider | pair_feature_energy |"))
    assert "| 1 | 0/1 (chance 0.00) | 0/1 (0.00) | 0/1 (0.17) | 0/1 | -/6 |" in line


def test_bad_candidates_are_refused(bench) -> None:
    with pytest.raises(SystemExit, match="q1->q2, q2->q1 is not a DAG over q1..q3"):
        bench.candidates("q1->q2, q2->q1")
    assert bench.candidates("q1->q3, q2->q3; (no edges)") == [COLLIDER, ()]


@pytest.mark.slow  # 10-20 s: two 50-step runs of the quick net, one stopped and resumed, scored
def test_a_tiny_benchmark_stops_resumes_and_summarizes(bench, tmp_path, monkeypatch) -> None:
    fid_module = importlib.import_module("structsearch.metrics.fid")
    monkeypatch.setattr(fid_module, "DEFAULT_CACHE_DIR", tmp_path / "fid")  # nothing written outside the test
    monkeypatch.setattr(fid_module, "fit", lambda *args, **kwargs: None)  # an untrained feature net suffices
    out, runs = tmp_path / "out" / "results.jsonl", tmp_path / "runs"
    argv = ["--steps", "50", "--truths", "collider", "--seeds", "0", "--n-eval", "200"]
    argv += ["--candidates", "q1->q3, q2->q3; (no edges)", "--out", str(out), "--runs", str(runs)]
    stopped = bench.run_one("collider", 0, COLLIDER, bench.parse_args(argv), {}, deadline=time.monotonic())
    assert stopped is None  # the deadline stopped it at its first log (step 25), checkpointed
    assert [p.parent.name for p in runs.glob("*/checkpoint.pt")] == ["collider-s0-q1q3_q2q3-50-1"]
    bench.main(argv)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["graph"], r["resumed_at"], r["status"]) for r in rows] == [
        ("q1->q3, q2->q3", 25, "completed"),
        ("(no edges)", 0, "completed"),
    ]
    for r in rows:
        for key in ("pair_feature_energy", "pair_feature_energy/single", "pixel_pair_energy", "pair_energy"):
            assert math.isfinite(r[key]) and r[key] > 0, key
        assert sorted(r["matching"]) == [0, 1, 2] and math.isfinite(r["losses"]["loss/pair"])
    assert not list(runs.glob("*/checkpoint.pt"))  # deleted once the rows were written
    bench.main(argv)  # nothing left to do
    assert len(out.read_text().splitlines()) == 2
    bench.main([*argv, "--summarize"])
    summary = (out.parent / "summary.md").read_text()
    assert summary.count("| collider | ") == 5 + 2  # one line per ranked score, one per run
