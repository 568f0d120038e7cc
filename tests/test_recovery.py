from __future__ import annotations

import json
import pathlib

import pytest

from tests import bench_scripts

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def rec():
    """bench/recovery.py as a module."""
    return bench_scripts.load("recovery")


def test_candidates_and_markov_classes(rec) -> None:
    chain = rec.candidate_edges("truth", (("q1", "q2"), ("q2", "q3")))
    reversed_chain = rec.candidate_edges("reversed", chain)
    assert rec.markov_class(reversed_chain) == rec.markov_class(chain)  # q3->q2->q1: same class
    collider = (("q1", "q3"), ("q2", "q3"))
    assert rec.markov_class(rec.candidate_edges("reversed", collider)) != rec.markov_class(collider)
    assert rec.skeleton(rec.candidate_edges("wrong_chain", collider)) != rec.skeleton(collider)
    assert len(rec.candidate_edges("complete", collider)) == 3
    assert rec.candidate_edges("q1->q2, q2->q3", collider) == (("q1", "q2"), ("q2", "q3"))


def test_every_shipped_grid_expands_inside_the_full_grid(rec) -> None:
    grids = json.loads((ROOT / "bench" / "recovery.json").read_text())["grids"]
    keys = {name: [rec.run_key(r) for r in rec.expand(grid)] for name, grid in grids.items()}
    sizes = {name: len(k) for name, k in keys.items()}
    assert sizes == {"small": 50, "chain_fork": 30, "forms": 30, "ablations": 55, "full": 1800, "corrected": 15}
    for name, k in keys.items():
        assert len(set(k)) == len(k), name  # no run twice
        if name != "corrected":  # R_G's small-batch correction: its own --out folder, beside the in-sample rows
            assert set(k) <= set(keys["full"]), name  # the full grid reuses every smaller grid's rows


def test_tiny_benchmark_writes_rows_and_a_summary_and_resumes(rec, tmp_path, capsys) -> None:
    """Two 5-step runs (about 8 s on a busy 2-core CPU)."""
    config = {
        "training": {
            "preset": "tiny",
            "train": {"n_steps": 5, "log_every": 5, "checkpoint_every": 0},
            "n_eval": 100,
            "ground_truth": ["shd", "mig"],  # DCI's boosted trees alone take ~20 s per run here
        },
        "grids": {
            "tiny": {
                "true_graphs": ["collider"],
                "candidates": ["truth", "independent"],
                "forms": ["perfect_map"],
                "lambda_info": [1.0],
                "lambda_struct": [1.0],
                "code_prior": ["graph"],
                "noise_dim": [0],
                "seeds": [0],
            }
        },
    }
    (tmp_path / "tiny.json").write_text(json.dumps(config))
    args = ["--config", str(tmp_path / "tiny.json"), "--grid", "tiny", "--out", str(tmp_path / "out")]
    args += ["--device", "cpu", "--run-root", str(tmp_path / "runs")]
    rec.main(args)

    rows = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [r["candidate"] for r in rows] == ["truth", "independent"]
    assert [r["true_class"] for r in rows] == [True, False]
    for r in rows:
        assert r["status"] == "completed" and r["code_prior"] == "graph" and r["form"] == "perfect_map"
        assert {"struct_bic", "agreement", "info", "info_min", "shd", "mig"} <= set(r["scores"])
    assert rows[0]["edges"] == "q1->q3, q2->q3" and rows[1]["edges"] == ""
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "### collider · perfect_map · λ_info 1.0 · λ_struct 1.0 · prior graph · noise 0" in summary
    assert all(f"| {o} |" in summary for o in ("struct_bic", "agreement", "info", "info_min"))
    assert "one seed: spread unknown" in summary
    assert (tmp_path / "out" / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

    rec.main(args)  # resumes: nothing left to do
    assert "2 runs, 2 done, 0 to do" in capsys.readouterr().out
    assert len((tmp_path / "out" / "results.jsonl").read_text().splitlines()) == 2


def test_paper_dsprites_verdict_needs_a_gap_beyond_the_seed_spread() -> None:
    module = bench_scripts.load("paper_dsprites")
    values = {  # metric -> (infogan seeds, structured seeds)
        "mig": ([0.10, 0.12, 0.11], [0.30, 0.31, 0.29]),  # clear gap: structured higher
        "dci": ([0.10, 0.30, 0.20], [0.25, 0.05, 0.30]),  # gap 0.003, spreads 0.1: no result
        "sap": ([0.20, 0.21, 0.22], [0.01, 0.02, 0.03]),  # clear gap: InfoGAN higher
    }
    rows = [
        {
            "key": f"{m}{s}",
            "model": m,
            "seed": s,
            "status": "completed",
            "steps": 10,
            "width": 0.25,
            "scale": 0.1,
            "scores": {name: v[i][s] for name, v in values.items()}
            | {"dci_completeness": 0.0, "info": 0.0, "info_min": 0.0},
        }
        for i, m in enumerate(("infogan", "structured"))
        for s in range(3)
    ]
    table = {
        line.split(" | ")[0].strip("| "): line for line in module.summarize(rows).splitlines() if line.startswith("| ")
    }
    assert table["mig"].endswith("| structured higher |")
    assert table["dci"].endswith("| **difference smaller than the seed spread** |")
    assert table["sap"].endswith("| InfoGAN higher |")
    assert "0.110 ± 0.010" in table["mig"]
