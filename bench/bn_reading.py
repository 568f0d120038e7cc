"""How should Q read real images? cat_acc of trained MNIST runs under four batch-norm readings (issue 15).

    python bench/bn_reading.py RUN [RUN ...] [--out docs/results/mnist-seeds-1500/bn_reading.md]

D/Q normalizes each training batch by its own statistics, and real and generated batches alternate,
so the running averages a checkpoint holds mix the two kinds of images. Four ways to read the
10,000 MNIST test images, each scored by cat_acc (the categorical code's accuracy under the best
matching of its classes to the digits):

* ``running``: eval mode with the checkpoint's running averages (what ``model.eval()`` gives);
* ``batch``: train-mode batch norm, each batch of 128 test images normalized by its own statistics
  (what Q saw in training, where every batch was normalized by itself);
* ``train-set``: statistics collected on 10,000 *training* images (one pass, cumulative averages),
  then eval mode on the test images: nothing about the test set is used;
* ``test-set``: statistics of the 10,000 test images themselves (:func:`structsearch.scores.reading_net`,
  what the scores use today).
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

from structsearch import scores as scores_mod
from structsearch.trial import load_run

READINGS = ("running", "batch", "train-set", "test-set")


@torch.no_grad()
def categorical_outputs(
    D: torch.nn.Module, images: torch.Tensor, reading: str, train_images: torch.Tensor
) -> torch.Tensor:
    if reading == "running":
        return scores_mod.read(D, images)
    if reading == "batch":
        net = copy.deepcopy(D).train()
        return torch.cat([net.q(images[i : i + 128]) for i in range(0, len(images), 128)]).float()
    source = train_images if reading == "train-set" else images
    return scores_mod.read(scores_mod.reading_net(D, source), images)


def cat_accs(run: Path) -> dict[str, float]:
    cfg, graph, dataset, trainer = load_run(run, "cpu")
    spec = graph.spec
    first = next(i for i, code in enumerate(spec.codes) if code.kind == "categorical")
    images, labels = dataset.test_images(None)
    train_images, _ = dataset.train_images(10_000)
    out = {}
    for reading in READINGS:
        q = categorical_outputs(trainer.D, images, reading, train_images)
        predicted = spec.split(q)[first].argmax(1).numpy()
        out[reading] = scores_mod.matched_accuracy(predicted, labels.numpy(), spec.codes[first].n_classes)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = {run.name: cat_accs(run) for run in args.runs}
    lines = ["| run | " + " | ".join(READINGS) + " |", "|---|" + "---|" * len(READINGS)]
    lines += [f"| {name} | " + " | ".join(f"{acc[r]:.3f}" for r in READINGS) + " |" for name, acc in rows.items()]
    medians = [statistics.median(acc[r] for acc in rows.values()) for r in READINGS]
    lines.append("| median | " + " | ".join(f"{m:.3f}" for m in medians) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
