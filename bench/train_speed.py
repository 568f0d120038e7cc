"""Training throughput of the `paper` net (InfoGAN-MNIST, 28x28, width 1) and the regularizer's overhead.

    python bench/train_speed.py [--device cpu|cuda] [--steps 20] [--threads 2] [--out docs/results/train_speed_cpu.json]

For batch 64 and 128, fp32 and bf16, it times full training steps (one D/Q and one G update)
with lambda_struct = 0 (plain InfoGAN: the regularizer is not computed) and with the graph
q1->q3, q2->q3 (on the mnist codes), after warm-up steps, and reports steps/s, images/s and the
regularizer's overhead as a ratio of step times. Data content does not change the arithmetic, so
real images are replaced by a resident random tensor of MNIST's shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from gan.latents import get_spec
from gan.structure import StructuralLoss
from gan.train import TrainConfig, Trainer
from structsearch.graph import load_graph


def time_steps(cfg: TrainConfig, parents, device: torch.device, n_steps: int, warmup: int = 3) -> float:
    """Seconds per training step, after warmup: on a CPU the median of n_steps; on a GPU the mean
    over n_steps run back to back with one sync at each end, as training runs, so a host sync
    inside a step (which stalls the queue) shows in the time."""
    spec = get_spec("mnist")
    data = torch.rand(4096, 1, 28, 28, device=device) * 2 - 1
    trainer = Trainer(
        cfg,
        spec,
        parents,
        lambda b, g: data[torch.randint(len(data), (b,), generator=g, device=device)],
        (1, 28, 28),
        device,
    )
    for _ in range(warmup):
        trainer.train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(n_steps):
            trainer.train_step()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / n_steps
    times = []
    for _ in range(n_steps):
        start = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def time_regularizer(batch: int, device: torch.device, n_calls: int = 50) -> float:
    """Seconds per forward+backward of R_G alone (collider graph, mnist codes): a direct, low-noise
    measure of its cost; a training step calls it twice (D/Q update and G update)."""
    spec = get_spec("mnist")
    loss = StructuralLoss(spec, load_graph("collider", "mnist").parents(), "deviance")
    _, c = spec.sample(batch, torch.Generator().manual_seed(0))
    q = torch.randn(batch, spec.code_dim, device=device, requires_grad=True)
    c = c.to(device)
    times = []
    for _ in range(n_calls):
        start = time.perf_counter()
        loss(c, q).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated")
    parser.add_argument("--out", default="docs/results/train_speed_cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    collider = load_graph("collider", "mnist").parents()
    rows = []
    for batch in (64, 128):
        for precision in args.precisions.split(","):
            base = TrainConfig(batch_size=batch, precision=precision, width=1.0)
            plain = time_steps(dataclasses.replace(base, lambda_struct=0.0), {}, device, args.steps)
            struct = time_steps(base, collider, device, args.steps)
            row = dict(
                batch=batch,
                precision=precision,
                s_per_step_plain=plain,
                s_per_step_struct=struct,
                images_per_s_plain=batch / plain,
                images_per_s_struct=batch / struct,
                overhead=struct / plain - 1,
            )
            row["s_per_regularizer_call"] = time_regularizer(batch, device)
            row["regularizer_share_of_plain_step"] = 2 * row["s_per_regularizer_call"] / plain
            rows.append(row)
            print(
                f"batch {batch:>3} {precision}: plain {batch / plain:7.1f} img/s ({1 / plain:5.2f} steps/s), "
                f"with R_G {batch / struct:7.1f} img/s, overhead {100 * row['overhead']:+.1f}%; "
                f"R_G alone {1000 * row['s_per_regularizer_call']:.2f} ms/call, "
                f"{100 * row['regularizer_share_of_plain_step']:.1f}% of a plain step at 2 calls/step",
                flush=True,
            )
    info = dict(
        device=str(device),
        threads=args.threads,
        torch=torch.__version__,
        machine=platform.machine(),
        processor=platform.processor(),
        steps=args.steps,
        rows=rows,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
