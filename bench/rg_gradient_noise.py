"""How much of R_G's per-batch gradient is the batch fit's own noise? (issue 15)

    python bench/rg_gradient_noise.py RUN [RUN ...] [--batches 32]

For each run folder (its last checkpoint, G and D in train mode as in training) and ``--batches``
fresh batches of 128 generated images, the gradient on G's parameters (as in G's step) and on
D/Q's (as in D/Q's step, fake images detached) of:

* ``batch``: the independent graph's deviance as the trainer computes it by default, every
  family fitted on the batch itself (``--struct-fit batch``);
* ``pooled``: the same deviance with every family fitted on all the batches at once (the pool
  that ``--struct-fit pooled`` keeps, here filled with every probe batch and frozen): out of
  sample, so no part of it is the batch fitting its own noise;
* ``info``: InfoGAN's L_info, for scale.

Per kind it prints the mean per-batch gradient norm, the norm of the mean gradient over the
batches, and ``noise``: the share of the mean squared per-batch norm that is spread around that
mean (1 - |mean|^2 / mean |g|^2; about 1 - 1/batches for pure noise). ``cos`` is the cosine of
the batch fit's mean gradient with the pooled fit's: how far the batch fit's average pushes where
the population fit does.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gan.losses import info_loss
from gan.structure import StructuralLoss
from structsearch.graph import preset
from structsearch.trial import load_run


def _flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def probe(run: Path, n_batches: int = 32, batch: int = 128) -> dict:
    _, _, _, trainer = load_run(run, "cpu")
    spec, t = trainer.spec, trainer.cfg
    trainer.G.train()
    trainer.D.train()
    independent = preset("independent", spec).parents()
    options = dict(form="deviance", floor=t.struct_floor, edge_cap=t.struct_edge_cap, correction=t.struct_correction)
    losses = {
        "batch": StructuralLoss(spec, independent, **options),
        "pooled": StructuralLoss(spec, independent, **options, fit="pooled", pool_decay=1 - 1e-6),
    }
    gen = torch.Generator().manual_seed(7)
    draws = [trainer.prior.sample(batch, gen, torch.device("cpu")) for _ in range(n_batches)]
    with torch.no_grad():  # the pool: every probe batch's moments at once, then frozen
        c_all = torch.cat([c for _, c in draws])
        q_all = torch.cat([trainer.D(trainer.G(z, c))[1] for z, c in draws]).float()
        losses["pooled"](c_all, q_all)
        pool = losses["pooled"].state_dict()
        # the pool is the whole probe: its bias-corrected average, kept with a bias correction of 1
        scale = 1 - losses["pooled"].pool_decay
        frozen = {"calls": 10**9, "pool": {key: value / scale for key, value in pool["pool"].items()}}
    sides = {"G": list(trainer.G.parameters()), "DQ": list(trainer.D.parameters())}
    grads = {(kind, side): [] for kind in ("batch", "pooled", "info") for side in sides}
    values = {"batch": [], "pooled": []}
    for z, c in draws:
        fake = trainer.G(z, c)
        for side, params in sides.items():
            _, q = trainer.D(fake if side == "G" else fake.detach())
            q = q.float()
            terms = {"info": info_loss(spec, c, q)}
            for kind, loss in losses.items():
                if kind == "pooled":
                    loss.load_state_dict(frozen)
                terms[kind] = loss(c, q)
                if side == "G":
                    values[kind].append(float(terms[kind].detach()))
            for kind, term in terms.items():
                g = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
                grads[kind, side].append(_flat([torch.zeros_like(p) if x is None else x for p, x in zip(params, g)]))
    out = {"R_G": {k: sum(v) / len(v) for k, v in values.items()}}
    means = {}
    for (kind, side), gs in grads.items():
        g = torch.stack(gs).double()
        mean = g.mean(0)
        means[kind, side] = mean
        sq = g.pow(2).sum(1).mean()
        out[f"{kind}/{side}"] = {
            "norm": float(g.norm(dim=1).mean()),
            "mean_norm": float(mean.norm()),
            "noise": float(1 - mean.pow(2).sum() / sq),
        }
    for side in sides:
        a, b = means["batch", side], means["pooled", side]
        out[f"cos/{side}"] = float(a @ b / (a.norm() * b.norm()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--batches", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        r = probe(run, args.batches)
        parts = [f"R_G batch {r['R_G']['batch']:.4f} pooled {r['R_G']['pooled']:.4f}"]
        for key, v in r.items():
            if isinstance(v, dict) and "norm" in v:
                parts.append(f"{key}: norm {v['norm']:.3g} mean {v['mean_norm']:.3g} noise {v['noise']:.3f}")
            elif key.startswith("cos"):
                parts.append(f"{key} {v:.3f}")
        print(f"{run.name}: " + "  ".join(parts), flush=True)


if __name__ == "__main__":
    main()
