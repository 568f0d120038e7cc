"""Search throughput on this CPU: trials per hour of a `shapes --preset quick` study, one worker with
all threads against one worker per core at one thread each.

    python bench/search_throughput.py [--trials 10] [--rounds 1] [--out docs/results/speed/search_throughput.json]

Each round runs both settings back to back, in alternating order from round to round (A B, then
B A), each a fresh study of ``--trials`` distinct graphs in a temporary folder (tracking off), and
times the whole command as a user runs it: ``structsearch optimize --dataset shapes --preset quick
--trials N --workers W --threads T``. Trials per hour = N / wall hours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def settings() -> dict[str, tuple[int, int]]:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {f"1 worker x {cores} threads": (1, cores), f"{cores} workers x 1 thread": (cores, 1)}


def run(workers: int, threads: int, trials: int, seed: int) -> float:
    """Wall seconds of one fresh study."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "structsearch", "optimize", "--dataset", "shapes", "--preset", "quick"]
        cmd += ["--trials", str(trials), "--workers", str(workers), "--threads", str(threads), "--seed", str(seed)]
        cmd += ["--runs-dir", tmp, "--tracking", "none", "--study", "throughput"]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("docs/results/speed/search_throughput.json"))
    args = parser.parse_args()
    names = list(settings())
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            workers, threads = settings()[name]
            seconds[name].append(run(workers, threads, args.trials, seed=r))
            print(f"round {r}: {name}: {seconds[name][-1]:.0f} s", flush=True)
    summary = {
        name: {"seconds": s, "trials_per_hour": [round(args.trials * 3600 / x, 1) for x in s]}
        for name, s in seconds.items()
    }
    for name, row in summary.items():
        print(f"{name}: {row['trials_per_hour']} trials/hour")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    args.out.write_text(json.dumps({"trials": args.trials, "machine": machine, "settings": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
