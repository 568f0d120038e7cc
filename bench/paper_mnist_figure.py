"""One picture per traversal kind of the MNIST comparison: rows = continuous codes, columns = models.

    python bench/paper_mnist_figure.py --out docs/results/paper [--runs runs/paper-mnist-{infogan,independent,entangled}]

Reads each run's ``traversals/traversal_cK.png`` (c from -1 to 1) and ``traversal_cK_extrapolate.png``
(c at -2, 0, 2) and writes ``mnist_traversals.png`` and ``mnist_extrapolate.png``, plus copies of the
categorical grids (``mnist_c1_<model>.png``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

MODELS = ("infogan", "independent", "entangled")
TITLES = {"infogan": "InfoGAN (λ_struct 0)", "independent": "independent graph", "entangled": "entangled: q2, q3 -> q4"}


def model_name(run: Path) -> str:
    return run.name.removeprefix("paper-mnist-")


def figure(runs: list[Path], codes: list[str], suffix: str, path: Path) -> None:
    fig, axes = plt.subplots(len(codes), len(runs), figsize=(3.2 * len(runs), 2.9 * len(codes)), squeeze=False)
    for j, run in enumerate(runs):
        model = model_name(run)
        for i, code in enumerate(codes):
            ax = axes[i][j]
            ax.imshow(mpimg.imread(run / "traversals" / f"traversal_{code}{suffix}.png"), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(TITLES.get(model, model), fontsize=9)
            if j == 0:
                ax.set_ylabel(code, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=[f"runs/paper-mnist-{m}" for m in MODELS])
    parser.add_argument("--out", default="docs/results/paper")
    args = parser.parse_args()
    runs, out = [Path(r) for r in args.runs], Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    codes = sorted(
        p.stem.removeprefix("traversal_") for p in (runs[0] / "traversals").glob("traversal_c*_extrapolate.png")
    )
    codes = [c.removesuffix("_extrapolate") for c in codes]
    figure(runs, codes, "", out / "mnist_traversals.png")
    figure(runs, codes, "_extrapolate", out / "mnist_extrapolate.png")
    for run in runs:
        shutil.copy(run / "traversals" / "traversal_c1.png", out / f"mnist_c1_{model_name(run)}.png")


if __name__ == "__main__":
    main()
