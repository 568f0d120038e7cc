"""bench/mnist_seeds.py --branch-from: a run that starts from another run's checkpoint."""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest
import torch

from structsearch.cli import main
from tests import bench_scripts


@pytest.fixture(scope="module")
def bench():
    """bench/mnist_seeds.py as a module."""
    return bench_scripts.load("mnist_seeds")


def _args(bench, runs: pathlib.Path, steps: int, data_dir: pathlib.Path, base: pathlib.Path | None = None):
    return argparse.Namespace(
        runs=runs, steps=steps, device="cpu", data_dir=data_dir, branch_from=base, branch_model="infogan"
    )


def _train(bench, args, model: str, seed: int, resume: bool = False) -> dict:
    out = bench.run_dir(args.runs, model, seed)
    args.runs.mkdir(parents=True, exist_ok=True)  # as launch() makes it
    assert main(bench.train_argv(args, model, seed, out) + (["--resume"] if resume else [])) == 0
    return torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_a_branch_continues_its_base_exactly_and_then_follows_its_own_model(bench, tmp_path, mnist_dir) -> None:
    straight = _train(bench, _args(bench, tmp_path / "straight", 4, mnist_dir), "infogan", 0)
    _train(bench, _args(bench, tmp_path / "base", 2, mnist_dir), "infogan", 0)
    branches = _args(bench, tmp_path / "branches", 4, mnist_dir, base=tmp_path / "base")
    for model in ("infogan", "independent-pooled"):
        bench.branch(branches, model, 0, bench.run_dir(branches.runs, model, 0))
    same = _train(bench, branches, "infogan", 0, resume=True)
    pooled = _train(bench, branches, "independent-pooled", 0, resume=True)

    # the infogan branch of an infogan base is that run continued: weights, moments, data order, draws
    assert same["step"] == straight["step"] == 4
    for name, tensor in straight["G"].items():
        assert torch.equal(same["G"][name], tensor), name
    # the pooled branch trained its last 2 steps under its own config: R_G's pool exists, G differs
    pooled_dir = bench.run_dir(branches.runs, "independent-pooled", 0)
    assert json.loads((pooled_dir / "config.json").read_text())["train"]["struct_fit"] == "pooled"
    assert "struct" in pooled and pooled["step"] == 4
    assert any(not torch.equal(pooled["G"][k], v) for k, v in straight["G"].items())
    record = json.loads((pooled_dir / "branch.json").read_text())
    assert record == {"from": str(bench.run_dir(tmp_path / "base", "infogan", 0)), "model": "infogan", "step": 2}


def test_a_branch_refuses_another_graph_and_a_base_past_its_steps(bench, tmp_path) -> None:
    base = bench.run_dir(tmp_path / "base", "infogan", 0)
    base.mkdir(parents=True)
    torch.save({"step": 6}, base / "checkpoint.pt")
    (base / "config.json").write_text(json.dumps({"dataset": "mnist", "graph": "independent", "train": {}}))
    args = _args(bench, tmp_path / "branches", 6, pathlib.Path("unused"), base=tmp_path / "base")
    with pytest.raises(SystemExit, match="graph 'c1->q1.*the base .* has 'independent'"):
        bench.branch(args, "digit-parent", 0, bench.run_dir(args.runs, "digit-parent", 0))
    with pytest.raises(SystemExit, match="at step 6; --steps 6 leaves nothing to train"):
        bench.branch(args, "independent-pooled", 0, bench.run_dir(args.runs, "independent-pooled", 0))
    with pytest.raises(SystemExit, match="no checkpoint of infogan seed 1"):
        bench.branch(args, "independent-pooled", 1, bench.run_dir(args.runs, "independent-pooled", 1))
    assert not args.runs.exists()  # nothing written for a refused branch
