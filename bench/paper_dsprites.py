"""The paper's dSprites claim: does the structural regularizer (independent graph) disentangle better than InfoGAN?

    python bench/paper_dsprites.py --out docs/results/paper --device auto [--steps 1500 --width 0.25 --scale 0.2]

Beyazit et al. report a higher disentanglement score for their regularized model than for
InfoGAN on dSprites. This trains both on the procedural dSprites set with 5 continuous codes and
5 noise dimensions, for each seed: ``infogan`` (lambda_struct 0: InfoGAN's objective alone) and
``structured`` (lambda_struct 1 with the default regularizer form and the independent graph
``ci->qi``), then computes the six disentanglement metrics (MIG, DCI, SAP, modularity, FactorVAE,
BetaVAE) at ``--scale`` times disentanglement_lib's sample counts. One JSON line per run goes to
``<out>/dsprites.jsonl`` (a killed benchmark resumes there); ``<out>/dsprites.md`` gets the table
of means and seed standard deviations, with a verdict per metric: a difference smaller than the
spread of either model is reported as no result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np

from gan.train import TrainConfig
from structsearch.config import RunConfig, apply_preset
from structsearch.scores import INFO_VERSION
from structsearch.trial import Recorder, load_dataset, resolve_graph, run_trial, time_limit

MODELS = {"infogan": 0.0, "structured": 1.0}  # name -> lambda_struct
METRICS = ("mig", "dci", "sap", "modularity", "factorvae", "betavae")


def run_key(model: str, seed: int, args: argparse.Namespace) -> str:
    return f"model={model}|seed={seed}|steps={args.steps}|width={args.width}|scale={args.scale}"


def run_one(model: str, seed: int, args: argparse.Namespace, dataset) -> dict:
    train = dataclasses.replace(
        apply_preset(TrainConfig(), "quick"),
        n_steps=args.steps,
        width=args.width,
        lambda_struct=MODELS[model],
        seed=seed,
        checkpoint_every=0,
    )
    cfg = RunConfig(dataset="dsprites", graph="independent", device=args.device, train=train)
    graph = resolve_graph(cfg, dataset)
    run_dir = Path(args.run_root) / f"{model}-seed{seed}"
    started = time.time()
    on_log = time_limit(args.max_minutes) if args.max_minutes else None
    result = run_trial(
        cfg, graph, dataset, Recorder(run_dir), extra_scores=METRICS, scale=args.scale, on_log=on_log, progress=False
    )
    if not args.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    return {
        "key": run_key(model, seed, args),
        "model": model,
        "seed": seed,
        "lambda_struct": MODELS[model],
        "struct_form": train.struct_form,
        "steps": args.steps,
        "steps_done": result.step,
        "width": args.width,
        "scale": args.scale,
        "status": result.status,
        "info_version": INFO_VERSION,
        "seconds": round(time.time() - started, 1),
        "scores": result.scores,
    }


def summarize(rows: list[dict]) -> str:
    """Markdown: mean +- std per model and metric, and whether the gap exceeds the seed spread."""
    by_model = {m: [r for r in rows if r["model"] == m and r["status"] != "diverged"] for m in MODELS}
    scored = set().union(*(r["scores"] for rs in by_model.values() for r in rs))
    names = [m for m in (*METRICS, "dci_completeness", "info", "info_min") if m in scored]
    if any(r.get("info_version") != INFO_VERSION for rs in by_model.values() for r in rs):
        names = [m for m in names if not m.startswith("info")]  # never a mix of two info definitions
    r0 = rows[0]
    done = {m: [r.get("steps_done", r["steps"]) for r in model_rows] for m, model_rows in by_model.items()}
    limited = any(n != r0["steps"] for steps in done.values() for n in steps)
    lines = [
        f"# dSprites: InfoGAN vs the structured model ({r0['steps']} steps, width {r0['width']}, "
        f"metric scale {r0['scale']})",
        "",
        *(
            [
                "Time-limited runs, steps done: "
                + "; ".join(f"{m} {', '.join(map(str, steps))}" for m, steps in done.items())
                + ".",
                "",
            ]
            if limited
            else []
        ),
        "Mean and seed standard deviation; *verdict* says which model is ahead only when the gap of",
        "the means exceeds both models' seed spread.",
        "",
        "| metric | " + " | ".join(f"{m} (n={len(by_model[m])})" for m in MODELS) + " | verdict |",
        "|---|" + "---|" * len(MODELS) + "---|",
    ]
    for name in names:
        stats = {}
        for model, model_rows in by_model.items():
            values = np.array([r["scores"][name] for r in model_rows if name in r["scores"]], dtype=float)
            stats[model] = (values.mean(), values.std(ddof=1) if len(values) > 1 else np.nan)
        cells = [f"{mean:.3f} ± {std:.3f}" for mean, std in stats.values()]
        (m_a, s_a), (m_b, s_b) = stats["infogan"], stats["structured"]
        gap = m_b - m_a
        if np.isnan(s_a) or np.isnan(s_b):
            verdict = "one seed: spread unknown"
        elif abs(gap) <= max(s_a, s_b):
            verdict = "**difference smaller than the seed spread**"
        else:
            verdict = "structured higher" if gap > 0 else "InfoGAN higher"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {verdict} |")
    diverged = [f"{r['model']} seed {r['seed']}" for r in rows if r["status"] == "diverged"]
    lines += ["", f"Diverged runs (left out): {', '.join(diverged) or 'none'}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/results/paper")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument(
        "--max-minutes", type=float, help="each run's training stops after this much wall time, then is scored"
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--scale", type=float, default=0.2, help="fraction of disentanglement_lib's sample counts")
    parser.add_argument("--run-root", default="runs/paper-dsprites")
    parser.add_argument("--keep-runs", action="store_true")
    parser.add_argument("--summarize", action="store_true", help="rewrite dsprites.md from the rows done, run nothing")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "dsprites.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.exists() else []
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models.split(",")
    if unknown := set(models) - set(MODELS):
        parser.error(f"unknown model(s) {sorted(unknown)}: choose from {', '.join(MODELS)}")
    todo = [(m, s) for s in seeds for m in models if run_key(m, s, args) not in {r["key"] for r in rows}]
    print(f"{len(todo)} runs to do", flush=True)
    if todo and not args.summarize:
        cfg = RunConfig(dataset="dsprites", device=args.device)
        dataset = load_dataset(cfg)
        for model, seed in todo:
            row = run_one(model, seed, args, dataset)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            print(f"{row['key']}: {row['status']} in {row['seconds']} s", flush=True)
    keys = {run_key(m, s, args) for m in MODELS for s in seeds}
    done = [r for r in rows if r["key"] in keys]
    if {r["model"] for r in done} == set(MODELS):  # a table needs both models
        (out / "dsprites.md").write_text(summarize(done))


if __name__ == "__main__":
    main()
