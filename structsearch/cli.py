"""Command line: the only reader of argv and the environment, and the only logging setup.

Every user mistake (bad graph, unknown dataset, missing data, bad number) exits with code 2 and a
one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gan.latents import get_spec
from structsearch import config as config_mod
from structsearch.datasets import DatasetError
from structsearch.graph import PRESETS, GraphError, load_graph

logger = logging.getLogger("structsearch")

USAGE_ERRORS: tuple[type[Exception], ...] = (GraphError, DatasetError)


class UsageError(Exception):
    """A user mistake found by the CLI itself; printed as one line, exit code 2."""


def cmd_graph(args: argparse.Namespace) -> int:
    spec = _spec(args.codes)
    graph = load_graph(args.graph, spec)
    print(f"codes:   {spec.describe()}")
    print(f"graph:   {graph.key or '(no edges)'}")
    print("parents:")
    for v, ps in graph.parents().items():
        print(f"  {v} <- {', '.join(ps) if ps else '(none)'}")
    if args.json:
        Path(args.json).write_text(graph.to_json() + "\n")
        print(f"json:    {args.json}")
    if args.dot:
        Path(args.dot).write_text(graph.to_dot())
        print(f"dot:     {args.dot}")
    if args.out:
        from structsearch.drawing import draw_graph

        print(f"picture: {draw_graph(graph, args.out)}")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from structsearch.datasets import list_datasets

    rows = list_datasets(args.data_dir)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        shape = "x".join(map(str, r["image_shape"]))
        print(f"{r['name']:<{width}}  {shape:<8} train {r['n_train']:>7,}  test {r['n_test']:>6,}  {r['targets']}")
        print(f"{'':<{width}}  files: {r['files']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from structsearch.trial import load_dataset, resolve_graph, run_trial

    runs_dir = Path(args.runs_dir)
    run_dir = Path(args.out) if args.out else None
    if args.resume:
        if run_dir is None or not (run_dir / "config.json").exists():
            raise UsageError(f"--resume needs --out pointing at an existing run folder (with config.json), got {args.out!r}")
        cfg = config_mod.config_from_args(args, config_mod.RunConfig.load(run_dir / "config.json"))
    else:
        cfg = config_mod.config_from_args(args)
    _check(cfg)
    dataset = load_dataset(cfg, _device(cfg.device))
    graph = resolve_graph(cfg, dataset)
    if run_dir is None:
        run_dir = runs_dir / f"{cfg.dataset}-{_slug(cfg.graph)}-seed{cfg.train.seed}"
    if not args.resume and (run_dir / "checkpoint.pt").exists():
        raise UsageError(f"{run_dir} already holds a run; pass --resume to continue it or --out NEW_FOLDER")
    tracker = _tracker(args.tracking, f"train-{cfg.dataset}", runs_dir)
    print(f"training {graph.key or '(no edges)'} on {cfg.dataset} ({graph.spec.describe()}) on {dataset.device}")
    result = run_trial(cfg, graph, dataset, run_dir, tracker, resume=args.resume)
    print(f"{result.status}: {result.message} ({result.seconds:.0f} s)")
    for key, value in sorted(result.scores.items()):
        print(f"  {key:<16} {value: .4f}")
    print(f"run folder: {run_dir}  (traversals in {run_dir / 'traversals'})")
    if result.run_id:
        print(f"MLflow run {result.run_id}: open with  mlflow ui --backend-store-uri {tracker.uri}")
    return 0 if result.status != "diverged" else 1


def _check(cfg) -> None:
    try:
        config_mod.check(cfg)
        get_spec(cfg.codes) if cfg.codes else None
    except ValueError as err:
        raise UsageError(str(err)) from None


def _device(name: str):
    from gan.train import resolve_device

    try:
        return resolve_device(name)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _tracker(uri: str | None, experiment: str, runs_dir: Path):
    from structsearch.tracking import make_tracker

    try:
        return make_tracker(uri, experiment, runs_dir)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _slug(text: str) -> str:
    name = Path(text).stem if Path(text).suffix in (".json", ".txt", ".edges") else text
    slug = "".join(ch if ch.isalnum() else "-" for ch in name)
    return "-".join(filter(None, slug.split("-")))[:60] or "graph"


def _spec(text: str):
    try:
        return get_spec(text)
    except ValueError as err:
        raise UsageError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="structsearch",
        description="Search DAGs over InfoGAN codes: train a GAN regularized by each graph, score it, compare in MLflow.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("graph", help="validate a graph, print its canonical form and parents, draw it")
    p.add_argument("graph", help=f"a preset ({', '.join(PRESETS)}), edges like 'c1->q1, q1->q3', or a .json/.txt file")
    p.add_argument(
        "--codes",
        default="mnist",
        help="latent spec: a preset (mnist, mnist3, dsprites, shapes) or e.g. 'cat10,cont,cont;noise=62'",
    )
    p.add_argument("--out", help="write a PNG picture of the graph here")
    p.add_argument("--json", help="write the graph as JSON here")
    p.add_argument("--dot", help="write the graph as Graphviz DOT here")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("datasets", help="list the datasets with their sizes, factors and where their files are")
    p.add_argument("--data-dir", help="also look in this folder")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("train", help="train one graph: InfoGAN + the structural regularizer, scores, MLflow")
    p.add_argument("--preset", choices=list(config_mod.PRESETS), help="training preset (paper, quick, tiny); flags override it")
    p.add_argument("--out", help="run folder (default: runs/<dataset>-<graph>-seed<S>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--runs-dir", default="runs", help="where runs and the default MLflow store live (default: runs)")
    p.add_argument("--tracking", help="MLflow tracking URI (default: sqlite:///<runs-dir>/mlflow.db), or 'none'")
    config_mod.add_config_arguments(p)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (UsageError, *USAGE_ERRORS) as err:
        print(f"structsearch {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
