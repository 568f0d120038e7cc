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
then copied, and nothing is printed. Being our nets, its linear layers are
:class:`gan.onednn.Linear` (a user importing :mod:`gan.models` gets them too); the channels_last
layout and fused Adam are the Trainer's, so the peer has neither. ``ours/peer`` is therefore the
loop's and the Trainer's share, ``ours/before`` (below) the whole of issue 17's speed-ups.

**Ours** is :meth:`gan.train.Trainer.train_step`: one D/Q update (D on real and fake, the
information term and R_G in one loss) and one G update, no host sync.

**The measurement**: one process, interleaved rounds (per round and thread count: every runner
at every batch, then a 2048x2048 fp32 matmul in torch.mm and in oneDNN), each runner timed over
``--steps`` steps per round after warm-up; the median and the min-max over rounds. The runners:
ours without and with R_G (the paper graph), ours as it was before issue 17 (``ours_before``:
tests/reference.py's plain layers and Adam), and the peer. The FLOP per image of each step is counted
with :class:`torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, forward and
backward: what an sgemm rate bounds), and the share of the sgemm rate is
images/s x FLOP/image / (that round's matmul FLOP/s). Two rates, because torch.mm goes to MKL,
which runs AVX2 code on AMD CPUs, while oneDNN runs AVX-512 (:mod:`gan.onednn`): the machine's
rate is oneDNN's. Data content does not change the arithmetic,
so the images are a resident random tensor of MNIST's shape.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ and tests/ import each other

import torch
from torch.utils import flop_counter
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from gan.latents import LatentSpec, get_spec
from gan.losses import d_loss, g_loss, info_loss
from gan.models import build_models
from gan.onednn import matmul_nt, uses_onednn
from gan.train import TrainConfig, Trainer
from structsearch.graph import load_graph
from tests.reference import plain_layers

PAPER_CODES = "cat10,cont,cont,cont;noise=62"  # bench/paper_mnist.sh
PAPER_GRAPH = "c1->q1, c2->q2, c3->q3, c4->q4, q2->q4, q3->q4"  # its entangled graph
SGEMM_SIDE = 2048
Clock = Callable[[], float]  # time.perf_counter (wall) or time.process_time (this process's CPU time)


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


def ours(
    name: str, cfg: TrainConfig, graph: str | None, images: torch.Tensor, device: torch.device, before: bool = False
) -> Runner:
    """Trainer.train_step; ``before``: with the layers and Adam it had before issue 17 (tests/reference.py)."""
    spec = get_spec(PAPER_CODES)
    parents = load_graph(graph, spec).parents() if graph else {}
    cfg = dataclasses.replace(cfg, lambda_struct=cfg.lambda_struct if graph else 0.0)

    def sample_real(b: int, g: torch.Generator) -> torch.Tensor:
        return images[torch.randint(len(images), (b,), generator=g, device=device)]

    trainer = Trainer(cfg, spec, parents, sample_real, tuple(images.shape[1:]), device)
    if before:
        plain_layers(trainer)

    def step() -> int:
        trainer.train_step()
        return cfg.batch_size

    return Runner(name, cfg.batch_size, step)


def peer(cfg: TrainConfig, images: torch.Tensor, device: torch.device) -> Runner:
    """The peer with its data in host memory, as PyTorch-GAN's MNIST loader holds it."""
    return Runner("peer", cfg.batch_size, PeerInfoGAN(get_spec(PAPER_CODES), images.cpu(), cfg, device).step)


def make_runners(batches: list[int], device: torch.device) -> list[Runner]:
    """Per batch: ours, ours with R_G, ours before issue 17 (on a CPU only: elsewhere nothing
    changed), and the peer."""
    images = torch.rand(4096, 1, 28, 28, device=device) * 2 - 1
    runners = []
    for batch in batches:
        cfg = TrainConfig(batch_size=batch, width=1.0)  # lambda_struct 0.1, deviance: the defaults
        runners += [ours("ours", cfg, None, images, device), ours("ours_rg", cfg, PAPER_GRAPH, images, device)]
        if device.type == "cpu":
            runners.append(ours("ours_before", cfg, None, images, device, before=True))
        runners.append(peer(cfg, images, device))
    return runners


# ---- measuring ---------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(runner: Runner, n_steps: int, device: torch.device, clock: Clock = time.perf_counter) -> float:
    """Steps back to back, one sync at each end (as training runs: a sync inside a step shows)."""
    _sync(device)
    start = clock()
    n_images = sum(runner.step() for _ in range(n_steps))
    _sync(device)
    return n_images / (clock() - start)


def _count_onednn_linear_flops() -> None:
    """Teach FlopCounterMode gan.onednn's matmul (x (M, K) times weight (N, K)^T: 2MNK), which it does
    not know, so that our step counts the FLOP it did before the kernel changed."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    if op is not None and op not in flop_counter.flop_registry:

        @flop_counter.register_flop_formula(op)
        def _linear_flop(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
            return 2 * math.prod(x_shape[:-1]) * w_shape[0] * x_shape[-1]


def flop_per_image(runner: Runner) -> float:
    """Matmul and convolution FLOP of one step (forward, backward), per image."""
    _count_onednn_linear_flops()
    counter = FlopCounterMode(display=False)
    with counter:
        n_images = runner.step()
    return counter.get_total_flops() / n_images


def sgemm_kinds(device: torch.device) -> tuple[str, ...]:
    """``mm``: ``torch.mm`` (MKL in torch's CPU build); ``onednn``: the oneDNN matmul that
    :mod:`gan.onednn` sends linear layers to (CPU only)."""
    return ("mm", "onednn") if device.type == "cpu" and uses_onednn(torch.zeros(1, 1), torch.zeros(1, 1)) else ("mm",)


def sgemm_flops(
    kind: str, device: torch.device, clock: Clock = time.perf_counter, n_reps: int = 3, side: int = SGEMM_SIDE
) -> float:
    """FLOP/s of a side x side fp32 matmul of ``kind`` (:func:`sgemm_kinds`), the best of ``n_reps``."""
    a, b = torch.randn(side, side, device=device), torch.randn(side, side, device=device)
    product = (lambda: a @ b) if kind == "mm" else (lambda: matmul_nt(a, b))
    product()  # warm-up
    best = float("inf")
    for _ in range(n_reps):
        _sync(device)
        start = clock()
        product()
        _sync(device)
        best = min(best, clock() - start)
    return 2 * side**3 / best


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(
    runners: list[Runner],
    threads: list[int],
    rounds: int,
    n_steps: int,
    warmup: int,
    device: torch.device,
    clock: Clock = time.perf_counter,
) -> dict:
    """Interleaved rounds; returns {threads: {runner key or sgemm_<kind>: [per round]}}."""
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
                key = f"{runner.name}@{runner.batch}"
                raw[t].setdefault(key, []).append(images_per_s(runner, n_steps, device, clock))
            for kind in sgemm_kinds(device):
                raw[t].setdefault(f"sgemm_{kind}", []).append(sgemm_flops(kind, device, clock))
        print(f"round {r + 1}/{rounds} done", flush=True)
    return raw


def _names(runners: list[Runner]) -> list[str]:
    return list(dict.fromkeys(r.name for r in runners))


def tabulate(raw: dict, runners: list[Runner], flops: dict[str, float], device: torch.device) -> list[dict]:
    """One row per (threads, batch): images/s, ratios and shares of each sgemm rate (per round, paired)."""
    rows = []
    kinds = sgemm_kinds(device)
    for t, cells in raw.items():
        for batch in sorted({r.batch for r in runners}):
            row: dict = {"threads": t, "batch": batch}
            for kind in kinds:
                row[f"sgemm_{kind}_gflops"] = summary([v / 1e9 for v in cells[f"sgemm_{kind}"]])
            for name in _names(runners):
                key = f"{name}@{batch}"
                row[f"{name}_images_per_s"] = summary(cells[key])
                for kind in kinds:
                    shares = [v * flops[key] / s for v, s in zip(cells[key], cells[f"sgemm_{kind}"])]
                    row[f"{name}_share_of_{kind}"] = summary(shares)
            ours_ = cells[f"ours@{batch}"]
            for other in ("peer", "ours_before"):
                if f"{other}@{batch}" in cells:
                    row[f"ours_over_{other}"] = summary([a / b for a, b in zip(ours_, cells[f"{other}@{batch}"])])
            # step time with R_G / without - 1
            row["rg_overhead"] = summary([a / b - 1 for a, b in zip(ours_, cells[f"ours_rg@{batch}"])])
            rows.append(row)
    return rows


def _span(s: dict[str, float], fmt: str) -> str:
    low, high = fmt.format(s["min"]).rstrip("x"), fmt.format(s["max"])
    return f"{fmt.format(s['median'])} ({low}-{high})"


COLUMNS = {  # row key -> (heading, format)
    "ours_images_per_s": ("ours img/s", "{:.0f}"),
    "ours_rg_images_per_s": ("with R_G", "{:.0f}"),
    "ours_before_images_per_s": ("before", "{:.0f}"),
    "peer_images_per_s": ("peer", "{:.0f}"),
    "ours_over_peer": ("ours/peer", "{:.2f}x"),
    "ours_over_ours_before": ("ours/before", "{:.2f}x"),
    "rg_overhead": ("R_G overhead", "{:+.1%}"),
    "ours_share_of_mm": ("ours, share of mm", "{:.0%}"),
    "ours_share_of_onednn": ("ours, share of oneDNN", "{:.0%}"),
    "sgemm_mm_gflops": ("mm GFLOP/s", "{:.0f}"),
    "sgemm_onednn_gflops": ("oneDNN GFLOP/s", "{:.0f}"),
}


def markdown(rows: list[dict], flops: dict[str, float], command: str, device: torch.device) -> str:
    columns = [key for key in COLUMNS if key in rows[0]]
    lines = [
        f"# Our step against the PyTorch-GAN-style peer and the machine's matmul rate ({device.type}, fp32)",
        "",
        f"`{command}`: median (min-max) over interleaved rounds; `before`: our step with the layers and",
        "Adam of before issue 17. Shares: images/s x FLOP per image / the round's 2048^3 fp32 matmul rate",
        "(mm: torch.mm; oneDNN: gan.onednn's matmul). MFLOP per image: "
        + ", ".join(f"{k} {v / 1e6:.1f}" for k, v in flops.items())
        + ".",
        "",
        "| threads | batch | " + " | ".join(COLUMNS[key][0] for key in columns) + " |",
        "|---|---|" + "---|" * len(columns),
    ]
    for row in rows:
        cells = [str(row["threads"]), str(row["batch"])] + [_span(row[key], COLUMNS[key][1]) for key in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per runner per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="1,2", help="CPU threads (on a GPU: the host's, unchanged)")
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--out", default="docs/results/speed")
    parser.add_argument("--name", default="peer_cpu", help="file stem of the json and md written in --out")
    parser.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="process: this process's CPU time, which a busy neighbour inflates far less than wall time "
        "(1 thread only: with more it adds the threads' times)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    threads = [int(t) for t in args.threads.split(",")] if device.type == "cpu" else [torch.get_num_threads()]
    runners = make_runners([int(b) for b in args.batches.split(",")], device)
    flops = {f"{r.name}@{r.batch}": flop_per_image(r) for r in runners}
    start = time.perf_counter()
    clock = time.process_time if args.clock == "process" else time.perf_counter
    raw = measure(runners, threads, args.rounds, args.steps, args.warmup, device, clock)
    rows = tabulate(raw, runners, flops, device)
    command = "python bench/peer_loop.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k not in ("out", "name")
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(
        command=command,
        device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        torch=torch.__version__,
        machine=platform.machine(),
        seconds=time.perf_counter() - start,
        flop_per_image=flops,
        rows=rows,
        raw={str(t): cells for t, cells in raw.items()},
    )
    (out / f"{args.name}.json").write_text(json.dumps(info, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(markdown(rows, flops, command, device))
    print((out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
