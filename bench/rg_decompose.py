"""What does the independent graph's deviance ask of a trained model? Its parts, on fresh batches (issue 15).

    python bench/rg_decompose.py RUN [RUN ...]

For each run folder (its last checkpoint, G and D in train mode as in training), on 40 fresh
batches of 128 generated images:

* ``R_G``: the mean per-batch deviance of the independent graph (every q_i <- c_i), as the trainer
  computes it (unbiased correction). The progress bar's ``struct`` is lower: it is measured in G's
  step, after D/Q's update on the same batch;
* per continuous code q_j, on all 5,120 samples at once (so no small-batch fit), the population
  deviance 1/2 log(RSS(q_j | c_j) / RSS(q_j | full)) and the part of it each group of the full set
  explains alone: the fed categorical code (one-hot), Q's categorical reading (softmax), the other
  fed continuous code, and the earlier continuous reading; ``r2_own`` is the R^2 of q_j on c_j.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from gan.structure import StructuralLoss
from structsearch.graph import preset
from structsearch.trial import load_run


def _rss(y: np.ndarray, *columns: np.ndarray) -> float:
    x = np.column_stack([*columns, np.ones(len(y))])
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    return float(np.mean((y - x @ beta) ** 2))


def _half_log_ratio(y: np.ndarray, own: np.ndarray, *extra: np.ndarray) -> float:
    return 0.5 * np.log(_rss(y, own) / _rss(y, own, *extra))


@torch.no_grad()
def decompose(run: Path, n_batches: int = 40, batch: int = 128) -> dict:
    _, graph, _, trainer = load_run(run, "cpu")
    spec, t = trainer.spec, trainer.cfg
    independent = preset("independent", spec).parents()
    loss = StructuralLoss(
        spec, independent, "deviance", t.struct_floor, edge_cap=t.struct_edge_cap, correction=t.struct_correction
    )
    kinds = [code.kind for code in spec.codes]
    if kinds.count("categorical") != 1:
        raise SystemExit(f"{run}: this probe reads one categorical code and continuous ones; its codes are {kinds}")
    gen = torch.Generator().manual_seed(7)
    cs, qs, values = [], [], []
    for _ in range(n_batches):
        z, c = trainer.prior.sample(batch, gen, torch.device("cpu"))
        _, q = trainer.D(trainer.G(z, c))
        values.append(float(loss(c, q.float())))
        cs.append(spec.split(c))
        qs.append(spec.split(q.float()))
    c_parts = [torch.cat(parts).numpy() for parts in zip(*cs)]
    q_parts = [torch.cat(parts).numpy() for parts in zip(*qs)]
    cat = kinds.index("categorical")
    onehot = c_parts[cat][:, 1:]
    logits = q_parts[cat]
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft = (soft / soft.sum(1, keepdims=True))[:, 1:]
    conts = [i for i, k in enumerate(kinds) if k == "continuous"]
    out = {"R_G": float(np.mean(values))}
    for n, j in enumerate(conts):
        y, own = q_parts[j][:, 0], c_parts[j][:, 0]
        others = [c_parts[i][:, 0] for i in conts if i != j]
        earlier = [q_parts[i][:, 0] for i in conts[:n]]
        part = {
            "total": _half_log_ratio(y, own, onehot, soft, *others, *earlier),
            "fed_category": _half_log_ratio(y, own, onehot),
            "read_category": _half_log_ratio(y, own, soft),
            "other_code": _half_log_ratio(y, own, *others) if others else 0.0,
            "earlier_reading": _half_log_ratio(y, own, *earlier) if earlier else 0.0,
            "r2_own": 1 - _rss(y, own) / float(np.var(y)),
        }
        out[f"q{j + 1}"] = part
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        result = decompose(run)
        parts = "  ".join(
            f"{node}: " + ", ".join(f"{k} {v:.4f}" for k, v in value.items())
            for node, value in result.items()
            if node != "R_G"
        )
        print(f"{run.name}: R_G {result['R_G']:.4f}  {parts}", flush=True)


if __name__ == "__main__":
    main()
