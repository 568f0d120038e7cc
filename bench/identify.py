"""Does anchoring identify the graph? The one-model baseline over truths, anchor levels and seeds.

    OMP_NUM_THREADS=1 python bench/identify.py --shard 0/2 &   OMP_NUM_THREADS=1 python bench/identify.py --shard 1/2
    python bench/identify.py --summarize

Per truth (collider, chain, fork), anchor level (0: i.i.d. images only, 1%, 5% of the training
images) and seed: train ONE model with the independent graph (the `quick` preset at --steps),
read Q's codes of the 2,000 held-out real images, then ask three questions of that one table:

* BIC over all 25 DAGs (the struct_bic ranking a search with perfectly trained candidates would
  see, since anchors put every candidate's codes in the factors' coordinates): is the best DAG
  Markov-equivalent to the truth?
* pgmpy hill-climb (BIC, 10 restarts) and PC (alpha 0.01): is the learned class the truth's?
* with anchors, two more tables: the anchored images' own known factor values (no GAN at all:
  what a user with those labels could do), and Q's codes with the reading error removed, i.e. the
  codes recoloured to the covariance Cov(q) - Cov(q - f), the reading error's covariance measured
  on the anchored images (errors in variables; valid when the error is independent of the factors).

Rows go to --out (JSON lines, one per run; a rerun skips what is done, so a kill loses one run).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from gan.train import TrainConfig
from structsearch import scores as scores_mod
from structsearch.config import RunConfig, apply_preset
from structsearch.datasets.shapes import GRAPHS, NODES
from structsearch.identifiability import score_coordinates
from structsearch.scoring import learn_structure, make_table
from structsearch.trial import anchor_index, load_dataset, resolve_graph, train_and_score

TRUTHS = ("collider", "chain", "fork")
ANCHORS = (0.0, 0.01, 0.05)
SEEDS = (0, 1, 2)


def run_one(truth: str, anchors: float, seed: int, steps: int, datasets: dict) -> dict:
    train = apply_preset(TrainConfig(), "quick")
    train = dataclasses.replace(train, n_steps=steps, seed=seed, anchor_labels=anchors, checkpoint_every=0)
    cfg = RunConfig(dataset="shapes", shapes_graph=truth, graph="independent", device="cpu", train=train)
    dataset = datasets.setdefault(truth, load_dataset(cfg))
    graph = resolve_graph(cfg, dataset)
    started = time.time()
    outcome = train_and_score(cfg, graph, dataset)
    images, _ = dataset.test_images(cfg.n_eval)
    codes = scores_mod.q_codes(outcome.trainer.D, images.to(dataset.device)).cpu().numpy()  # (n_eval, 3)
    edges = GRAPHS[truth]
    bic = score_coordinates("codes", "Q's codes of real images", codes.astype(np.float64), edges)
    table = make_table({q: codes[:, i] for i, q in enumerate(NODES)}, graph.spec)
    learned = {m: learn_structure(table, m, seed=seed) for m in ("hill-climb", "pc")}
    extra = {}
    if anchors > 0:
        index = anchor_index(cfg, dataset)
        labels = dataset.scm.values(dataset.train_factors[index])  # (M, 3) the known factor values
        anchored = dataset.train_images_at(torch.from_numpy(index).to(dataset.device))
        read = scores_mod.q_codes(outcome.trainer.D, anchored).cpu().numpy()
        corrected = recolour(codes, np.cov(codes.T) - np.cov((read - labels).T))
        extra = {
            "labels_first": score_coordinates("labels", "", labels, edges).equivalent,
            "corrected_first": corrected is not None and score_coordinates("c", "", corrected, edges).equivalent,
        }
    return extra | {
        "truth": truth,
        "anchors": anchors,
        "seed": seed,
        "steps": steps,
        "status": outcome.result.status,
        "seconds": round(time.time() - started, 1),
        "anchor_r2": outcome.scores.get("anchor_r2"),
        "info_min": outcome.scores.get("info_min"),
        "bic_best": ", ".join(map("->".join, bic.best_edges)) or "(no edges)",
        "bic_first": bic.equivalent,
        "truth_rank": bic.truth_rank,
        "hill_climb": learned["hill-climb"].equivalent_to(edges, NODES),
        "pc": learned["pc"].equivalent_to(edges, NODES),
    }


def recolour(values: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """``values`` linearly transformed to have sample covariance ``target`` (None when ``target`` is
    not positive definite): Gaussian BIC depends on the data through its covariance only."""
    if np.linalg.eigvalsh(target).min() <= 0:
        return None
    centred = values - values.mean(0)
    whiten = np.linalg.inv(np.linalg.cholesky(np.cov(centred.T)))
    return centred @ whiten.T @ np.linalg.cholesky(target).T


def summarize(rows: list[dict]) -> str:
    lines = [
        "| setting | truth class first by BIC (25 DAGs) | hill-climb | PC | anchor labels alone | codes, reading error removed | anchor_r2 (mean, min-max) |",
        "|---|---|---|---|---|---|---|",
    ]
    for anchors in ANCHORS:
        part = [r for r in rows if r["anchors"] == anchors and r["status"] == "completed"]
        if not part:
            continue
        r2 = [r["anchor_r2"] for r in part if r["anchor_r2"] is not None]
        r2_text = f"{np.mean(r2):.2f} ({min(r2):.2f} to {max(r2):.2f})" if r2 else "n/a"
        name = "i.i.d. only" if anchors == 0 else f"anchors {anchors:.0%}"
        keys = ("bic_first", "hill_climb", "pc", "labels_first", "corrected_first")
        counts = [f"{sum(r[k] for r in part)}/{len(part)}" if k in part[0] else "n/a" for k in keys]
        lines.append(f"| {name} | {' | '.join(counts)} | {r2_text} |")
    lines += ["", "| truth | anchors | seed | BIC's best DAG | truth rank | anchor_r2 |", "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["anchors"], r["truth"], r["seed"])):
        r2 = "n/a" if r["anchor_r2"] is None else f"{r['anchor_r2']:.2f}"
        lines.append(
            f"| {r['truth']} | {r['anchors']:.0%} | {r['seed']} | {r['bic_best']} | {r['truth_rank']}/25 | {r2} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=Path("docs/results/identify/results.jsonl"))
    parser.add_argument("--shard", default="0/1", help="I/N: this process runs every N-th run from I")
    parser.add_argument("--summarize", action="store_true", help="write summary.md beside --out and stop")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if args.summarize:
        (args.out.parent / "summary.md").write_text(summarize(rows) + "\n")
        print(summarize(rows))
        return
    index, count = map(int, args.shard.split("/"))
    done = {(r["truth"], r["anchors"], r["seed"], r["steps"]) for r in rows}
    grid = list(itertools.product(SEEDS, ANCHORS, TRUTHS))[index::count]  # seeds outermost: partial grids stay balanced
    datasets: dict = {}
    for seed, anchors, truth in grid:
        if (truth, anchors, seed, args.steps) in done:
            continue
        row = run_one(truth, anchors, seed, args.steps, datasets)
        with args.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
