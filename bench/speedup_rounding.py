"""How far issue 17's CPU speed-ups move the losses of a few steps, against the rounding yardstick.

    python bench/speedup_rounding.py [--batches 64,128] [--steps 5] [--out docs/results/speed/rounding.json]

The speed-ups (channels_last convs, fused Adam, oneDNN linear layers) sum in another order, so
they change the numbers by float rounding only; Adam then amplifies any rounding (its first
updates are about lr * sign(gradient), whatever the gradient's size), so after the first step no
two summation orders agree to 1e-5. The yardstick is a change nobody calls a change: the same
step before the speed-ups at 2 threads instead of 1 (MKL splits its sums another way). For the
`paper` net, R_G on the paper graph, each loss's difference at each step is printed for now vs
before (1 thread) and for before at 2 threads vs 1. loss/d of the first step is a pure forward pass
(no update yet); every other value follows at least one Adam step.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ and tests/ import each other

import torch

from bench.peer_loop import PAPER_CODES, PAPER_GRAPH
from gan.latents import get_spec
from gan.train import TrainConfig, Trainer
from structsearch.graph import load_graph
from tests.reference import plain_layers


def losses(batch: int, n_steps: int, before: bool, threads: int) -> list[dict[str, float]]:
    torch.set_num_threads(threads)
    spec = get_spec(PAPER_CODES)
    images = torch.rand(1024, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    trainer = Trainer(
        TrainConfig(batch_size=batch),
        spec,
        load_graph(PAPER_GRAPH, spec).parents(),
        lambda b, g: images[torch.randint(len(images), (b,), generator=g)],
        (1, 28, 28),
        torch.device("cpu"),
    )
    if before:
        plain_layers(trainer)
    return [{k: float(v) for k, v in trainer.train_step().items()} for _ in range(n_steps)]


def differences(a: list[dict[str, float]], b: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per loss, per step: the relative difference (loss/d, loss/g, loss/info: values of 2-5 nats)
    or the absolute one (loss/struct, R_G, near zero, so a relative difference means nothing)."""
    keys = ("loss/d", "loss/g", "loss/info", "loss/struct")
    return {k: [abs(x[k] - y[k]) / (1.0 if k == "loss/struct" else abs(y[k])) for x, y in zip(a, b)] for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--out", default="docs/results/speed/rounding.json")
    args = parser.parse_args()
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        now, before = losses(batch, args.steps, False, 1), losses(batch, args.steps, True, 1)
        before_2 = losses(batch, args.steps, True, 2)
        row = {
            "batch": batch,
            "now_vs_before": differences(now, before),
            "before_2_threads_vs_1": differences(before_2, before),
        }
        rows.append(row)
        for key in ("now_vs_before", "before_2_threads_vs_1"):
            for loss, values in row[key].items():
                kind = "abs" if loss == "loss/struct" else "rel"
                print(f"batch {batch} {key:>22} {loss:>12} ({kind}): " + " ".join(f"{v:.1e}" for v in values))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
