"""Do two DAGs of one Markov class of the q part train alike? (issue 13: is class search exact?)

    OMP_NUM_THREADS=1 python bench/class_members.py --seeds 0 1 2 --out docs/results/class_members.json

Trains every DAG of the chain's q class (q1->q2->q3, q3->q2->q1 and the fork at q2, each with the
ci->qi edges) on `shapes` with the chain as its true graph, under the defaults of the `quick`
preset, and prints per DAG the seed mean and spread of `struct_bic` (score-equivalent on one table
of codes) and of `info_min` and `agreement`. If the members' `struct_bic` differ by more than the
seed spread, class search (one DAG per class) is an approximation in practice, not only in theory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from gan.train import TrainConfig
from structsearch.config import RunConfig, apply_preset
from structsearch.graph import Graph
from structsearch.trial import load_dataset, resolve_graph, train_and_score

MEMBERS = {
    "chain q1->q2->q3": "q1->q2, q2->q3",
    "reversed q3->q2->q1": "q3->q2, q2->q1",
    "fork at q2": "q2->q1, q2->q3",
}
SCORES = ("struct_bic", "info_min", "agreement")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("docs/results/class_members.json"))
    args = parser.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["member"], r["seed"], r["steps"]) for r in rows}
    dataset = load_dataset(RunConfig(dataset="shapes", shapes_graph="chain", device="cpu"))
    for seed in args.seeds:  # interleaved: every member at one seed before the next seed
        for member, edges in MEMBERS.items():
            if (member, seed, args.steps) in done:
                continue
            train = apply_preset(TrainConfig(), "quick")
            train = dataclasses.replace(train, n_steps=args.steps, seed=seed, checkpoint_every=0)
            cfg = RunConfig(
                dataset="shapes",
                shapes_graph="chain",
                device="cpu",
                graph="c1->q1, c2->q2, c3->q3, " + edges,
                train=train,
            )
            graph: Graph = resolve_graph(cfg, dataset)
            outcome = train_and_score(cfg, graph, dataset)
            rows.append({"member": member, "seed": seed, "steps": args.steps, "scores": outcome.scores})
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1) + "\n")  # nothing lost when killed
            print(member, seed, {k: round(outcome.scores[k], 4) for k in SCORES}, flush=True)
    print(f"\n| member | {' | '.join(SCORES)} |\n|---|" + "---|" * len(SCORES))
    for member in MEMBERS:
        cells = []
        for name in SCORES:
            values = [r["scores"][name] for r in rows if r["member"] == member and r["steps"] == args.steps]
            cells.append(f"{np.mean(values):.4f} ± {np.std(values):.4f} (n={len(values)})")
        print(f"| {member} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
