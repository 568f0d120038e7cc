"""Aggregate training steps/s of K trials stacked in one process, against the same K trials stepped in turn.

    python bench/stacked_speed.py [--device cpu|cuda] [--ks 1,4,16] [--batch 64] [--width 1] [--steps 20]
                                  [--rounds 3] [--threads 2] [--variants infogan,rg] [--out FILE]

For each K and variant, K trainers of the `paper` net (InfoGAN-MNIST: 28x28, mnist codes, width 1
unless ``--width``), each with its own seed and its own graph (the mnist presets in turn, as a
search's trials differ), are timed two ways in interleaved rounds:

* stacked: one :class:`gan.stacked.StackedTrainer` step trains all K (one kernel stream);
* separate: one ``Trainer.train_step`` of each of the K in turn, which costs per step what K trials
  trained one after another cost (K processes sharing a GPU overlap their streams instead: the
  GPU script measures those).

Aggregate steps/s is K x steps / seconds (the median round). Variants: ``infogan`` (lambda_struct
0, no R_G) and ``rg`` (R_G, deviance, lambda_struct 0.1). ``--count-ops`` also counts the aten ops
one stacked step and K separate steps dispatch (a TorchDispatchMode; the count is the same on
every device up to fused Adam), all of them and those that compute (views launch no GPU kernel):
on a GPU a small net is launch-bound, so the computing ops are its cost. The nets and Adam cost the
same ops whatever K; R_G's per-model loop costs K times its ops. Real images are a resident random
tensor of MNIST's shape, as in bench/train_speed.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ imports bench/

from bench.op_count import OpCounter
from gan.latents import get_spec
from gan.stacked import StackedTrainer
from gan.train import TrainConfig, Trainer
from structsearch.graph import load_graph

GRAPHS = ("collider", "chain", "fork", "complete", "entangled-inputs", "independent")
VARIANTS = {"infogan": 0.0, "rg": 0.1}  # lambda_struct


def make_trainers(k: int, cfg: TrainConfig, device: torch.device) -> list[Trainer]:
    """K trainers with seeds 0..K-1 and the mnist graph presets in turn, on one resident random data set."""
    spec = get_spec("mnist")
    data = torch.rand(4096, 1, 28, 28, device=device) * 2 - 1

    def sample(b: int, g: torch.Generator) -> torch.Tensor:
        return data[torch.randint(len(data), (b,), generator=g, device=device)]

    return [
        Trainer(
            dataclasses.replace(cfg, seed=i),
            spec,
            load_graph(GRAPHS[i % len(GRAPHS)], spec).parents(),
            sample,
            (1, 28, 28),
            device,
        )
        for i in range(k)
    ]


def seconds(step: Callable[[], object], n_steps: int, device: torch.device) -> float:
    """Wall time of ``n_steps`` calls run back to back, with one device sync at each end."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n_steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def ops_per_call(step: Callable[[], object]) -> dict[str, int]:
    with OpCounter() as counter:
        step()
    return {"all": counter.total(), "compute": counter.compute}


def measure(k: int, cfg: TrainConfig, device: torch.device, args: argparse.Namespace) -> dict:
    """One row: stacked and separate aggregate steps/s (median of interleaved rounds), ops if asked."""
    stacked = StackedTrainer(make_trainers(k, cfg, device))
    separate = make_trainers(k, cfg, device)

    def one_round() -> None:
        for trainer in separate:
            trainer.train_step()

    for _ in range(args.warmup):
        stacked.train_step()
        one_round()
    times: dict[str, list[float]] = {"stacked": [], "separate": []}
    for _ in range(args.rounds):
        times["stacked"].append(seconds(stacked.train_step, args.steps, device))
        times["separate"].append(seconds(one_round, args.steps, device))
    row = {f"{name}_steps_per_s": k * args.steps / statistics.median(t) for name, t in times.items()}
    row |= {f"{name}_seconds": t for name, t in times.items()}
    row["speedup"] = row["stacked_steps_per_s"] / row["separate_steps_per_s"]
    if args.count_ops:
        row["stacked_ops_per_step"] = ops_per_call(stacked.train_step)
        row["separate_ops_per_k_steps"] = ops_per_call(one_round)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ks", default="1,4,16", help="comma-separated stack sizes")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=float, default=1.0, help="1: the paper net; smaller for a CPU")
    parser.add_argument("--steps", type=int, default=20, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="infogan,rg", help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--count-ops", action="store_true", help="also count aten ops per step")
    parser.add_argument("--out", help="JSON file (default: docs/results/stacked_speed_<device>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for variant in args.variants.split(","):
        cfg = TrainConfig(batch_size=args.batch, width=args.width, lambda_struct=VARIANTS[variant])
        for k in (int(x) for x in args.ks.split(",")):
            row = {"variant": variant, "k": k} | measure(k, cfg, device, args)
            rows.append(row)
            ops = ""
            if args.count_ops:
                st, sep = row["stacked_ops_per_step"], row["separate_ops_per_k_steps"]
                ops = f"; aten ops (computing) stacked {st['all']} ({st['compute']}), separate {sep['all']} ({sep['compute']})"
            print(
                f"{variant:>7} K={k:>2}: stacked {row['stacked_steps_per_s']:7.1f} steps/s, "
                f"separate {row['separate_steps_per_s']:7.1f} steps/s (x{row['speedup']:.2f}){ops}",
                flush=True,
            )
    out = Path(args.out or f"docs/results/stacked_speed_{device.type}.json")
    info = dict(
        device=str(device),
        gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        threads=args.threads,
        torch=torch.__version__,
        machine=platform.machine(),
        batch=args.batch,
        width=args.width,
        steps=args.steps,
        rounds=args.rounds,
        rows=rows,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
