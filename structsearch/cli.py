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
from structsearch.graph import PRESETS, GraphError, load_graph

logger = logging.getLogger("structsearch")

USAGE_ERRORS: tuple[type[Exception], ...] = (GraphError,)


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
