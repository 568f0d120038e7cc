"""torch.compile modes on our training step: the compile time against what a quick trial costs.

    python bench/compile_trial.py [--width 0.25] [--batch 64] [--rounds 5] [--out FILE]

A search trial at ``--preset quick`` is 300 steps of a width-0.25 net at batch 64, so a compile
mode pays only if its compile time is won back inside those steps. For each mode (default,
reduce-overhead, max-autotune-no-cudagraphs) a fresh trainer has its G and D wrapped in
``torch.compile``; the first two steps (which compile, forward and backward) are timed, then
compiled and eager steps are timed in interleaved rounds (this process's CPU time, one thread, so
that a busy neighbour inflates it little; the compile time is wall time: inductor compiles in
worker processes). Run it with ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`` for a cold compile.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from bench.op_count import PAPER_CODES, make_trainer

MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")


def compiled_trainer(mode: str, width: float, batch: int):
    trainer = make_trainer(PAPER_CODES, None, batch, torch.device("cpu"), width)
    trainer.G = torch.compile(trainer.G, mode=None if mode == "default" else mode)
    trainer.D = torch.compile(trainer.D, mode=None if mode == "default" else mode)
    start = time.perf_counter()
    trainer.train_step()
    trainer.train_step()
    return trainer, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per runner per round")
    parser.add_argument("--trial-steps", type=int, default=300, help="a quick trial's length")
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trainers, compile_s = {"eager": make_trainer(PAPER_CODES, None, args.batch, torch.device("cpu"), args.width)}, {}
    for _ in range(2):
        trainers["eager"].train_step()
    for mode in MODES:
        trainers[mode], compile_s[mode] = compiled_trainer(mode, args.width, args.batch)
        print(f"{mode}: first two steps (compiling) {compile_s[mode]:.1f} s wall", flush=True)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            start = time.process_time()
            for _ in range(args.steps):
                trainer.train_step()
            times[name].append((time.process_time() - start) / args.steps)
    eager = statistics.median(times["eager"])
    rows = {"eager": {"s_per_step": eager}}
    print(f"eager: {1000 * eager:.1f} ms per step; a {args.trial_steps}-step trial {args.trial_steps * eager:.0f} s")
    for mode in MODES:
        step = statistics.median(times[mode])
        saved = eager - step
        rows[mode] = {"s_per_step": step, "speedup": eager / step, "compile_s": compile_s[mode]}
        rows[mode]["trial_s"] = compile_s[mode] + args.trial_steps * step
        print(
            f"{mode}: {1000 * step:.1f} ms per step ({eager / step:.2f}x eager), compile {compile_s[mode]:.0f} s; "
            f"a {args.trial_steps}-step trial {rows[mode]['trial_s']:.0f} s"
            + (f", pays back after {compile_s[mode] / saved:.0f} steps" if saved > 0 else ", never pays back"),
            flush=True,
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        info = {"torch": torch.__version__, "width": args.width, "batch": args.batch, "rows": rows}
        Path(args.out).write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
