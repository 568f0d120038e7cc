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
* the pair criterion (structsearch/pairs.py) over all 25 DAGs on Q's codes of 2,000 held-out real
  intervention pairs (weak supervision: no factor value is read): is its best DAG the truth, or in
  the truth's class; and renamed by the code-to-factor matching (ground truth, evaluation only),
  the truth? Beside it the same criterion on those pairs' true factor values, the ceiling;
* with anchors, two more tables: the anchored images' own known factor values (no GAN at all:
  what a user with those labels could do), and Q's codes with the reading error removed, i.e. the
  codes recoloured to the covariance Cov(q) - Cov(q - f), the reading error's covariance measured
  on the anchored images (errors in variables; valid when the error is independent of the factors);
  and Q's codes calibrated on the anchors: the affine least-squares map from Q's codes of the
  anchored images to their known factor values, applied to the held-out codes and to both sides of
  the held-out pairs, then BIC and the pair criterion over all 25 DAGs on those calibrated codes;
  beside them the partial correlation of the truth's one conditional independence (collider:
  q1, q2; chain: q1, q3 given q2; fork: q2, q3 given q1) on the calibrated codes and on the true
  factors of the same held-out images: BIC adds that edge once |partial corr| passes about
  sqrt(log(n) / n), 0.062 at n = 2,000.

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

from gan import dag
from gan.train import TrainConfig
from structsearch import metrics
from structsearch import pairs as pairs_mod
from structsearch import scores as scores_mod
from structsearch.config import RunConfig, apply_preset
from structsearch.datasets.shapes import GRAPHS, NODES
from structsearch.identifiability import score_coordinates
from structsearch.scoring import learn_structure, make_table
from structsearch.trial import anchor_index, load_dataset, resolve_graph, train_and_score

TRUTHS = ("collider", "chain", "fork")
ANCHORS = (0.0, 0.01, 0.05)
SEEDS = (0, 1, 2)


def run_one(truth: str, anchors: float, seed: int, steps: int, datasets: dict, lambda_pair: float = 0.0) -> dict:
    train = apply_preset(TrainConfig(), "quick")
    train = dataclasses.replace(train, n_steps=steps, seed=seed, anchor_labels=anchors, checkpoint_every=0)
    if lambda_pair:  # pairs in training too: the independent graph's SCM (the empty one) draws G's pairs
        train = dataclasses.replace(train, code_prior="graph", lambda_pair=lambda_pair)
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
    pair_sides = scores_mod.pair_codes(outcome.trainer.D, graph.spec, dataset, cfg.n_eval, standardize=False)
    extra = pair_verdicts(pair_sides, dataset, cfg.n_eval, codes, edges)
    if anchors > 0:
        index = anchor_index(cfg, dataset)
        labels = dataset.scm.values(dataset.train_factors[index])  # (M, 3) the known factor values
        anchored = dataset.train_images_at(torch.from_numpy(index).to(dataset.device))
        read = scores_mod.q_codes(outcome.trainer.D, anchored).cpu().numpy()
        corrected = recolour(codes, np.cov(codes.T) - np.cov((read - labels).T))
        to_factors = calibration(read, labels)
        calibrated_codes = to_factors(codes)
        calibrated = score_coordinates("calibrated", "", calibrated_codes, edges)
        _, calibrated_rank, calibrated_top = best_pair_dag(*map(to_factors, pair_sides), edges)
        _, classes = dataset.test_factors(cfg.n_eval)
        a, b, given = independence(edges)
        extra |= {
            "calibrated_partial_corr": partial_corr(calibrated_codes, a, b, given),
            "factors_partial_corr": partial_corr(dataset.scm.values(np.asarray(classes)), a, b, given),
            "calibrated_bic_first": calibrated.equivalent,
            "calibrated_pairs_best": ", ".join(map("->".join, calibrated_top)) or "(no edges)",
            "calibrated_pairs_truth_rank": calibrated_rank,
            "calibrated_pairs_dag_first": set(calibrated_top) == set(edges),
            "calibrated_pairs_class_first": dag.markov_equivalent(calibrated_top, edges),
            "labels_first": score_coordinates("labels", "", labels, edges).equivalent,
            "corrected_first": corrected is not None and score_coordinates("c", "", corrected, edges).equivalent,
        }
    return extra | {
        "truth": truth,
        "anchors": anchors,
        "lambda_pair": lambda_pair,
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


def best_pair_dag(before: np.ndarray, after: np.ndarray, truth) -> tuple[float, int, tuple]:
    """(best score, the truth's rank of 25, the best DAG) of the pair criterion on pairs (v, v')."""
    ranked = pairs_mod.ranked_dags(before, after)
    return ranked[0].score, pairs_mod.rank_of(ranked, truth), ranked[0].edges


def independence(edges) -> tuple[int, int, list[int]]:
    """(a, b, S): the one conditional independence a _||_ b | S of a two-edge DAG over q1..q3, as
    column indices: its non-adjacent pair, given the middle node unless that node is a collider."""
    adjacent = {frozenset(e) for e in edges}
    a, b = next(
        (i, j) for i, j in itertools.combinations(range(3), 2) if frozenset(NODES[k] for k in (i, j)) not in adjacent
    )
    (m,) = set(range(3)) - {a, b}
    collider = {(NODES[a], NODES[m]), (NODES[b], NODES[m])} <= set(edges)
    return a, b, [] if collider else [m]


def partial_corr(values: np.ndarray, a: int, b: int, given: list[int]) -> float:
    """The partial correlation of columns a and b given the columns ``given``: the quantity whose
    square, times n, Gaussian BIC weighs against one edge's penalty log(n)."""
    precision = np.linalg.inv(np.cov(values[:, [a, b, *given]].T))
    return float(-precision[0, 1] / np.sqrt(precision[0, 0] * precision[1, 1]))


def calibration(read: np.ndarray, labels: np.ndarray):
    """The affine least-squares map from Q's codes to the known factor values, fitted on the anchored
    images: it undoes a linear mixing of the factors in Q's reading (which adds edges to every
    graph score), and returns factor coordinates."""
    design = np.column_stack([read, np.ones(len(read))])
    weights, *_ = np.linalg.lstsq(design, labels, rcond=None)
    return lambda codes: np.column_stack([codes, np.ones(len(codes))]) @ weights


def pair_verdicts(pair_sides: tuple[np.ndarray, np.ndarray], dataset, n: int, codes: np.ndarray, truth) -> dict:
    """The pair criterion's best of the 25 DAGs on Q's codes (v, v') of n held-out real pairs, judged
    against ``truth``: as labelled (code i = factor i), and renamed by the code-to-factor matching
    of ``codes`` (Q's codes of the held-out images); and the same criterion on the pairs' factors."""
    before, after = pair_sides
    _, rank, top = best_pair_dag(*scores_mod.standardized(torch.from_numpy(before), torch.from_numpy(after)), truth)
    _, factors = dataset.test_factors(n)
    matching = metrics.match_codes(codes, np.asarray(factors))
    rename = {f"q{i + 1}": f"q{j + 1}" for i, j in enumerate(matching)}
    matched = tuple(sorted((rename[u], rename[v]) for u, v in top))
    real = dataset.test_pairs(n)
    *_, ceiling = best_pair_dag(dataset.scm.values(real.before), dataset.scm.values(real.after), truth)
    return {
        "pairs_best": ", ".join(map("->".join, top)) or "(no edges)",
        "pairs_truth_rank": rank,
        "pairs_dag_first": set(top) == set(truth),
        "pairs_class_first": dag.markov_equivalent(top, truth),
        "pairs_matched_first": set(matched) == set(truth),
        "matching": matching,
        "pairs_factors_first": set(ceiling) == set(truth),
    }


def recolour(values: np.ndarray, target: np.ndarray) -> np.ndarray | None:
    """``values`` linearly transformed to have sample covariance ``target`` (None when ``target`` is
    not positive definite): Gaussian BIC depends on the data through its covariance only."""
    if np.linalg.eigvalsh(target).min() <= 0:
        return None
    centred = values - values.mean(0)
    whiten = np.linalg.inv(np.linalg.cholesky(np.cov(centred.T)))
    return centred @ whiten.T @ np.linalg.cholesky(target).T


def counts(rows: list[dict], keys: tuple[str, ...]) -> list[str]:
    """'k/n' for each boolean key of the rows, 'n/a' for a key the rows do not record."""
    return [f"{sum(r[k] for r in rows)}/{len(rows)}" if k in rows[0] else "n/a" for k in keys]


def spread(values: list[float]) -> str:
    """'median (min-max)' to 3 decimals, 'n/a' for no values."""
    return f"{np.median(values):.3f} ({min(values):.3f}-{max(values):.3f})" if values else "n/a"


def rank_spread(ranks: list[int]) -> str:
    """'median (min-max)/25' of the truth's ranks among the 25 DAGs."""
    return f"{np.median(ranks):g} ({min(ranks)}-{max(ranks)})/25"


def summarize(rows: list[dict]) -> str:
    lines = [
        "| setting | truth class first by BIC (25 DAGs) | hill-climb | PC | anchor labels alone | codes, reading error removed | anchor_r2 (mean, min-max) |",
        "|---|---|---|---|---|---|---|",
    ]
    pair_lines = [
        "| setting | pair criterion on Q's codes of real pairs: true DAG first | true class first | matched top = truth | truth's rank (median, range) | the pairs' true factors: true DAG first |",
        "|---|---|---|---|---|---|",
    ]
    calibrated_lines = [
        "| setting | codes calibrated on the anchors: BIC, truth's class first | pair criterion, true DAG first | true class first | truth's rank (median, range) "
        "| the truth's independence, \\|partial corr\\|: calibrated codes (median, range) | true factors |",
        "|---|---|---|---|---|---|---|",
    ]
    settings = sorted({(r.get("lambda_pair", 0.0), r["anchors"]) for r in rows})
    for lambda_pair, anchors in settings:
        part = [r for r in rows if (r.get("lambda_pair", 0.0), r["anchors"]) == (lambda_pair, anchors)]
        part = [r for r in part if r["status"] == "completed"]
        if not part:
            continue
        r2 = [r["anchor_r2"] for r in part if r["anchor_r2"] is not None]
        r2_text = f"{np.mean(r2):.2f} ({min(r2):.2f} to {max(r2):.2f})" if r2 else "n/a"
        name = "i.i.d. only" if anchors == 0 else f"anchors {anchors:.0%}"
        name += f", pairs in training (lambda_pair {lambda_pair:g})" if lambda_pair else ""

        keys = ("bic_first", "hill_climb", "pc", "labels_first", "corrected_first")
        lines.append(f"| {name} | {' | '.join(counts(part, keys))} | {r2_text} |")
        if "pairs_best" in part[0]:
            rank_text = rank_spread([r["pairs_truth_rank"] for r in part])
            pair = counts(part, ("pairs_dag_first", "pairs_class_first", "pairs_matched_first"))
            lines_pair = [*pair, rank_text, *counts(part, ("pairs_factors_first",))]
            pair_lines.append(f"| {name} | {' | '.join(lines_pair)} |")
        if "calibrated_bic_first" in part[0]:
            rank_text = rank_spread([r["calibrated_pairs_truth_rank"] for r in part])
            cells = counts(part, ("calibrated_bic_first", "calibrated_pairs_dag_first", "calibrated_pairs_class_first"))
            corr = [
                spread([abs(r[k]) for r in part if k in r]) for k in ("calibrated_partial_corr", "factors_partial_corr")
            ]
            calibrated_lines.append(f"| {name} | {' | '.join(cells)} | {rank_text} | {' | '.join(corr)} |")
    for table in (pair_lines, calibrated_lines):
        if len(table) > 2:
            lines += ["", *table]
    lines += [
        "",
        "| truth | anchors | lambda_pair | seed | BIC's best DAG | truth rank | pair criterion's best DAG | its truth rank "
        "| code -> factor | calibrated: pair criterion's best | its truth rank | anchor_r2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r.get("lambda_pair", 0.0), r["anchors"], r["truth"], r["seed"])):
        r2 = "n/a" if r["anchor_r2"] is None else f"{r['anchor_r2']:.2f}"
        pair = (
            f"{r['pairs_best']} | {r['pairs_truth_rank']}/25 | {r['matching']}"
            if "pairs_best" in r
            else "n/a | n/a | n/a | n/a | n/a"
        )
        if "calibrated_pairs_best" in r:
            pair += f" | {r['calibrated_pairs_best']} | {r['calibrated_pairs_truth_rank']}/25"
        elif "pairs_best" in r:  # a run without anchors has no calibration
            pair += " | n/a | n/a"
        lines.append(
            f"| {r['truth']} | {r['anchors']:.0%} | {r.get('lambda_pair', 0.0):g} | {r['seed']} | {r['bic_best']} "
            f"| {r['truth_rank']}/25 | {pair} | {r2} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=Path("docs/results/identify/results.jsonl"))
    parser.add_argument("--shard", default="0/1", help="I/N: this process runs every N-th run from I")
    parser.add_argument("--anchors", type=float, nargs="+", default=list(ANCHORS), help="anchor fractions (0: none)")
    parser.add_argument("--lambda-pair", type=float, default=0.0, help="train with intervention pairs at this weight")
    parser.add_argument("--summarize", action="store_true", help="write summary.md beside --out and stop")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if args.summarize:
        (args.out.parent / "summary.md").write_text(summarize(rows) + "\n")
        print(summarize(rows))
        return
    index, count = map(int, args.shard.split("/"))
    done = {(r["truth"], r["anchors"], r["seed"], r["steps"], r.get("lambda_pair", 0.0)) for r in rows}
    # seeds outermost: partial grids stay balanced
    grid = list(itertools.product(SEEDS, args.anchors, TRUTHS))[index::count]
    datasets: dict = {}
    for seed, anchors, truth in grid:
        if (truth, anchors, seed, args.steps, args.lambda_pair) in done:
            continue
        row = run_one(truth, anchors, seed, args.steps, datasets, args.lambda_pair)
        with args.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
