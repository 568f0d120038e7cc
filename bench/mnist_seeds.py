"""Issue 15's MNIST seed table: cat_acc on all 10,000 test images, median, min and max over seeds.

    python bench/mnist_seeds.py [--steps 5000] [--device cuda] [--seeds 0 1 2] [--max-minutes 6]
                                [--out docs/results/mnist-seeds] [--runs runs/mnist-seeds] [--summarize]
                                [--complete-only] [--rows-from OLD/rows.json]
                                [--branch-from RUNS [--branch-model independent-l1e-6]]

Models, all on InfoGAN's net (``--preset paper``: batch 128, full width) with the codes Cat(10),
Unif, Unif:

* ``infogan``: lambda_struct 0, with openai/InfoGAN's noise z ~ Uniform(-1, 1)^62 (spec
  ``infogan-mnist``);
* ``infogan-normal``: the same with z ~ N(0, I) (spec ``mnist``), so the noise choice is measured;
* ``independent``: the independent graph at the default lambda_struct and form, uniform noise;
* ``entangled``: the paper's entangled graph (q1, q2 -> q3 with ci -> qi), default lambda and form;
* ``independent-child``, ``entangled-child``: the same with ``--struct-grad child`` (R_G's fits
  differentiated through their children only), issue 15's test of where the regularizer's cost
  to cat_acc comes from; ``independent-g``: R_G in G's update only (``--struct-on g``);
  ``independent-q``: R_G in D/Q's update only (``--struct-on q``);
  ``independent-l0.03``: lambda_struct 0.03; ``independent-likelihood``: the ``likelihood`` form;
  ``independent-from300``, ``independent-from500``: R_G on from step 300 or 500 (``--struct-start``;
  until then the same seed's ``infogan`` run, step for step); ``digit-parent``: the independent graph
  plus q1 -> q2 and q1 -> q3, so R_G no longer asks the continuous readings to be independent of the
  digit's; ``independent-l0.01``: lambda_struct 0.01; ``independent-pooled``: R_G's families fitted on a
  running pool of batches (``--struct-fit pooled``), ``independent-pooled-from300`` the same from step 300,
  ``independent-pooled-from1000`` from step 1,000; ``entangled-pooled-from1000``: the entangled graph under
  that schedule, ``entangled-child-pooled-from1000`` the same with ``--struct-grad child``;
  ``independent-l1e-6``: lambda_struct 1e-6, the null for the same-seed comparison.

Every run is its own ``structsearch train`` process, all at once (these nets leave a GPU mostly
idle); each stops training after ``--max-minutes`` if not done (then it is scored as usual and
its step count is reported), and a rerun resumes each from its checkpoint and leaves runs already
scored at ``--steps`` alone. With ``--branch-from RUNS``, each new run starts from the
checkpoint of the same seed's ``--branch-model`` run in RUNS (see :func:`branch`), and ``--steps``
counts from that run's start. A CPU rehearsal:
``--device cpu --steps 20 --seeds 0``; on a CPU, ``--jobs`` = its cores runs them a few at a time. The table goes to OUT/summary.md and OUT/rows.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# R_G's families fitted on a running pool of batches, not each batch: no gradient from the fit's own noise
POOLED = ["--codes", "infogan-mnist", "--graph", "independent", "--struct-fit", "pooled"]
# the entangled graph under the recommended schedule (the pooled fit from step 1,000 on)
ENTANGLED_LATE = ["--codes", "infogan-mnist", "--graph", "entangled", "--struct-fit", "pooled", "--struct-start", "1000"]

MODELS = {
    "infogan": ["--codes", "infogan-mnist", "--graph", "independent", "--lambda-struct", "0"],
    "infogan-normal": ["--codes", "mnist", "--graph", "independent", "--lambda-struct", "0"],
    "independent": ["--codes", "infogan-mnist", "--graph", "independent"],
    "entangled": ["--codes", "infogan-mnist", "--graph", "entangled"],
    # issue 15's suspect: R_G's gradient through the parents of its saturated fits (q1's softmax)
    "independent-child": ["--codes", "infogan-mnist", "--graph", "independent", "--struct-grad", "child"],
    "entangled-child": ["--codes", "infogan-mnist", "--graph", "entangled", "--struct-grad", "child"],
    "independent-pooled": POOLED,
    # both: the pooled fit from step 300 on
    "independent-pooled-from300": [*POOLED, "--struct-start", "300"],
    # the recommended MNIST schedule: the pooled fit from step 1,000 on, a formed code's step
    # (until then the same seed's infogan run, step for step)
    "independent-pooled-from1000": [*POOLED, "--struct-start", "1000"],
    # the entangled graph under the same schedule: does the late start remove its cost too?
    "entangled-pooled-from1000": ENTANGLED_LATE,
    # and with R_G's fits differentiated through their children only: is the entangled graph's cost the
    # gradient through q3's parents (the digit's softmax among them)?
    "entangled-child-pooled-from1000": [*ENTANGLED_LATE, "--struct-grad", "child"],
    "independent-g": ["--codes", "infogan-mnist", "--graph", "independent", "--struct-on", "g"],
    # does the cost scale with lambda, and does a form without saturated fits pay it?
    "independent-l0.03": ["--codes", "infogan-mnist", "--graph", "independent", "--lambda-struct", "0.03"],
    "independent-likelihood": ["--codes", "infogan-mnist", "--graph", "independent", "--struct-form", "likelihood"],
    # is the cost paid early, while Q's codes read nothing yet? R_G from step 300 or 500 on; before
    # it each run is exactly the same seed's infogan run
    "independent-from300": ["--codes", "infogan-mnist", "--graph", "independent", "--struct-start", "300"],
    "independent-from500": ["--codes", "infogan-mnist", "--graph", "independent", "--struct-start", "500"],
    # the independent graph plus q1 -> q2, q1 -> q3: R_G no longer asks the continuous codes' readings
    # to be independent of the digit's (the demand the entangled graph drops for q3 only)
    "digit-parent": ["--codes", "infogan-mnist", "--graph", "c1->q1, c2->q2, c3->q3, q1->q2, q1->q3"],
    "independent-l0.01": ["--codes", "infogan-mnist", "--graph", "independent", "--lambda-struct", "0.01"],
    # the mirror of independent-g: R_G in D/Q's update only (G's loss has no R_G term)
    "independent-q": ["--codes", "infogan-mnist", "--graph", "independent", "--struct-on", "q"],
    # the pairing's null: R_G's code path at a weight too small to ask anything (its gradient moves G
    # by a few float32 ulps a step); its same-seed difference from infogan is how far a run drifts
    # from its pair when nothing is demanded of it
    "independent-l1e-6": ["--codes", "infogan-mnist", "--graph", "independent", "--lambda-struct", "1e-6"],
}


def run_dir(runs: Path, model: str, seed: int) -> Path:
    return runs / f"{model}-seed{seed}"


def scored_at(runs: Path, model: str, seed: int, steps: int) -> bool:
    """Whether the run's scores.json is of step ``steps`` or later (a rerun leaves such a run alone)."""
    try:
        return json.loads((run_dir(runs, model, seed) / "scores.json").read_text())["step"] >= steps
    except (OSError, ValueError, KeyError):
        return False


def launch(args: argparse.Namespace) -> None:
    """Run every (model, seed) as its own process, at most ``args.jobs`` at once (all when None)."""
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    args.runs.mkdir(parents=True, exist_ok=True)
    # seed-major, so a cut grid keeps whole seeds; runs already scored at --steps are done
    queue = [(m, s) for s in args.seeds for m in args.models if not scored_at(args.runs, m, s, args.steps)]
    print(f"{len(queue)} runs to do (runs scored at step {args.steps} are kept)", flush=True)
    running: list[tuple[str, int, subprocess.Popen]] = []
    while queue or running:
        while queue and len(running) < (args.jobs or len(queue) + len(running)):
            model, seed = queue.pop(0)
            running.append((model, seed, start(args, model, seed, logs)))
        done = next(((m, s, p) for m, s, p in running if p.poll() is not None), None)
        if done is None:
            time.sleep(2)
            continue
        running.remove(done)
        model, seed, proc = done
        if proc.returncode:
            print(f"{model} seed {seed}: exit {proc.returncode}, see {logs / f'{model}-seed{seed}.log'}")


def train_argv(args: argparse.Namespace, model: str, seed: int, out: Path) -> list[str]:
    """``structsearch train``'s arguments for one (model, seed) run in ``out``."""
    argv = ["train", "--dataset", "mnist", "--data-dir", str(args.data_dir), "--preset", "paper"]
    argv += ["--steps", str(args.steps), "--device", args.device, "--seed", str(seed), "--tracking", "none"]
    return argv + ["--checkpoint-every", "250", "--out", str(out), *MODELS[model]]


def branch(args: argparse.Namespace, model: str, seed: int, out: Path) -> None:
    """Make ``out`` a run of ``model`` that starts from the checkpoint of the same seed's
    ``--branch-model`` run under ``--branch-from``: its weights, optimizer moments, data order and
    latent draws, and its step count; from there on ``model``'s own config applies. ``branch.json``
    records the base run and the step. Two branches of one base differ only by what their models
    do after the branch step, so their difference is not diluted by a whole run's drift."""
    import torch

    from structsearch.cli import build_parser
    from structsearch.config import RunConfig, config_from_args

    base = run_dir(args.branch_from, args.branch_model, seed)
    if not (base / "checkpoint.pt").exists():
        raise SystemExit(f"--branch-from: no checkpoint of {args.branch_model} seed {seed} at {base}")
    base_cfg = RunConfig.load(base / "config.json")
    cfg = config_from_args(build_parser().parse_args(train_argv(args, model, seed, out)))
    if cfg.graph != base_cfg.graph:  # graph.json is copied: a branch keeps its base's graph
        raise SystemExit(f"--branch-from: {model} trains graph {cfg.graph!r}, the base {base} has {base_cfg.graph!r}")
    step = torch.load(base / "checkpoint.pt", map_location="cpu", weights_only=True)["step"]
    if step >= args.steps:
        raise SystemExit(f"--branch-from: {base} is at step {step}; --steps {args.steps} leaves nothing to train")
    out.mkdir(parents=True)
    shutil.copy2(base / "checkpoint.pt", out / "checkpoint.pt")
    shutil.copy2(base / "graph.json", out / "graph.json")
    dataclasses.replace(cfg, codes=base_cfg.codes).save(out / "config.json")
    (out / "branch.json").write_text(json.dumps({"from": str(base), "model": args.branch_model, "step": step}) + "\n")


def start(args: argparse.Namespace, model: str, seed: int, logs: Path) -> subprocess.Popen:
    out = run_dir(args.runs, model, seed)
    if args.branch_from and not (out / "config.json").exists():
        branch(args, model, seed, out)
    cmd = [sys.executable, "-m", "structsearch", *train_argv(args, model, seed, out)]
    cmd += ["--max-minutes", str(args.max_minutes)] + (["--resume"] if (out / "config.json").exists() else [])
    log = open(logs / f"{model}-seed{seed}.log", "a")  # noqa: SIM115 (open while the process runs)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def summarize(args: argparse.Namespace) -> None:
    rows = []
    for model in args.models:
        for seed in args.seeds:
            path = run_dir(args.runs, model, seed)
            try:
                summary = json.loads((path / "scores.json").read_text())
            except (OSError, ValueError):
                continue
            if args.complete_only and summary["step"] < args.steps:
                continue  # stopped early, still going, or a shorter run copied in to be continued
            rows.append({"model": model, "seed": seed, "step": summary["step"], **summary["scores"]})
    have = {(r["model"], r["seed"]) for r in rows}
    for table in args.rows_from:  # an earlier table's rows, for the (model, seed) runs not under --runs
        for row in json.loads(table.read_text()):
            if row["model"] in args.models and row["seed"] in args.seeds and (row["model"], row["seed"]) not in have:
                if not args.complete_only or row["step"] >= args.steps:
                    rows.append(row)
                    have.add((row["model"], row["seed"]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=1))
    acc = {(r["model"], r["seed"]): r["cat_acc"] for r in rows if "cat_acc" in r}
    lines = [
        "| model | seeds | steps done | cat_acc median | min | max | minus infogan, same seed: median [min, max] | seeds below |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for model in args.models:
        accs = [acc[model, seed] for seed in args.seeds if (model, seed) in acc]
        steps = sorted({r["step"] for r in rows if r["model"] == model})
        if not accs:
            continue
        # a seed's runs share their weights' init and data order (and a --struct-start run is that
        # seed's infogan run until it starts), so the same-seed difference is the paired comparison
        diffs = [acc[model, s] - acc["infogan", s] for s in args.seeds if (model, s) in acc and ("infogan", s) in acc]
        paired = (
            f"{statistics.median(diffs):+.3f} [{min(diffs):+.3f}, {max(diffs):+.3f}] | {sum(d < 0 for d in diffs)} of {len(diffs)}"
            if diffs and model != "infogan"
            else "| "
        )
        lines.append(
            f"| {model} | {len(accs)} | {', '.join(map(str, steps))} | {statistics.median(accs):.3f} "
            f"| {min(accs):.3f} | {max(accs):.3f} | {paired} |"
        )
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS)[:4])
    parser.add_argument("--max-minutes", type=float, default=6.0)
    parser.add_argument("--jobs", type=int, help="runs at once (default: all; on a CPU, its cores)")
    parser.add_argument("--data-dir", default="../shared/data/mnist")
    parser.add_argument("--out", type=Path, default=Path("docs/results/mnist-seeds"))
    parser.add_argument("--runs", type=Path, default=Path("runs/mnist-seeds"))
    parser.add_argument("--summarize", action="store_true", help="only write the table of finished runs")
    parser.add_argument(
        "--complete-only", action="store_true", help="leave out runs scored before --steps (stopped, or still going)"
    )
    parser.add_argument(
        "--rows-from",
        type=Path,
        nargs="+",
        default=[],
        help="earlier rows.json tables whose rows fill in the (model, seed) runs not under --runs",
    )
    parser.add_argument(
        "--branch-from",
        type=Path,
        metavar="RUNS",
        help="start each new run from the checkpoint of the same seed's --branch-model run in RUNS (a branch)",
    )
    parser.add_argument("--branch-model", choices=list(MODELS), default="independent-l1e-6")
    args = parser.parse_args()
    if not args.summarize:
        launch(args)
    summarize(args)


if __name__ == "__main__":
    main()
