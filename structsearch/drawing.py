"""Pictures: a graph drawn as in the paper's figure (input codes below, extracted codes above)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402

from structsearch.graph import Graph  # noqa: E402

C_COLOR, Q_COLOR = "#c8e6c9", "#ffcdd2"


def draw_graph(graph: Graph, path: str | Path, title: str | None = None) -> Path:
    """Write a PNG: c nodes (green, fed to G) on the bottom row, q nodes (red, read by Q) on top.

    c -> q edges are straight; q -> q edges arc above the q row so that they never hide one another.
    """
    n = len(graph.spec.codes)
    pos = {f"c{i}": (i, 0.0) for i in range(1, n + 1)} | {f"q{i}": (i, 1.0) for i in range(1, n + 1)}
    fig, ax = plt.subplots(figsize=(1.3 * n + 1.2, 3.0), dpi=100)
    for u, v in graph.edges:
        (x0, y0), (x1, y1) = pos[u], pos[v]
        bend = 0.0 if u[0] == "c" else (-0.45 if x1 > x0 else 0.45)
        ax.add_patch(
            FancyArrowPatch(
                (x0, y0),
                (x1, y1),
                arrowstyle="-|>",
                mutation_scale=14,
                lw=1.4,
                color="#37474f",
                connectionstyle=f"arc3,rad={bend}",
                shrinkA=15,
                shrinkB=15,
            )
        )
    for node, (x, y) in pos.items():
        kind = graph.spec.code(node).kind
        label = node if kind == "continuous" else f"{node}\n(cat)"
        ax.scatter([x], [y], s=900, color=C_COLOR if node[0] == "c" else Q_COLOR, edgecolors="#37474f", zorder=3)
        ax.text(x, y, label, ha="center", va="center", fontsize=9 if kind == "continuous" else 7, zorder=4)
    ax.set_xlim(0.4, n + 0.6)
    ax.set_ylim(-0.45, 1.9)
    ax.axis("off")
    ax.set_title(title or graph.key or "(no edges)", fontsize=8, wrap=True)
    path = Path(path)  # its folder must exist: a picture never creates folders
    try:
        fig.savefig(path, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path
