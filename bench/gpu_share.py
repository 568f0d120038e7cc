"""Aggregate training steps/s of N processes sharing one device, each training its own model.

    python bench/gpu_share.py [--device cuda] [--procs 1,4,9] [--seconds 15] [--batch 128] [--out FILE]

A search runs one worker process per trial (``optimize --workers N --gpus 0``), and a small GAN
leaves an H200 mostly idle, so N processes overlap their kernel streams. For each N, this file
starts N copies of itself (``--worker``), each with two trainers of the `paper` net on the paper's
codes: InfoGAN (lambda_struct 0) and R_G on the paper's entangled graph (q2, q3 -> q4;
bench/paper_mnist.sh). Each warms both up and says it is ready; once all are, the parent hands out
one start time, and every process counts the steps it completes in the same wall-clock window,
first of InfoGAN, then (after a second's gap) of R_G. A window ends with a sync, so its steps/s
counts work done, not work queued. The aggregate is the sum over processes. Real images are a
resident random tensor of MNIST's shape (the arithmetic does not depend on the pixels).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = ("infogan", "rg")
GAP_S = 1.0  # between the two windows


def _trainer(variant: str, batch: int, device: torch.device):
    """The `paper` net on the paper's codes: InfoGAN, or R_G on its entangled graph (seed 0 in every
    process: the seed changes no arithmetic)."""
    from bench.op_count import PAPER_CODES, PAPER_GRAPH, make_trainer

    return make_trainer(PAPER_CODES, PAPER_GRAPH if variant == "rg" else None, batch, device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def window(trainer, start: float, seconds: float, device: torch.device) -> dict[str, float]:
    """Steps from ``start`` until ``start + seconds`` (host clock), then a sync: steps / elapsed."""
    time.sleep(max(0.0, start - time.time()))
    _sync(device)
    begin, n = time.time(), 0
    while time.time() < start + seconds:
        trainer.train_step()
        n += 1
    _sync(device)
    elapsed = time.time() - begin
    return {"steps": n, "seconds": elapsed, "steps_per_s": n / elapsed, "late_s": max(0.0, begin - start)}


def worker(args: argparse.Namespace) -> None:
    """One process: warm up, say ready, wait for the start time, time both windows, print JSON."""
    device = torch.device(args.device)
    torch.set_num_threads(1)
    trainers = {v: _trainer(v, args.batch, device) for v in VARIANTS}
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.train_step()
    _sync(device)
    go = Path(args.sync_dir) / "go"
    (Path(args.sync_dir) / f"ready-{args.rank}").touch()
    while not go.exists():
        time.sleep(0.05)
    start = float(go.read_text())
    result = {}
    for i, variant in enumerate(VARIANTS):
        result[variant] = window(trainers[variant], start + i * (args.seconds + GAP_S), args.seconds, device)
    print(json.dumps({"rank": args.rank, **result}), flush=True)


def run_n(n: int, args: argparse.Namespace) -> dict:
    """Start n workers, release them together once all are ready, and sum their steps/s."""
    with tempfile.TemporaryDirectory() as sync_dir:
        command = [sys.executable, __file__, "--worker", "--device", args.device, "--batch", str(args.batch)]
        command += ["--seconds", str(args.seconds), "--warmup", str(args.warmup), "--sync-dir", sync_dir]
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        procs = [
            subprocess.Popen([*command, "--rank", str(r)], stdout=subprocess.PIPE, text=True, env=env) for r in range(n)
        ]
        deadline = time.time() + args.ready_timeout
        while len(list(Path(sync_dir).glob("ready-*"))) < n:
            if time.time() > deadline or any(p.poll() not in (None, 0) for p in procs):
                for p in procs:
                    p.kill()
                raise SystemExit(f"{n} processes: not all ready within {args.ready_timeout} s")
            time.sleep(0.1)
        (Path(sync_dir) / "go.tmp").write_text(str(time.time() + 1.0))
        os.replace(Path(sync_dir) / "go.tmp", Path(sync_dir) / "go")
        results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    row: dict = {"processes": n}
    for variant in VARIANTS:
        row[f"{variant}_steps_per_s"] = sum(r[variant]["steps_per_s"] for r in results)
        row[f"{variant}_per_process"] = [round(r[variant]["steps_per_s"], 2) for r in results]
        row[f"{variant}_late_s_max"] = max(r[variant]["late_s"] for r in results)
    print(
        f"{n} processes: InfoGAN {row['infogan_steps_per_s']:.1f} steps/s, R_G {row['rg_steps_per_s']:.1f} "
        f"steps/s in aggregate (batch {args.batch}, {args.seconds} s windows)",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--procs", default="1,4,9", help="comma-separated process counts")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each timed window")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--ready-timeout", type=float, default=90.0)
    parser.add_argument("--out", help="JSON file for the results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--sync-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    rows = [run_n(int(n), args) for n in args.procs.split(",")]
    if args.out:
        info = {"device": args.device, "batch": args.batch, "seconds": args.seconds, "rows": rows}
        if args.device.startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.op_count, run as a script
    main()
