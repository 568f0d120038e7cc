"""Which digits does the categorical code merge? The confusion behind cat_acc (issue 15).

    python bench/cat_confusion.py RUN [RUN ...] [--out FILE.md]

cat_acc matches the code's classes one to one to the digits and counts the images of each digit
that land in its matched class. On MNIST it moves in steps of about ten points: a code that gives
two digits one class (and splits another digit over two classes) loses most of one digit. Per run,
read as cat_acc reads it (all 10,000 test images, batch norm with the test images' statistics):
the accuracy, how many digits keep at least ``--own`` of their images in their matched class, and
for each digit that does not, where its images went (the class that took most of them, named by
the digit matched to it).

Beside it, ``--demand``: which digits R_G's demand falls on. On 5,120 generated images the
independent graph's deviance for a continuous reading q_j is mostly its dependence on the fed digit
class given its own code c_j (``bench/rg_decompose.py``); that part is the between-class spread of
q_j's residual on c_j. Its share per class, named by the digit matched to the class, says which
digits' continuous readings R_G asks to change.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from structsearch import scores as scores_mod
from structsearch.trial import load_run


def digit_report(predicted: np.ndarray, labels: np.ndarray, k: int, own: float = 0.8) -> dict:
    """cat_acc's matching of ``k`` classes to the labels, and the digits it leaves without a class."""
    n_labels = int(labels.max()) + 1
    confusion, rows, cols = scores_mod.class_matching(predicted, labels, k)
    digit_of = dict(zip(rows.tolist(), cols.tolist()))  # class -> its matched digit
    class_of = {d: c for c, d in digit_of.items()}
    lost = []
    for digit in range(n_labels):
        column = confusion[:, digit]
        kept = column[class_of[digit]] / column.sum()
        if kept < own:
            taker = int(np.argmax(np.where(np.arange(k) == class_of[digit], -1, column)))
            lost.append((digit, float(kept), digit_of.get(taker), float(column[taker] / column.sum())))
    return {
        "digit_of": digit_of,
        "cat_acc": float(confusion[rows, cols].sum() / len(labels)),
        "own": n_labels - len(lost),
        "lost": lost,  # (digit, share kept in its class, the digit of the class that took most, its share)
    }


def class_shares(classes: np.ndarray, residual: np.ndarray, k: int) -> np.ndarray:
    """Each class's share of the between-class sum of squares of ``residual`` (sums to 1)."""
    counts = np.bincount(classes, minlength=k)
    means = np.bincount(classes, weights=residual, minlength=k) / np.maximum(counts, 1)
    between = counts * (means - residual.mean()) ** 2
    return between / between.sum()


@torch.no_grad()
def demand(trainer, spec, n: int = 5120, seed: int = 7) -> dict[int, np.ndarray]:
    """Per continuous code j: each fed class's share of q_j's dependence on the class given c_j."""
    z, c = trainer.prior.sample(n, torch.Generator().manual_seed(seed), torch.device("cpu"))
    q = torch.cat([trainer.D(trainer.G(z[i : i + 128], c[i : i + 128]))[1].float() for i in range(0, n, 128)])
    c_parts, q_parts = [p.numpy() for p in spec.split(c)], [p.numpy() for p in spec.split(q)]
    cat = next(i for i, code in enumerate(spec.codes) if code.kind == "categorical")
    classes = c_parts[cat].argmax(1)
    out = {}
    for j, code in enumerate(spec.codes):
        if code.kind == "continuous":
            y, x = q_parts[j][:, 0], np.column_stack([c_parts[j][:, 0], np.ones(n)])
            residual = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
            out[j] = class_shares(classes, residual, spec.codes[cat].n_classes)
    return out


@torch.no_grad()
def run_report(run: Path, own: float, with_demand: bool = False) -> dict:
    _, graph, dataset, trainer = load_run(run, "cpu")
    spec = graph.spec
    first = next(i for i, code in enumerate(spec.codes) if code.kind == "categorical")
    images, labels = dataset.test_images(None)
    q = scores_mod.read(scores_mod.reading_net(trainer.D, images), images)
    predicted = spec.split(q)[first].argmax(1).numpy()
    report = digit_report(predicted, labels.numpy(), spec.codes[first].n_classes, own)
    if with_demand:
        trainer.G.train()  # as in training, where R_G is computed
        trainer.D.train()
        report["demand"] = demand(trainer, spec)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--own", type=float, default=0.8, help="share of a digit's images its class must keep")
    parser.add_argument("--demand", action="store_true", help="add the digits R_G's demand falls on")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [
        f"| run | cat_acc | digits keeping {args.own:.0%} | the others: digit kept%, to whose class (share) |"
        + (" R_G's digit demand on q2: top 3 | on q3 |" if args.demand else ""),
        "|---|---|---|---|" + ("---|---|" if args.demand else ""),
    ]
    for run in args.runs:
        r = run_report(run, args.own, args.demand)
        lost = "; ".join(f"{d} {kept:.0%}, to {to}'s ({share:.0%})" for d, kept, to, share in r["lost"])
        line = f"| {run.parent.name}/{run.name} | {r['cat_acc']:.3f} | {r['own']} | {lost} |"
        for j, shares in r.get("demand", {}).items():  # the three largest, by the digit of the class
            top = np.argsort(shares)[::-1][:3]
            line += f" q{j + 1}: " + ", ".join(f"{r['digit_of'][k]} {shares[k]:.0%}" for k in top) + " |"
        lines.append(line)
        print(lines[-1], flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
