"""Do intervention pairs identify the graph? One pair-trained model per truth, seed and candidate DAG.

    OMP_NUM_THREADS=1 python bench/pairs_recovery.py --shard 0/2 &  OMP_NUM_THREADS=1 python bench/pairs_recovery.py --shard 1/2
    python bench/pairs_recovery.py --summarize          # docs/results/pairs-recovery/summary.md

Per truth of ``shapes`` (collider, chain, fork), seed and candidate (all 25 DAGs over q1..q3 by
default; Markov-equivalent DAGs are different candidates, since pairs tell them apart): train ONE
model under the candidate with ``--code-prior graph --lambda-pair L`` (the ``quick`` preset's net,
width 0.25, batch 64, at --steps), score it, and write one JSON line. The models see images and
intervention pairs only, never a factor value.

**Which score compares models.** Every model has codes of its own making, so a score read in a
model's own codes (``pair_energy``: energy distance of Q's codes of real and generated pairs)
measures each model with its own ruler: a Q that is blind to one factor makes every distance along
that factor vanish, and a rescaled or mixed code changes the metric. The ranking therefore uses
scores in one space for every model:

* ``pair_feature_energy`` (structsearch/scores.py): energy distance of real and generated pairs
  (f(x), f(x')) in the features f of ``fid``'s feature net (fixed, trained once per dataset on its
  factor values: the scorer's space uses them, the models do not);
* ``pixel_pair_energy`` (computed here): the same in pixel space, label-free, on fewer pairs.

Both compare generated *images*, so the trap of issue 14 (codes = width, thickness and height's
exogenous noise, with the empty graph) cannot win by construction: such a G's do(noise) pairs show a
new height that still follows width and thickness, and real do(height) pairs do not, whatever the
model calls its codes. ``pair_energy``, ``struct_bic`` and ``info_min`` are ranked the same way
beside them, the first to show what the own-coordinates score does, the i.i.d. scores as the
baseline that cannot identify the graph (docs/design.md section 8).

**What pairs can identify here.** The codes are exchangeable (three ``cont`` codes, one net, no
label), so a model under q1->q2<-q3 can put height on q2 and match real pairs exactly as well as
one under the truth q1->q3<-q2. Pairs identify the graph up to a relabelling of its nodes (ILCM's
"up to permutation"), not the labelled DAG. The summary therefore reports, per ranking: the true
DAG's rank; whether the top DAG is in the truth's Markov class (the issue's question, with chance
= the class's share of the 25); whether it has the truth's shape (isomorphic: the identifiable
target, chance = the shape's share); and whether the top model's graph, its nodes renamed by the
code-to-factor matching (ground truth, used only to evaluate, as ``shd`` does), is in the truth's
class.

Rows go to --out (JSON lines, one per run); a rerun skips rows already there. Each run
checkpoints to --runs every 250 steps and on a stop; a killed or time-limited (--max-minutes) run
resumes from its checkpoint, which is deleted once its row is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from gan import dag
from gan.train import TrainConfig
from structsearch import metrics
from structsearch import scores as scores_mod
from structsearch.config import RunConfig, apply_preset
from structsearch.datasets.shapes import GRAPHS, NODES
from structsearch.pairs import energy_distance
from structsearch.trial import load_dataset, make_trainer, resolve_graph, train_and_score

TRUTHS = ("collider", "chain", "fork")
SEEDS = (0, 1, 2)
DAGS = dag.all_dags(NODES)  # the 25 labelled DAGs, sparsest first
EXTRA = ("pair_feature_energy", "pair_energy")
# name -> +1 when higher is better, -1 when lower is: every score the summary ranks by
RANKED = {
    "pair_feature_energy": -1,
    "pixel_pair_energy": -1,
    "pair_energy": -1,
    "struct_bic": +1,
    "info_min": +1,
}
N_PIXEL = 1000  # pairs per side of the pixel-space energy (2,048 dimensions each: the slow part)
Edges = tuple[tuple[str, str], ...]


# ---- one run -----------------------------------------------------------------------------------


def edges_text(edges: Edges) -> str:
    return ", ".join(f"{u}->{v}" for u, v in edges) or "(no edges)"


def parse_edges(text: str) -> Edges:
    return () if text == "(no edges)" else tuple(tuple(e.split("->")) for e in text.split(", "))


def slug(edges: Edges) -> str:
    return "_".join(u + v for u, v in edges) or "empty"


def checkpoint_path(args: argparse.Namespace, truth: str, seed: int, edges: Edges) -> Path:
    return args.runs / f"{truth}-s{seed}-{slug(edges)}-{args.steps}-{args.lambda_pair:g}" / "checkpoint.pt"


def config(
    truth: str, seed: int, edges: Edges, steps: int, lambda_pair: float, device: str, n_eval: int = 2000
) -> RunConfig:
    train = apply_preset(TrainConfig(), "quick")
    train = dataclasses.replace(
        train, n_steps=steps, seed=seed, code_prior="graph", lambda_pair=lambda_pair, checkpoint_every=250
    )
    graph = ", ".join(["c1->q1, c2->q2, c3->q3", *(f"{u}->{v}" for u, v in edges)])
    return RunConfig(dataset="shapes", shapes_graph=truth, graph=graph, device=device, n_eval=n_eval, train=train)


def pixel_pair_energy(outcome, dataset, n: int) -> float:
    """Energy distance of real and generated pairs (x, x') as raw pixels (label-free, fixed)."""
    real = dataset.test_pairs(n)
    gen = torch.Generator(dataset.device).manual_seed(outcome.trainer.cfg.seed + 1)
    z, c, c_after = outcome.trainer.sample_pair_latents(n, gen)
    halves = (real.images, real.images_after, *(scores_mod.generate(outcome.trainer.G, z, x) for x in (c, c_after)))
    x, x_after, g, g_after = (h.flatten(1).double().cpu().numpy() for h in halves)
    return energy_distance(np.hstack([x, x_after]), np.hstack([g, g_after]))


def matched_edges(outcome, dataset, edges: Edges, n: int) -> tuple[list[int], Edges]:
    """The code -> factor matching of the model (|Spearman| of Q's codes of real images against the
    factors, one to one) and the candidate's edges renamed by it: evaluation only."""
    images, factors = dataset.test_factors(n)
    codes = scores_mod.q_codes(outcome.trainer.D, images.to(dataset.device)).cpu().numpy()
    matching = metrics.match_codes(codes, np.asarray(factors))
    rename = {f"q{i + 1}": f"q{j + 1}" for i, j in enumerate(matching)}
    return matching, tuple(sorted((rename[u], rename[v]) for u, v in edges))


def run_one(
    truth: str, seed: int, edges: Edges, args: argparse.Namespace, datasets: dict, deadline: float
) -> dict | None:
    """Train and score one candidate; None when the deadline stopped it (its checkpoint is kept)."""
    cfg = config(truth, seed, edges, args.steps, args.lambda_pair, args.device, args.n_eval)
    dataset = datasets.setdefault(truth, load_dataset(cfg))
    graph = resolve_graph(cfg, dataset)
    trainer = make_trainer(cfg, graph, dataset)
    checkpoint = checkpoint_path(args, truth, seed, edges)
    resumed_at = 0
    if checkpoint.exists():
        trainer.load(checkpoint)
        resumed_at = trainer.step
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    outcome = train_and_score(
        cfg,
        graph,
        dataset,
        trainer,
        extra_scores=EXTRA,
        on_log=lambda step, losses, trainer: time.monotonic() > deadline,
        checkpoint=lambda trainer: trainer.save(checkpoint),
    )
    if outcome.result.status == "stopped":
        return None
    row = {
        "truth": truth,
        "seed": seed,
        "graph": edges_text(edges),
        "steps": args.steps,
        "lambda_pair": args.lambda_pair,
        "status": outcome.result.status,
        "resumed_at": resumed_at,
        "seconds": round(time.time() - started, 1),  # training and the registry's scores
        "losses": outcome.result.losses,
    }
    if outcome.result.status == "completed":
        matching, renamed = matched_edges(outcome, dataset, edges, cfg.n_eval)
        row |= {k: outcome.scores.get(k) for k in ("struct_bic", "info_min", "agreement", "pair_energy")}
        row |= {k: v for k, v in outcome.scores.items() if k.startswith("pair_feature_energy")}
        row |= {
            "pixel_pair_energy": pixel_pair_energy(outcome, dataset, min(N_PIXEL, cfg.n_eval)),
            "matching": matching,
            "matched_graph": edges_text(renamed),
        }
    return row | {"seconds_total": round(time.time() - started, 1)}


def speed(steps: int, device: str) -> dict[str, float]:
    """Seconds per training step of the benchmark's net (collider truth and graph) without pairs
    and with them, after 10 warm-up steps, one thread: what the grid's cost is made of."""
    out = {}
    for lambda_pair in (0.0, 1.0):
        cfg = config("collider", 0, GRAPHS["collider"], 10**6, lambda_pair, device)
        dataset = load_dataset(cfg)
        trainer = make_trainer(cfg, resolve_graph(cfg, dataset), dataset)
        for _ in range(10):
            trainer.train_step()
        started = time.perf_counter()
        for _ in range(steps):
            losses = trainer.train_step()
        float(losses["loss/g"])  # wait for the device
        out[f"s_per_step/lambda_pair={lambda_pair:g}"] = (time.perf_counter() - started) / steps
    return out


# ---- the summary -------------------------------------------------------------------------------


def shape(edges: Edges) -> Edges:
    """A canonical form of the unlabelled DAG: the smallest relabelling of its edges."""
    forms = []
    for perm in itertools.permutations(NODES):
        rename = dict(zip(NODES, perm))
        forms.append(tuple(sorted((rename[u], rename[v]) for u, v in edges)))
    return min(forms)


# One candidate per shape, its canonical labelling (the collider's is the collider at q2, not the
# truth q1->q3<-q2). With exchangeable codes a pair score can only tell shapes apart, so these 6 runs
# carry what the 25 can: the truth's shape first (chance 1/6), and the matched verdict.
SHAPES = sorted({shape(d) for d in DAGS}, key=lambda e: (len(e), e))


def ranking(rows: list[dict], name: str) -> list[dict]:
    """The runs of one (truth, seed), best first by score ``name`` (rows without it dropped)."""
    sign = RANKED[name]
    usable = [r for r in rows if r.get(name) is not None and math.isfinite(r[name])]
    return sorted(usable, key=lambda r: -sign * r[name])


def judge(rows: list[dict], name: str, truth: Edges) -> dict | None:
    """One ranking's verdicts for one (truth, seed): the true DAG's rank, and what the top DAG is."""
    ranked = ranking(rows, name)
    if not ranked:
        return None
    top = ranked[0]
    top_edges = parse_edges(top["graph"])
    by_graph = {r["graph"]: i + 1 for i, r in enumerate(ranked)}
    true_row = next((r for r in ranked if r["graph"] == edges_text(truth)), None)
    return {
        "n": len(ranked),
        "top": top["graph"],
        "true_rank": by_graph.get(edges_text(truth)),
        "dag_first": top_edges == truth,
        "class_first": dag.markov_equivalent(top_edges, truth),
        "shape_first": shape(top_edges) == shape(truth),
        "matched_first": "matched_graph" in top and dag.markov_equivalent(parse_edges(top["matched_graph"]), truth),
        "gap": None if true_row is None else RANKED[name] * (top[name] - true_row[name]),  # >= 0
    }


def chance(truth: Edges, graphs: list[Edges] = DAGS) -> tuple[float, float, float]:
    """Shares of the candidate ``graphs`` (default: the 25 DAGs) that are the truth, in its Markov
    class, of its shape: each verdict's chance when the top candidate is drawn at random."""
    return (
        sum(d == truth for d in graphs) / len(graphs),
        sum(dag.markov_equivalent(d, truth) for d in graphs) / len(graphs),
        sum(shape(d) == shape(truth) for d in graphs) / len(graphs),
    )


def summarize(rows: list[dict]) -> str:
    """summary.md: per truth and score, over seeds, how often the top DAG is right, in four senses."""
    done = [r for r in rows if r["status"] == "completed"]
    lines = [
        "| truth | score | seeds | true DAG first | true class first | truth's shape first | matched top in class "
        "| true DAG's rank per seed | top DAG per seed | top-vs-truth gap, mean (sd) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for truth_name in TRUTHS:
        truth = GRAPHS[truth_name]
        per_seed = {s: [r for r in done if r["truth"] == truth_name and r["seed"] == s] for s in SEEDS}
        per_seed = {s: rs for s, rs in per_seed.items() if rs}
        if not per_seed:
            continue
        run = sorted({parse_edges(r["graph"]) for rs in per_seed.values() for r in rs})
        p_dag, p_class, p_shape = chance(truth, run)  # over the candidates this truth's seeds ran
        for name in RANKED:
            verdicts = [v for rs in per_seed.values() if (v := judge(rs, name, truth))]
            if not verdicts:
                continue
            k = len(verdicts)
            count = dict.fromkeys(("dag_first", "class_first", "shape_first", "matched_first"), 0)
            for v, key in itertools.product(verdicts, count):
                count[key] += v[key]
            gaps = [v["gap"] for v in verdicts if v["gap"] is not None]
            gap = f"{np.mean(gaps):.4g} ({np.std(gaps):.2g})" if gaps else "n/a"
            ranks = ", ".join(f"{v['true_rank'] or '-'}/{v['n']}" for v in verdicts)
            lines.append(
                f"| {truth_name} | {name} | {k} | {count['dag_first']}/{k} (chance {p_dag:.2f}) "
                f"| {count['class_first']}/{k} ({p_class:.2f}) | {count['shape_first']}/{k} ({p_shape:.2f}) "
                f"| {count['matched_first']}/{k} | {ranks} | {'; '.join(v['top'] for v in verdicts)} | {gap} |"
            )
    lines += ["", "Per run, best first by pair_feature_energy:", ""]
    lines += ["| truth | seed | graph | pair_feature_energy | /single | pixel | pair_energy | struct_bic | info_min "
              "| matched graph |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (truth_name, seed), group in itertools.groupby(
        sorted(done, key=lambda r: (r["truth"], r["seed"])), key=lambda r: (r["truth"], r["seed"])
    ):
        for r in ranking(list(group), "pair_feature_energy"):
            values = [r.get(k) for k in ("pair_feature_energy", "pair_feature_energy/single", "pixel_pair_energy")]
            values += [r.get(k) for k in ("pair_energy", "struct_bic", "info_min")]
            cells = " | ".join("n/a" if v is None else f"{v:.4g}" for v in values)
            lines.append(f"| {truth_name} | {seed} | {r['graph']} | {cells} | {r.get('matched_graph', 'n/a')} |")
    return "\n".join(lines)


# ---- the grid ----------------------------------------------------------------------------------


def candidates(text: str) -> list[Edges]:
    """``all`` (the 25 DAGs), ``shapes`` (:data:`SHAPES`: one DAG per unlabelled shape, 6) or DAGs as
    text separated by ';' ("q1->q3, q2->q3; (no edges)")."""
    if text == "all":
        return DAGS
    if text == "shapes":
        return SHAPES
    chosen = [tuple(sorted(parse_edges(part.strip()))) for part in text.split(";") if part.strip()]
    unknown = [edges_text(e) for e in chosen if e not in DAGS]
    if unknown:
        raise SystemExit(
            f"--candidates: {', '.join(unknown)} is not a DAG over q1..q3; give DAGs like 'q1->q3, q2->q3'"
        )
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lambda-pair", type=float, default=1.0)
    parser.add_argument("--truths", default=",".join(TRUTHS), help="comma-separated truths (default: all three)")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="comma-separated seeds")
    parser.add_argument(
        "--candidates",
        default="all",
        help="'all' (25 DAGs), 'shapes' (one DAG per unlabelled shape: 6) or DAGs separated by ';'",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-eval", type=int, default=2000, help="held-out real images and pairs the scores read")
    parser.add_argument("--out", type=Path, default=Path("docs/results/pairs-recovery/results.jsonl"))
    parser.add_argument("--runs", type=Path, default=Path("runs/pairs-recovery"), help="checkpoints of unfinished runs")
    parser.add_argument("--shard", default="0/1", help="I/N: this process runs every N-th run from I")
    parser.add_argument("--max-minutes", type=float, default=math.inf, help="stop (checkpointed) after this long")
    parser.add_argument("--summarize", action="store_true", help="write summary.md beside --out and stop")
    parser.add_argument("--speed", type=int, metavar="STEPS", help="print s/step with and without pairs and stop")
    return parser.parse_args(argv)


def shard(text: str) -> tuple[int, int]:
    """ "I/N" -> (I, N), 0 <= I < N."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or not int(parts[0]) < int(parts[1]):
        raise SystemExit(f"--shard {text!r}: give I/N with 0 <= I < N, e.g. 0/2")
    return int(parts[0]), int(parts[1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    deadline = time.monotonic() + 60 * args.max_minutes
    args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    if args.summarize:
        (args.out.parent / "summary.md").write_text(summarize(rows) + "\n")
        print(summarize(rows))
        return
    torch.set_num_threads(1)  # one thread per process: run shards to use more cores
    if args.speed:
        print(json.dumps(speed(args.speed, args.device)))
        return
    index, count = shard(args.shard)
    done = {(r["truth"], r["seed"], r["graph"], r["steps"], r["lambda_pair"]) for r in rows}
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = list(itertools.product(seeds, args.truths.split(","), candidates(args.candidates)))[index::count]
    datasets: dict = {}
    for seed, truth, edges in grid:  # seeds outermost: a partial grid holds whole seeds first
        if (truth, seed, edges_text(edges), args.steps, args.lambda_pair) in done:
            continue
        if time.monotonic() > deadline:
            break
        row = run_one(truth, seed, edges, args, datasets, deadline)
        if row is None:
            print(f"stopped by --max-minutes: {truth} seed {seed} {edges_text(edges)} (checkpointed)", flush=True)
            break
        with args.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        checkpoint_path(args, truth, seed, edges).unlink(missing_ok=True)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
