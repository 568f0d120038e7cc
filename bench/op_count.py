"""How many aten ops one training step dispatches: the launch count that bounds a small net on a GPU.

    python bench/op_count.py [--device cpu|cuda] [--batch 128] [--out docs/results/speed/op_count_cpu.json]

On a GPU each dispatched op is at least one kernel launch (5-10 us each), so a step whose
arithmetic takes less than its launches is launch-bound and its speed is its op count. The count
is taken with a :class:`~torch.utils._python_dispatch.TorchDispatchMode`, which sees every op that
reaches the aten dispatcher below autograd: the forward, the backward (the autograd engine carries
the mode to its threads) and the optimizer steps; views and in-place updates count too, since each
is a dispatch. It does not depend on the device, so a CPU count tells the GPU's launch count,
up to fused optimizers (Adam is ``fused`` on CUDA, one op per parameter group instead of a
foreach chain).

Steps of the `paper` net (InfoGAN-MNIST, width 1) are counted after two warm-up steps: R_G on
the paper's entangled graph (q2, q3 -> q4 on cat10,cont,cont,cont; bench/paper_mnist.sh) and R_G
on the collider of the mnist codes (q1, q2 -> q3), each beside plain InfoGAN (lambda_struct 0)
on the same codes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gan.latents import get_spec
from gan.train import TrainConfig, Trainer
from structsearch.graph import load_graph

# (spec, graph) of each counted step; None: plain InfoGAN.
PAPER_CODES = "cat10,cont,cont,cont;noise=62"
PAPER_GRAPH = "c1->q1, c2->q2, c3->q3, c4->q4, q2->q4, q3->q4"
CASES: dict[str, tuple[str, str | None]] = {
    "plain_paper_codes": (PAPER_CODES, None),
    "paper_graph": (PAPER_CODES, PAPER_GRAPH),
    "plain_mnist": ("mnist", None),
    "collider_mnist": ("mnist", "collider"),
}


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched while it is active, by overload packet (``aten.mm``)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object], n_calls: int = 1) -> Counter[str]:
    """aten ops per call of ``fn`` (the total over ``n_calls`` calls, divided by ``n_calls``)."""
    counter = OpCounter()
    with counter:
        for _ in range(n_calls):
            fn()
    return Counter({name: count // n_calls for name, count in counter.counts.items()})


def make_trainer(codes: str, graph: str | None, batch: int, device: torch.device) -> Trainer:
    """A Trainer of the `paper` net on resident random MNIST-shaped data; graph None: plain InfoGAN."""
    spec = get_spec(codes)
    parents = load_graph(graph, spec).parents() if graph else {}
    cfg = dataclasses.replace(TrainConfig(batch_size=batch), lambda_struct=0.1 if graph else 0.0)
    data = torch.rand(1024, 1, 28, 28, device=device) * 2 - 1

    def sample_real(b: int, g: torch.Generator) -> torch.Tensor:
        return data[torch.randint(len(data), (b,), generator=g, device=device)]

    return Trainer(cfg, spec, parents, sample_real, (1, 28, 28), device)


def step_ops(codes: str, graph: str | None, batch: int, device: torch.device, n_steps: int = 3) -> Counter[str]:
    """aten ops of one ``Trainer.train_step``, after two warm-up steps (lazy state such as Adam's)."""
    trainer = make_trainer(codes, graph, batch, device)
    for _ in range(2):
        trainer.train_step()
    return count_ops(trainer.train_step, n_steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default="docs/results/speed/op_count_cpu.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = {}
    for name, (codes, graph) in CASES.items():
        counts = step_ops(codes, graph, args.batch, device)
        rows[name] = {"codes": codes, "graph": graph, "ops": sum(counts.values()), "top": dict(counts.most_common(12))}
    for name, row in rows.items():  # against the plain step of the same codes
        row["ratio_to_plain"] = row["ops"] / next(r["ops"] for r in rows.values() if r["codes"] == row["codes"])
        print(f"{name:>15}: {row['ops']:5d} aten ops per step, {row['ratio_to_plain']:.2f}x plain", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"device": str(device), "torch": torch.__version__, "batch": args.batch, "rows": rows}
    out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
