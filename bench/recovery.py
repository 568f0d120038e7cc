"""Recovery benchmark: does a label-free objective rank the true factor graph of `shapes` first?

    python bench/recovery.py --config bench/recovery.json --grid small|full --out docs/results/recovery --device auto

For every true factor graph of the synthetic set, candidate graph, regularizer form, lambda_info,
lambda_struct, code prior, noise dimension and seed of the chosen grid, it trains one model with
``structsearch.trial.run_trial`` (tracking off) and appends one JSON line to
``<out>/results.jsonl``: the setting, the label-free objectives (struct_bic, agreement, info,
info_min, info/cK) and the ground truth (shd, mig, dci). A killed benchmark resumes: settings
already in the file are skipped; ``--shard I/N`` lets N processes share the grid (and the file). ``<out>/summary.md`` is rewritten at the end, per setting: how
often the true graph's Markov equivalence class ranks first under each objective, the Spearman
correlation of each objective with SHD, the collapse rate and the seed-to-seed spread.

Every grid of a config shares its ``training`` settings (preset, TrainConfig overrides, n_eval and
``ground_truth``, the extra scores: shd, mig and dci by default; DCI's boosted trees cost tens of
CPU seconds per run), so a grid that is a subset of a larger one fills part of it: with the same
``--out``, the larger grid skips the runs the smaller one already did.

Candidates are named relative to the truth (``independent``, ``truth``, ``reversed`` (every edge
turned), ``wrong_chain`` (the first chain whose skeleton differs from the truth's), ``complete``)
or given as q edges (``"q1->q2, q2->q3"``); every candidate also has the edges ci->qi.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from gan.dag import markov_class
from gan.latents import continuous_spec
from gan.train import TrainConfig
from structsearch import scores
from structsearch.config import RunConfig, apply_preset
from structsearch.datasets.shapes import GRAPHS, NODES
from structsearch.graph import Graph
from structsearch.scores import INFO_VERSION
from structsearch.trial import Recorder, load_dataset, run_trial

Edge = tuple[str, str]
OBJECTIVES = ("struct_bic", "agreement", "info", "info_min")  # label-free
GROUND_TRUTH = ("shd", "mig", "dci")
SETTING = ("true_graph", "form", "lambda_info", "lambda_struct", "code_prior", "noise_dim")
COLLAPSE_INFO = 0.5  # a code whose info/cK (R^2 of Q's read-back) falls below this has collapsed
# Rows carry the version of the info score (INFO_VERSION): rows without one (the first 40
# small-grid runs) used the calibrated 1 - MSE/Var, which also charges Q for the scale of its
# output and so overstates collapse; version 2 is the linear read-back R^2.


# ---- graphs --------------------------------------------------------------------------------


def candidate_edges(name: str, truth: tuple[Edge, ...]) -> tuple[Edge, ...]:
    """The q-to-q edges of a candidate named relative to the true graph, or given as text."""
    if "->" in name:
        return tuple(tuple(p.strip() for p in e.split("->")) for e in name.split(","))  # type: ignore[misc]
    complete = tuple((u, v) for u, v in itertools.combinations(NODES, 2))
    chains = [((a, b), (b, c)) for a, b, c in itertools.permutations(NODES)]
    named = {
        "independent": (),
        "truth": truth,
        "reversed": tuple((v, u) for u, v in truth),
        "wrong_chain": next((ch for ch in chains if skeleton(ch) != skeleton(truth)), ()),
        "complete": complete,
    }
    if name not in named:
        raise ValueError(f"unknown candidate {name!r}; expected one of {', '.join(named)} or edges like 'q1->q2'")
    return named[name]


def skeleton(edges) -> frozenset:
    return frozenset(frozenset(e) for e in edges)


# ---- the grid ------------------------------------------------------------------------------


def expand(grid: dict | list[dict]) -> Iterator[dict]:
    """One dict per run: the setting, the candidate and the seed, plus the form's TrainConfig fields.
    A list of grids is the runs of each in turn (a design that changes one axis at a time)."""
    if isinstance(grid, list):
        for part in grid:
            yield from expand(part)
        return
    for true_graph, form, prior, l_struct, noise, candidate in itertools.product(
        grid["true_graphs"],
        grid["forms"],
        grid["code_prior"],
        grid["lambda_struct"],
        grid["noise_dim"],
        grid["candidates"],
    ):
        form = {"struct_form": form} if isinstance(form, str) else dict(form)
        lambda_infos, seeds = form.pop("lambda_info", grid["lambda_info"]), form.pop("seeds", grid["seeds"])
        for l_info, seed in itertools.product(lambda_infos, seeds):
            options = [f"{k.removeprefix('struct_')}={v}" for k, v in form.items() if k != "struct_form"]
            setting = dict(true_graph=true_graph, form=" ".join([form["struct_form"], *options]))
            setting |= dict(lambda_info=l_info, lambda_struct=l_struct, code_prior=prior, noise_dim=noise)
            yield setting | dict(candidate=candidate, seed=seed, train_fields=form)


def run_key(run: dict) -> str:
    return "|".join(f"{k}={run[k]}" for k in (*SETTING, "candidate", "seed"))


def run_config(run: dict, training: dict, edges: tuple[Edge, ...], device: str) -> RunConfig:
    train = apply_preset(TrainConfig(), training.get("preset", "quick"))
    train = dataclasses.replace(
        train,
        **training.get("train", {}),
        **run["train_fields"],
        lambda_info=run["lambda_info"],
        lambda_struct=run["lambda_struct"],
        code_prior=run["code_prior"],
        seed=run["seed"],
    )
    graph = ", ".join(f"c{i}->q{i}" for i in (1, 2, 3)) + "".join(f", {u}->{v}" for u, v in edges)
    return RunConfig(
        dataset="shapes",
        graph=graph,
        codes=f"cont,cont,cont;noise={run['noise_dim']}",
        device=device,
        n_eval=training.get("n_eval", 2000),
        shapes_graph=run["true_graph"],
        train=train,
    )


def run_one(run: dict, training: dict, datasets: dict, run_root: Path, device: str, keep: bool) -> dict:
    """Train and score one run; the JSON line for it."""
    truth = GRAPHS[run["true_graph"]]
    edges = candidate_edges(run["candidate"], truth)
    cfg = run_config(run, training, edges, device)
    if run["true_graph"] not in datasets:
        datasets[run["true_graph"]] = load_dataset(cfg)
    graph = Graph.parse(cfg.graph, continuous_spec(3, run["noise_dim"]))
    run_dir = run_root / hashlib.sha1(run_key(run).encode()).hexdigest()[:12]
    ground_truth = training.get("ground_truth", GROUND_TRUTH)
    result = run_trial(
        cfg, graph, datasets[run["true_graph"]], Recorder(run_dir), extra_scores=ground_truth, progress=False
    )
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    row = {k: v for k, v in run.items() if k != "train_fields"} | {"key": run_key(run)}
    return row | {
        "edges": ", ".join(f"{u}->{v}" for u, v in edges),
        "true_class": markov_class(edges) == markov_class(truth),
        "status": result.status,
        "seconds": round(result.seconds, 1),
        "info_version": INFO_VERSION,
        "scores": result.scores,
    }


# ---- the summary ---------------------------------------------------------------------------


def badness(row: dict, objective: str) -> float:
    """The objective oriented so that lower is better (NaN when missing)."""
    value = row["scores"].get(objective, math.nan)
    return -value if scores.direction(objective) == "maximize" else value


def objective_line(rows: list[dict], objective: str) -> str:
    """| objective | truth class first | rho(badness, SHD) | gap | seed std | verdict |"""
    if objective.startswith("info"):  # scores of one definition only (see INFO_VERSION)
        rows = [r for r in rows if r.get("info_version") == INFO_VERSION]
        if not rows:
            return f"| {objective} | n/a: only the old calibrated info | | | | |"
    firsts = []  # per seed: does the true class score strictly better than every other candidate?
    for seed in sorted({r["seed"] for r in rows}):
        scored = [r for r in rows if r["seed"] == seed and not math.isnan(badness(r, objective))]
        truth = [badness(r, objective) for r in scored if r["true_class"]]
        other = [badness(r, objective) for r in scored if not r["true_class"]]
        if truth and other:
            firsts.append(min(truth) < min(other))
    pairs = [(badness(r, objective), r["scores"].get("shd", math.nan)) for r in rows]
    pairs = np.array([p for p in pairs if not any(map(math.isnan, p))]).reshape(-1, 2)
    rho = spearmanr(pairs[:, 0], pairs[:, 1])[0] if len(pairs) > 2 and pairs.std(0).min() > 0 else math.nan
    by_candidate = {c: [badness(r, objective) for r in rows if r["candidate"] == c] for c in _candidates(rows)}
    means = {c: np.nanmean(v) for c, v in by_candidate.items() if not np.isnan(v).all()}
    true_cands = {r["candidate"] for r in rows if r["true_class"]}
    truth_mean = min((m for c, m in means.items() if c in true_cands), default=math.nan)
    other_mean = min((m for c, m in means.items() if c not in true_cands), default=math.nan)
    gap = other_mean - truth_mean  # > 0: the truth's class scores better than every other candidate
    stds = [np.std(v, ddof=1) for v in by_candidate.values() if len(v) > 1 and not np.isnan(v).any()]
    spread = float(np.mean(stds)) if stds else math.nan
    first = f"{sum(firsts)}/{len(firsts)}" if firsts else "n/a"
    return f"| {objective} | {first} | {_fmt(rho)} | {_fmt(gap)} | {_fmt(spread)} | {verdict(gap, spread)} |"


def verdict(gap: float, spread: float) -> str:
    if math.isnan(spread):
        return "one seed: spread unknown"
    if math.isnan(gap):
        return "n/a"
    if abs(gap) < spread:
        return "**difference smaller than the seed spread**"
    return "truth better" if gap > 0 else "truth worse"


def setting_section(rows: list[dict]) -> list[str]:
    r0 = rows[0]
    title = f"{r0['true_graph']} · {r0['form']} · λ_info {r0['lambda_info']} · λ_struct {r0['lambda_struct']}"
    title += f" · prior {r0['code_prior']} · noise {r0['noise_dim']}"
    done = [r for r in rows if r["status"] != "diverged"]
    current = [r for r in done if r.get("info_version") == INFO_VERSION]
    collapsed = [r for r in current if min_info(r) < COLLAPSE_INFO]
    truth_rows = [r for r in done if r["candidate"] == "truth"]
    n_cand, n_true = len(_candidates(rows)), len({r["candidate"] for r in rows if r["true_class"]})
    gt = ", ".join(
        f"{m} {_fmt(np.mean([r['scores'][m] for r in truth_rows]))}"
        for m in ("mig", "dci")
        if truth_rows and all(m in r["scores"] for r in truth_rows)
    )
    lines = [
        f"### {title}",
        "",
        f"{len(rows)} runs ({n_cand} candidates x {len({r['seed'] for r in rows})} seeds), "
        f"{len(rows) - len(done)} diverged, collapse rate {len(collapsed)}/{len(current)}"
        + (
            f" ({len(done) - len(current)} runs scored with the old calibrated info left out)"
            if len(current) < len(done)
            else ""
        )
        + (f"; the true graph's {gt}" if gt else "")
        + f". The true class holds {n_true} of the {n_cand} candidates: a random ranking puts it"
        + f" first in {n_true / n_cand:.0%} of seeds.",
        "",
        "| objective | truth class first | rho(badness, SHD) | gap | seed std | verdict |",
        "|---|---|---|---|---|---|",
    ]
    return lines + [objective_line(done, o) for o in OBJECTIVES] + [""]


def by_setting(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows grouped by their setting (every field of SETTING), in first-seen order."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in SETTING), []).append(r)
    return groups


def summarize(rows: list[dict], grid_name: str) -> str:
    groups = by_setting(rows)
    header = [
        f"# Recovery benchmark ({grid_name} grid: {len(rows)} runs done, {len(groups)} settings)",
        "",
        "Per setting: *truth class first* counts the seeds where the best candidate under the objective is",
        "Markov equivalent to the true factor graph (same skeleton and v-structures); *rho(badness, SHD)* is",
        "the Spearman correlation over candidates and seeds of the objective, oriented so lower is better,",
        "with the measured SHD (+1: ranks as SHD does); *gap* is the best other candidate's mean badness minus",
        "the true class's (> 0: the truth wins); *seed std* is the mean over candidates of the seed-to-seed",
        f"standard deviation; a run has *collapsed* when a code's info/cK falls below {COLLAPSE_INFO}.",
        "",
    ]
    return "\n".join(header + [line for group in groups.values() for line in setting_section(group)])


def min_info(row: dict) -> float:
    return min((v for k, v in row["scores"].items() if k.startswith("info/")), default=math.nan)


def _candidates(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["candidate"] for r in rows))


def _fmt(x: float) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:+.3g}"


def plot(rows: list[dict], path: Path) -> None:
    """One row of panels per setting, one panel per objective (and SHD): every seed's value per
    candidate (info panels: current-definition rows only), the truth's class in red; a glance
    shows whether any objective singles it out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = by_setting(rows)
    columns = (*OBJECTIVES, "shd")
    fig, axes = plt.subplots(len(groups), len(columns), figsize=(3.0 * len(columns), 2.4 * len(groups)), squeeze=False)
    for i, group in enumerate(groups.values()):
        candidates = _candidates(group)
        for j, name in enumerate(columns):
            ax = axes[i][j]
            for x, cand in enumerate(candidates):
                points = [r for r in group if r["candidate"] == cand and name in r["scores"]]
                if name.startswith("info"):  # one definition only, as in the tables
                    points = [r for r in points if r.get("info_version") == INFO_VERSION]
                color = "tab:red" if points and points[0]["true_class"] else "tab:blue"
                ys = [r["scores"][name] for r in points]
                ax.scatter([x] * len(ys), ys, color=color, s=18)
                if ys:
                    ax.hlines(np.mean(ys), x - 0.3, x + 0.3, color=color)
            better = "" if name == "shd" else f" ({'higher' if scores.direction(name) == 'maximize' else 'lower'} wins)"
            ax.set_title(name + better, fontsize=8)
            ax.set_xticks(range(len(candidates)), candidates, rotation=35, fontsize=7, ha="right")
            ax.tick_params(axis="y", labelsize=7)
        r0 = group[0]
        axes[i][0].set_ylabel(
            f"{r0['true_graph']} truth\n{r0['form']}\nprior {r0['code_prior']}\nλs {r0['lambda_struct']} noise {r0['noise_dim']}",
            fontsize=7,
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- main ----------------------------------------------------------------------------------


def load_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="bench/recovery.json")
    parser.add_argument("--grid", default="small", help="a grid of the config: small, full")
    parser.add_argument("--out", default="docs/results/recovery", help="folder of results.jsonl and summary.md")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--run-root", default="runs/recovery", help="scratch folder of the run folders")
    parser.add_argument("--keep-runs", action="store_true", help="keep run folders (checkpoints, traversals)")
    parser.add_argument(
        "--shard", default="0/1", help="I/N: only every N-th run from the I-th (N processes share a box)"
    )
    parser.add_argument("--dry-run", action="store_true", help="count the runs to do and stop")
    parser.add_argument(
        "--summarize", action="store_true", help="rewrite summary.md from the rows done so far, run nothing"
    )
    args = parser.parse_args(argv)
    config = json.loads(Path(args.config).read_text())
    if args.grid not in config["grids"]:
        raise SystemExit(f"no grid {args.grid!r} in {args.config}; it has {', '.join(config['grids'])}")
    grid = config["grids"][args.grid]
    out = Path(args.out)
    results = out / "results.jsonl"
    keys = {run_key(run) for run in expand(grid)}
    done = {r["key"] for r in load_rows(results)} & keys
    shard, n_shards = (int(x) for x in args.shard.split("/"))
    todo = [run for i, run in enumerate(expand(grid)) if i % n_shards == shard and run_key(run) not in done]
    print(f"{args.grid} grid: {len(keys)} runs, {len(done)} done, {len(todo)} to do")
    if args.dry_run:
        return
    if args.summarize:
        write_summary(out, [r for r in load_rows(results) if r["key"] in keys], args.grid)
        return
    out.mkdir(parents=True, exist_ok=True)
    datasets: dict = {}
    for i, run in enumerate(todo):
        row = run_one(run, config["training"], datasets, Path(args.run_root), args.device, args.keep_runs)
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{i + 1}/{len(todo)}] {row['key']}: {row['status']} in {row['seconds']} s", flush=True)
    write_summary(out, [r for r in load_rows(results) if r["key"] in keys], args.grid)


def write_summary(out: Path, rows: list[dict], grid_name: str) -> None:
    """``summary.md`` (the tables) and ``summary.png`` (every run's objectives per candidate)."""
    if not rows:
        (out / "summary.md").write_text(summarize(rows, grid_name))
        return
    (out / "summary.md").write_text(summarize(rows, grid_name) + "\n![every run](summary.png)\n")
    plot(rows, out / "summary.png")


if __name__ == "__main__":
    main()
