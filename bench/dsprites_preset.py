"""Issue 15 item 5: today's dSprites recipe against InfoGAN-CR's (the preset), at equal steps.

    python bench/dsprites_preset.py [--steps 2000 --width 0.25 --scale 0.2 --seeds 0,1,2]
                                    [--recipes today,preset,preset-cr] [--max-minutes M] [--resume]
                                    [--out docs/results/dsprites-preset] [--device auto] [--summarize]

Recipes, all on the procedural dSprites (5 continuous codes + 5 noise), the independent graph and
the same net width:

* ``today``: what bench/paper_dsprites.py trained as InfoGAN: the ``quick`` preset (batch 64,
  Adam 1e-3 / 2e-4, lambda_info 1, D with batch norm, one G update per step), normal noise
  (``--codes dsprites``), lambda_struct 0;
* ``preset``: the modified InfoGAN of InfoGAN-CR's Table 1: ``--preset infogan-cr-dsprites``
  (batch 64, Adam 1e-3 / 2e-3, lambda_info 0.05, spectral norm in D, two G updates per step) with
  uniform noise (``--codes infogan-cr-dsprites``), lambda_struct 0 and lambda_cr 0;
* ``preset-cr``: InfoGAN-CR: the same with lambda_cr 2 from the same fraction of the run as the
  authors' step 288,000 of 322,560 (``--cr-start-fraction``, default 0.893; a run cut short by
  ``--max-minutes`` before that step computed exactly the ``preset`` run (nothing of the term runs
  before its start), hence the GPU script's 0: the term on from the first step);
* ``preset-structured`` (not run by default): the preset with our regularizer at
  ``--lambda-struct`` (default: TrainConfig's, 0.1), for the claim to test on a GPU (at least
  FactorVAE 0.82 and MIG 0.22). At 0.1 (twice this preset's lambda_info) it erased Q's reading of
  the generated codes at CPU scale (docs/results/dsprites-preset/README.md). ``--struct-start-fraction``
  and ``--struct-fit`` give it MNIST's late-start schedule (R_G from that fraction of the run on,
  fitted on a running pool of batches).

Each run is scored with MIG, DCI and the FactorVAE score at ``--scale`` times disentanglement_lib's
sample counts (structsearch.metrics, as ``evaluate`` computes them), plus our own scores. One JSON
line per run goes to ``<out>/rows.jsonl`` with its training s/step (wall time between its first and
last logged step, scoring excluded); ``<out>/summary.md`` gets the table. ``--max-minutes`` stops
each run's training at that wall time (checkpointed, then scored, its row ``stopped``);
``--resume`` continues stopped or killed runs from their checkpoints under ``--run-root`` (the
folders of completed runs are deleted unless ``--keep-runs``). The last row of a key counts.

``--speed`` measures instead: training s/step of each recipe at ``--width`` (preset-cr with its
term on), in interleaved rounds of 15 steps after 5 warm-up steps, so a neighbour's load hits every
recipe alike; the median and min per recipe go to ``<out>/speed.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from gan.structure import FITS
from gan.train import TrainConfig
from structsearch.config import PRESETS, RunConfig, apply_preset
from structsearch.trial import Recorder, load_dataset, make_trainer, resolve_graph, run_trial, time_limit

RECIPES = ("today", "preset", "preset-cr", "preset-structured")
DEFAULT_RECIPES = ("today", "preset", "preset-cr")
METRICS = ("mig", "dci", "factorvae")
ANCHORS = {  # InfoGAN-CR paper (Lin et al. 2020), Table 1, dSprites, 50 runs
    "modified InfoGAN": {"factorvae": 0.82, "dci": 0.60, "mig": 0.22},
    "InfoGAN-CR": {"factorvae": 0.88, "dci": 0.71, "mig": 0.37},
}
AUTHORS_CR_FRACTION = 288000 / PRESETS["infogan-cr-dsprites"]["n_steps"]


def recipe_config(recipe: str, args: argparse.Namespace, seed: int) -> RunConfig:
    """The run of ``recipe`` at the bench's steps, width and seed (log and checkpoint intervals shared)."""
    common = dict(n_steps=args.steps, width=args.width, seed=seed, log_every=25, checkpoint_every=500)
    if recipe == "today":
        train = dataclasses.replace(apply_preset(TrainConfig(), "quick"), lambda_struct=0.0, **common)
        codes = "dsprites"
    else:
        preset = apply_preset(TrainConfig(), "infogan-cr-dsprites")
        train = dataclasses.replace(
            preset,
            lambda_cr=preset.lambda_cr if recipe == "preset-cr" else 0.0,
            cr_start=round(args.cr_start_fraction * args.steps),
            lambda_struct=0.0,
            **common,
        )
        if recipe == "preset-structured":
            train = dataclasses.replace(
                train,
                lambda_struct=args.lambda_struct,
                struct_start=round(args.struct_start_fraction * args.steps),
                struct_fit=args.struct_fit,
            )
        codes = "infogan-cr-dsprites"
    return RunConfig(dataset="dsprites", graph="independent", codes=codes, device=args.device, train=train)


def run_key(recipe: str, seed: int, args: argparse.Namespace) -> str:
    """The row's identity; preset-cr's names its CR start and preset-structured its lambda_struct (and its
    R_G schedule where it is not the default), so a run with another schedule or weight is another row."""
    structured = f"|ls={args.lambda_struct:g}"
    if args.struct_start_fraction:
        structured += f"|struct_from={args.struct_start_fraction:.3f}"
    if args.struct_fit != TrainConfig().struct_fit:
        structured += f"|fit={args.struct_fit}"
    extra = {"preset-cr": f"|cr_from={args.cr_start_fraction:.3f}", "preset-structured": structured}
    return (
        f"recipe={recipe}|seed={seed}|steps={args.steps}|width={args.width}|scale={args.scale}{extra.get(recipe, '')}"
    )


def run_one(recipe: str, seed: int, args: argparse.Namespace, dataset) -> dict:
    cfg = recipe_config(recipe, args, seed)
    run_dir = Path(args.run_root) / f"{recipe}-seed{seed}"
    resume = args.resume and (run_dir / "checkpoint.pt").exists()
    limit = time_limit(args.max_minutes) if args.max_minutes else None
    logged: list[tuple[float, int]] = []

    def on_log(step: int, losses: dict[str, float], trainer) -> bool:
        logged.append((time.perf_counter(), step))
        return bool(limit and limit(step, losses, trainer))

    started = time.time()
    result = run_trial(
        cfg,
        resolve_graph(cfg, dataset),
        dataset,
        Recorder(run_dir),
        resume=resume,
        extra_scores=METRICS,
        scale=args.scale,
        on_log=on_log,
        progress=False,
    )
    if result.status != "stopped" and not args.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    (t0, s0), (t1, s1) = (logged[0], logged[-1]) if logged else ((0.0, 0), (0.0, 0))
    t = cfg.train
    return {
        "key": run_key(recipe, seed, args),
        "recipe": recipe,
        "seed": seed,
        "steps": args.steps,
        "steps_done": result.step,
        "resumed_at": result.resumed_at,
        "width": args.width,
        "scale": args.scale,
        "device": str(dataset.device),
        "status": result.status,
        "config": {"codes": cfg.codes, "d_norm": t.d_norm, "g_steps": t.g_steps, "lambda_cr": t.lambda_cr}
        | {"cr_start": t.cr_start, "lambda_struct": t.lambda_struct, "lambda_info": t.lambda_info}
        | {"struct_start": t.struct_start, "struct_fit": t.struct_fit}
        | {"lr_g": t.lr_g, "lr_d": t.lr_d, "batch_size": t.batch_size},
        "train_s_per_step": round((t1 - t0) / (s1 - s0), 4) if s1 > s0 else None,
        "seconds": round(time.time() - started, 1),
        "scores": result.scores,
    }


def speed(args: argparse.Namespace, recipes: list[str], rounds: int = 4, steps: int = 15) -> dict:
    """Training s/step of each recipe (preset-cr with its term on from the first step), interleaved rounds."""
    dataset = load_dataset(RunConfig(dataset="dsprites", device=args.device))
    at_once = argparse.Namespace(**(vars(args) | {"cr_start_fraction": 0.0}))
    trainers = {}
    for recipe in recipes:
        cfg = recipe_config(recipe, at_once, 0)
        trainers[recipe] = make_trainer(cfg, resolve_graph(cfg, dataset), dataset)
        for _ in range(5):
            trainers[recipe].train_step()
    times: dict[str, list[float]] = {r: [] for r in recipes}
    for _ in range(rounds):
        for recipe, trainer in trainers.items():
            started = time.perf_counter()
            for _ in range(steps):
                losses = trainer.train_step()
            float(losses["loss/d"])  # wait for the device
            times[recipe].append((time.perf_counter() - started) / steps)
    return {
        "width": args.width,
        "threads": torch.get_num_threads(),
        "device": str(dataset.device),
        "load_average": os.getloadavg(),
        "s_per_step": {r: {"median": statistics.median(v), "min": min(v), "rounds": v} for r, v in times.items()},
    }


def _stats(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")


def summarize(rows: list[dict], recipes: list[str]) -> str:
    """Markdown: mean +- seed std per recipe and metric; each recipe's verdict against ``today``."""
    by = {r: [row for row in rows if row["recipe"] == r and row["status"] != "diverged"] for r in recipes}
    r0 = rows[0]
    names = [m for m in (*METRICS, "dci_completeness", "info", "info_min") if any(m in x["scores"] for x in rows)]
    lines = [
        f"# dSprites: today's recipe against InfoGAN-CR's preset ({r0['steps']} steps, width {r0['width']}, "
        f"metric scale {r0['scale']}, device {r0['device']})",
        "",
        "Mean and seed standard deviation. A recipe is *higher* or *lower* than `today` only when the",
        "gap of the means exceeds both recipes' seed spreads. Steps done: "
        + "; ".join(f"{r} {', '.join(str(x['steps_done']) for x in by[r])}" for r in recipes)
        + ". Training s/step: "
        + "; ".join(f"{r} {np.median([x['train_s_per_step'] or np.nan for x in by[r]]):.3f}" for r in recipes if by[r])
        + ".",
        "",
        "Configs: "
        + "; ".join(f"`{r}` " + ", ".join(f"{k} {v}" for k, v in by[r][0]["config"].items()) for r in recipes if by[r])
        + ".",
        "",
        "| metric | " + " | ".join(f"{r} (n={len(by[r])})" for r in recipes) + " | verdict vs today |",
        "|---|" + "---|" * len(recipes) + "---|",
    ]
    for name in names:
        stats = {r: _stats([x["scores"][name] for x in by[r] if name in x["scores"]]) for r in recipes if by[r]}
        cells = [f"{stats[r][0]:.3f} ± {stats[r][1]:.3f}" if r in stats else "-" for r in recipes]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_verdicts(stats)} |")
    anchors = "; ".join(f"{k}: " + ", ".join(f"{m} {v}" for m, v in a.items()) for k, a in ANCHORS.items())
    diverged = [f"{r['recipe']} seed {r['seed']}" for r in rows if r["status"] == "diverged"]
    lines += ["", f"Anchors (InfoGAN-CR's Table 1, 322,560 steps): {anchors}.", ""]
    lines += [f"Diverged runs (left out): {', '.join(diverged) or 'none'}.", ""]
    return "\n".join(lines)


def _verdicts(stats: dict[str, tuple[float, float]]) -> str:
    if "today" not in stats:
        return "-"
    base, spread = stats["today"]
    out = []
    for recipe, (mean, std) in stats.items():
        if recipe == "today":
            continue
        if np.isnan(spread) or np.isnan(std):
            out.append(f"{recipe}: one seed")
        elif abs(mean - base) <= max(spread, std):
            out.append(f"{recipe}: within spread")
        else:
            out.append(f"{recipe}: {'higher' if mean > base else 'lower'}")
    return "; ".join(out)


def read_rows(path: Path) -> dict[str, dict]:
    """The last row of each key (a resumed run's row replaces its stopped one)."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["key"]: row for row in rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results/dsprites-preset")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument(
        "--recipes", default=",".join(DEFAULT_RECIPES), help=f"comma-separated, of {', '.join(RECIPES)}"
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--scale", type=float, default=0.2, help="fraction of disentanglement_lib's sample counts")
    parser.add_argument("--cr-start-fraction", type=float, default=AUTHORS_CR_FRACTION)
    parser.add_argument(
        "--lambda-struct", type=float, default=TrainConfig().lambda_struct, help="preset-structured's lambda_struct"
    )
    parser.add_argument(
        "--struct-start-fraction", type=float, default=0.0, help="preset-structured: R_G from this fraction of the run on"
    )
    parser.add_argument(
        "--struct-fit", choices=FITS, default=TrainConfig().struct_fit, help="preset-structured's R_G fit"
    )
    parser.add_argument("--max-minutes", type=float, help="each run's training stops after this much wall time")
    parser.add_argument("--resume", action="store_true", help="continue stopped or killed runs from their checkpoints")
    parser.add_argument("--run-root", default="runs/dsprites-preset")
    parser.add_argument("--keep-runs", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--summarize", action="store_true", help="rewrite summary.md from the rows done, run nothing")
    parser.add_argument("--speed", action="store_true", help="measure each recipe's training s/step, run nothing else")
    args = parser.parse_args(argv)
    recipes, seeds = args.recipes.split(","), [int(s) for s in args.seeds.split(",")]
    if unknown := sorted(set(recipes) - set(RECIPES)):
        parser.error(f"unknown recipe(s) {unknown}: choose from {', '.join(RECIPES)}")
    if not 0 <= args.cr_start_fraction <= 1:
        parser.error(f"--cr-start-fraction must be in [0, 1], got {args.cr_start_fraction}")
    if not 0 <= args.struct_start_fraction <= 1:
        parser.error(f"--struct-start-fraction must be in [0, 1], got {args.struct_start_fraction}")
    if args.lambda_struct < 0:
        parser.error(f"--lambda-struct must be >= 0, got {args.lambda_struct}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.speed:
        result = speed(args, recipes)
        (out / "speed.json").write_text(json.dumps(result, indent=1) + "\n")
        print(json.dumps(result["s_per_step"]))
        return
    rows = read_rows(out / "rows.jsonl")

    def pending(key: str) -> bool:  # never run, or stopped by the time limit and --resume asked
        return key not in rows or (args.resume and rows[key]["status"] == "stopped")

    todo = [(r, s) for s in seeds for r in recipes if pending(run_key(r, s, args))]
    if todo and not args.summarize:
        print(f"{len(todo)} runs to do", flush=True)
        dataset = load_dataset(RunConfig(dataset="dsprites", device=args.device))
        for recipe, seed in todo:
            row = run_one(recipe, seed, args, dataset)
            with (out / "rows.jsonl").open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows[row["key"]] = row
            print(
                f"{row['key']}: {row['status']} at step {row['steps_done']} in {row['seconds']} s, "
                f"{row['train_s_per_step']} s/step, {json.dumps(row['scores'])}",
                flush=True,
            )
    done = [rows[k] for k in (run_key(r, s, args) for r in recipes for s in seeds) if k in rows]
    if done:
        (out / "summary.md").write_text(summarize(done, [r for r in recipes if any(x["recipe"] == r for x in done)]))


if __name__ == "__main__":
    main()
