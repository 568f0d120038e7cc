"""Our training step against the InfoGAN loop a user would write, and against the machine's sgemm rate.

    python bench/peer_loop.py [--rounds 5] [--steps 5] [--threads 1,2] [--batches 64,128] [--out docs/results/speed]

**The peer** (:class:`PeerInfoGAN`) is eriklindernoren/PyTorch-GAN's InfoGAN loop
(``implementations/infogan/infogan.py``, read at commit 1e35104), the most copied plain-PyTorch
InfoGAN, run on our nets (:func:`gan.models.build_models`, the `paper` InfoGAN-MNIST net) with our
loss terms (:mod:`gan.losses`: BCE on logits, InfoGAN's information term), batch and learning
rates. As PyTorch-GAN does it, each batch makes

1. a G step: fresh latents, G forward, D on the fakes, the adversarial loss, ``optimizer_G``;
2. a D step: D on the real batch and on the same fakes detached, ``optimizer_D``;
3. an information step: fresh latents again, G forward, D forward, the information loss,
   and its own Adam, ``optimizer_info``, over G's and D's parameters (``itertools.chain``);

with default ``torch.optim.Adam`` (no fused or foreach choice), real images from a
``DataLoader(shuffle=True)`` over the data (a ``TensorDataset`` of the resident images here, as
``datasets.MNIST`` is there; no worker processes: PyTorch-GAN parses ``--n_cpu`` but never passes it),
and the three losses read with ``.item()`` every batch (its print). Where it differs from the
original, it is in the peer's favour: latents are drawn with torch on the device instead of numpy
then copied, and nothing is printed.

**Ours** is :meth:`gan.train.Trainer.train_step`: one D/Q update (D on real and fake, the
information term and R_G in one loss) and one G update, no host sync.

**The measurement**: one process, interleaved rounds (per round and thread count: every runner
at every batch, then a 2048x2048 fp32 matmul), each runner timed over ``--steps`` steps per round
after warm-up; the median and the min-max over rounds. The FLOP per image of each step is counted
with :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, forward and
backward: what an sgemm rate bounds), and the share of the sgemm rate is
images/s x FLOP/image / (that round's sgemm FLOP/s). Data content does not change the arithmetic,
so the images are a resident random tensor of MNIST's shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from gan.latents import LatentSpec, get_spec
from gan.losses import d_loss, g_loss, info_loss
from gan.models import build_models
from gan.train import TrainConfig, Trainer
from structsearch.graph import load_graph

PAPER_CODES = "cat10,cont,cont,cont;noise=62"  # bench/paper_mnist.sh
PAPER_GRAPH = "c1->q1, c2->q2, c3->q3, c4->q4, q2->q4, q3->q4"  # its entangled graph
SGEMM_SIDE = 2048


class PeerInfoGAN:
    """PyTorch-GAN's InfoGAN loop on our nets (see the module docstring for what it copies).

    Args:
        spec: the latent spec.
        images: (N, C, H, W) training images in [-1, 1] (kept where they are: the loader's batches
            are moved to ``device`` as PyTorch-GAN moves its CPU batches).
        cfg: batch size, learning rates, beta1, lambda_info and seed (its other fields are unused).
        device: where the models live.
    """

    def __init__(self, spec: LatentSpec, images: torch.Tensor, cfg: TrainConfig, device: torch.device) -> None:
        self.spec, self.cfg, self.device = spec, cfg, device
        torch.manual_seed(cfg.seed)
        self.G, self.D = (m.to(device) for m in build_models(spec, tuple(images.shape[1:]), cfg.width))
        betas = (cfg.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        self.opt_info = torch.optim.Adam(
            itertools.chain(self.G.parameters(), self.D.parameters()), lr=cfg.lr_d, betas=betas
        )
        self.loader = DataLoader(TensorDataset(images), batch_size=cfg.batch_size, shuffle=True)
        self.latent_rng = torch.Generator(device).manual_seed(cfg.seed + 1)
        self.batches = self._epochs()
        self.losses: list[tuple[float, float, float]] = []  # (d, g, info) of every batch

    def _epochs(self) -> Iterator[torch.Tensor]:
        while True:  # PyTorch-GAN's `for epoch ...: for i, (imgs, _) in enumerate(dataloader)`
            for (imgs,) in self.loader:
                yield imgs

    def step(self) -> int:
        """One batch: G step, D step, information step; returns the batch's image count."""
        real = next(self.batches).to(self.device)
        n = len(real)
        self.opt_g.zero_grad()
        fake = self.G(*self.spec.sample(n, self.latent_rng, self.device))
        loss_g = g_loss(self.D(fake)[0])
        loss_g.backward()
        self.opt_g.step()

        self.opt_d.zero_grad()
        loss_d = d_loss(self.D(real)[0], self.D(fake.detach())[0])
        loss_d.backward()
        self.opt_d.step()

        self.opt_info.zero_grad()
        z, c = self.spec.sample(n, self.latent_rng, self.device)
        loss_info = self.cfg.lambda_info * info_loss(self.spec, c, self.D(self.G(z, c))[1])
        loss_info.backward()
        self.opt_info.step()
        self.losses.append((loss_d.item(), loss_g.item(), loss_info.item()))
        return n


# ---- the runners -------------------------------------------------------------------------------


@dataclasses.dataclass
class Runner:
    """One timed thing: ``step()`` runs one training step and returns its image count."""

    name: str
    batch: int
    step: Callable[[], int]


def ours(name: str, cfg: TrainConfig, graph: str | None, images: torch.Tensor, device: torch.device) -> Runner:
    spec = get_spec(PAPER_CODES)
    parents = load_graph(graph, spec).parents() if graph else {}
    cfg = dataclasses.replace(cfg, lambda_struct=cfg.lambda_struct if graph else 0.0)

    def sample_real(b: int, g: torch.Generator) -> torch.Tensor:
        return images[torch.randint(len(images), (b,), generator=g, device=device)]

    trainer = Trainer(cfg, spec, parents, sample_real, tuple(images.shape[1:]), device)

    def step() -> int:
        trainer.train_step()
        return cfg.batch_size

    return Runner(name, cfg.batch_size, step)


def peer(cfg: TrainConfig, images: torch.Tensor, device: torch.device) -> Runner:
    return Runner("peer", cfg.batch_size, PeerInfoGAN(get_spec(PAPER_CODES), images, cfg, device).step)


def make_runners(batches: list[int], device: torch.device) -> list[Runner]:
    images = torch.rand(4096, 1, 28, 28, device=device) * 2 - 1
    runners = []
    for batch in batches:
        cfg = TrainConfig(batch_size=batch, width=1.0)  # lambda_struct 0.1, deviance: the defaults
        runners += [
            ours("ours", cfg, None, images, device),
            ours("ours_rg", cfg, PAPER_GRAPH, images, device),
            peer(cfg, images, device),
        ]
    return runners


# ---- measuring ---------------------------------------------------------------------------------


def images_per_s(runner: Runner, n_steps: int) -> float:
    start = time.perf_counter()
    n_images = sum(runner.step() for _ in range(n_steps))
    return n_images / (time.perf_counter() - start)


def flop_per_image(runner: Runner) -> float:
    """Matmul and convolution FLOP of one step (forward, backward), per image."""
    counter = FlopCounterMode(display=False)
    with counter:
        n_images = runner.step()
    return counter.get_total_flops() / n_images


def sgemm_flops(n_reps: int = 3, side: int = SGEMM_SIDE) -> float:
    """FLOP/s of a side x side fp32 matmul: the best of ``n_reps`` (the rate the machine can reach)."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(n_reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(runners: list[Runner], threads: list[int], rounds: int, n_steps: int, warmup: int) -> dict:
    """Interleaved rounds; returns {threads: {runner key: [images/s per round]}, 'sgemm': [...]}."""
    raw: dict[int, dict[str, list[float]]] = {t: {} for t in threads}
    for t in threads:
        torch.set_num_threads(t)
        for runner in runners:
            for _ in range(warmup):
                runner.step()
    for r in range(rounds):
        for t in threads:
            torch.set_num_threads(t)
            for runner in runners:
                raw[t].setdefault(f"{runner.name}@{runner.batch}", []).append(images_per_s(runner, n_steps))
            raw[t].setdefault("sgemm", []).append(sgemm_flops())
        print(f"round {r + 1}/{rounds} done", flush=True)
    return raw


def tabulate(raw: dict, runners: list[Runner], flops: dict[str, float]) -> list[dict]:
    """One row per (threads, batch): images/s, ours/peer and shares of the sgemm rate (per round, paired)."""
    rows = []
    for t, cells in raw.items():
        sgemm = cells["sgemm"]
        for batch in sorted({r.batch for r in runners}):
            row: dict = {"threads": t, "batch": batch, "sgemm_gflops": summary([s / 1e9 for s in sgemm])}
            for name in ("ours", "ours_rg", "peer"):
                key = f"{name}@{batch}"
                row[f"{name}_images_per_s"] = summary(cells[key])
                row[f"{name}_sgemm_share"] = summary([v * flops[key] / s for v, s in zip(cells[key], sgemm)])
            ours_, rg, peer_ = (cells[f"{n}@{batch}"] for n in ("ours", "ours_rg", "peer"))
            row["ours_over_peer"] = summary([a / b for a, b in zip(ours_, peer_)])
            row["rg_overhead"] = summary([a / b - 1 for a, b in zip(ours_, rg)])  # step time with R_G / without - 1
            rows.append(row)
    return rows


def _span(s: dict[str, float], fmt: str) -> str:
    return f"{fmt.format(s['median'])} ({fmt.format(s['min'])}-{fmt.format(s['max'])})"


def markdown(rows: list[dict], flops: dict[str, float], command: str) -> str:
    lines = [
        "# Our step against the PyTorch-GAN-style peer and the sgemm rate (CPU, fp32)",
        "",
        f"`{command}`: median (min-max) over interleaved rounds. MFLOP per image: "
        + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in flops.items())
        + ".",
        "",
        "| threads | batch | ours img/s | with R_G img/s | peer img/s | ours/peer | R_G overhead | ours, share of sgemm | sgemm GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['threads']} | {row['batch']} | {_span(row['ours_images_per_s'], '{:.0f}')} "
            f"| {_span(row['ours_rg_images_per_s'], '{:.0f}')} | {_span(row['peer_images_per_s'], '{:.0f}')} "
            f"| {_span(row['ours_over_peer'], '{:.2f}')}x | {_span(row['rg_overhead'], '{:+.1%}')} "
            f"| {_span(row['ours_sgemm_share'], '{:.0%}')} | {_span(row['sgemm_gflops'], '{:.0f}')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per runner per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--out", default="docs/results/speed")
    parser.add_argument("--name", default="peer_cpu", help="file stem of the json and md written in --out")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    device = torch.device("cpu")
    runners = make_runners([int(b) for b in args.batches.split(",")], device)
    flops = {f"{r.name}@{r.batch}": flop_per_image(r) for r in runners}
    start = time.perf_counter()
    raw = measure(runners, threads, args.rounds, args.steps, args.warmup)
    rows = tabulate(raw, runners, flops)
    command = "python bench/peer_loop.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k not in ("out", "name")
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(
        command=command,
        torch=torch.__version__,
        machine=platform.machine(),
        seconds=time.perf_counter() - start,
        flop_per_image=flops,
        rows=rows,
        raw={str(t): cells for t, cells in raw.items()},
    )
    (out / f"{args.name}.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(markdown(rows, flops, command))
    print((out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
