"""How many aten ops one training step dispatches: the launch count that bounds a small net on a GPU.

    python bench/op_count.py [--device cpu|cuda] [--batch 128] [--out docs/results/speed/op_count_cpu.json]

On a GPU each dispatched op is at least one kernel launch (5-10 us each), so a step whose
arithmetic takes less than its launches is launch-bound and its speed is its op count. The count
is taken with a :class:`~torch.utils._python_dispatch.TorchDispatchMode`, which sees every op that
reaches the aten dispatcher below autograd: the forward, the backward (the autograd engine carries
the mode to its threads) and the optimizer steps; views and in-place updates count too, since each
is a dispatch, and the computing ops (not views, which launch no kernel) are counted apart. It does
not depend on the device (Adam is ``fused`` on CPU and CUDA alike), so a CPU count tells the GPU's
launch count.

Steps of the `paper` net (InfoGAN-MNIST, width 1) are counted after two warm-up steps: R_G on
the paper's entangled graph (q2, q3 -> q4 on cat10,cont,cont,cont; bench/paper_mnist.sh) and R_G
on the collider of the mnist codes (q1, q2 -> q3), each beside plain InfoGAN (lambda_struct 0)
on the same codes.
"""

from __future__ import annotations

import argparse
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
    """Counts every aten op dispatched while it is active, by overload packet (``aten.mm``), and
    how many of them compute (not a view: on a GPU a view launches no kernel) and how many ran
    inside an optimizer step (``watch`` an optimizer to tell)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.compute = self.optimizer = 0
        self._in_optimizer = False

    def watch(self, optimizer: torch.optim.Optimizer) -> None:
        """Count the ops of ``optimizer.step()`` as optimizer ops from now on."""
        optimizer.register_step_pre_hook(lambda *_: setattr(self, "_in_optimizer", True))
        optimizer.register_step_post_hook(lambda *_: setattr(self, "_in_optimizer", False))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        self.compute += not (func.is_view or func.overloadpacket is torch.ops.aten._unsafe_view)
        self.optimizer += self._in_optimizer
        return func(*args, **(kwargs or {}))

    def total(self) -> int:
        return sum(self.counts.values())


def count_ops(fn: Callable[[], object], counter: OpCounter | None = None) -> OpCounter:
    """The aten ops one call of ``fn`` dispatches (into ``counter``, if given: one that watches optimizers)."""
    counter = counter if counter is not None else OpCounter()
    with counter:
        fn()
    return counter


def make_trainer(codes: str, graph: str | None, batch: int, device: torch.device, width: float = 1.0) -> Trainer:
    """A Trainer of the `paper` net (or another ``width``) on resident random MNIST-shaped data;
    graph None: plain InfoGAN."""
    spec = get_spec(codes)
    parents = load_graph(graph, spec).parents() if graph else {}
    cfg = TrainConfig(batch_size=batch, width=width, lambda_struct=0.1 if graph else 0.0)
    data = torch.rand(1024, 1, 28, 28, device=device) * 2 - 1

    def sample_real(b: int, g: torch.Generator) -> torch.Tensor:
        return data[torch.randint(len(data), (b,), generator=g, device=device)]

    return Trainer(cfg, spec, parents, sample_real, (1, 28, 28), device)


def step_ops(codes: str, graph: str | None, batch: int, device: torch.device) -> dict:
    """aten ops of one ``Trainer.train_step``, after two warm-up steps (lazy state such as Adam's):
    all, computing, and inside the two Adam steps."""
    trainer = make_trainer(codes, graph, batch, device)
    for _ in range(2):
        trainer.train_step()
    counter = OpCounter()
    counter.watch(trainer.opt_g)
    counter.watch(trainer.opt_d)
    count_ops(trainer.train_step, counter)
    return {
        "codes": codes,
        "graph": graph,
        "ops": counter.total(),
        "compute_ops": counter.compute,
        "optimizer_ops": counter.optimizer,
        "top": dict(counter.counts.most_common(12)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--out", default="docs/results/speed/op_count_cpu.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = {name: step_ops(codes, graph, args.batch, device) for name, (codes, graph) in CASES.items()}
    for name, row in rows.items():  # against the plain step of the same codes
        plain = next(r for r in rows.values() if r["codes"] == row["codes"])
        row["ratio_to_plain"] = row["ops"] / plain["ops"]
        row["compute_ratio_to_plain"] = row["compute_ops"] / plain["compute_ops"]
        print(
            f"{name:>17}: {row['ops']:5d} aten ops per step ({row['compute_ops']} computing, "
            f"{row['optimizer_ops']} in Adam), {row['ratio_to_plain']:.2f}x plain "
            f"({row['compute_ratio_to_plain']:.2f}x computing)",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    info = {"device": str(device), "torch": torch.__version__, "batch": args.batch, "rows": rows}
    out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
