"""How much of a same-seed cat_acc difference is the pairing's own noise? Issue 15's null.

    python bench/seed_null.py ROWS.json [ROWS.json ...] [--base infogan] [--null independent-l1e-6]
                              [--models M ...] [--steps 1000] [--delta 0.02]

``bench/mnist_seeds.py`` pairs every model with the same seed's InfoGAN run: same initial weights,
same data order. The pairing only helps if two runs that start alike stay alike. The ``null`` model
(default ``independent-l1e-6``: R_G's whole code path at lambda_struct 1e-6, a demand of nothing)
measures that: its same-seed differences from InfoGAN are what a run drifts from its pair when
nothing is asked of it. Per model the table gives:

* the same-seed difference from ``base`` (median [min, max]) and its median size;
* Wilcoxon's signed-rank p for those differences (paired);
* Mann-Whitney's p against ``base`` alone, and (when the rows have the null) against ``base`` and
  ``null`` pooled (unpaired: if the null is indistinguishable from ``base``, it doubles the reference
  sample).

Below it: the single-run spread (standard deviation of ``base`` and ``null`` pooled) and how many
seeds per model an unpaired comparison would need to tell a ``--delta`` difference from zero
(two-sided 5%, power 80%, normal approximation). Rows are the files' ``rows.json`` entries; a
(model, seed) is taken from the first file that has it at ``--steps``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from scipy import stats


def load(paths: list[Path], steps: int) -> dict[tuple[str, int], float]:
    acc: dict[tuple[str, int], float] = {}
    for path in paths:
        for row in json.loads(path.read_text()):
            if row["step"] == steps and "cat_acc" in row:
                acc.setdefault((row["model"], row["seed"]), row["cat_acc"])
    return acc


def table(acc: dict[tuple[str, int], float], base: str, null: str, models: list[str]) -> list[str]:
    def seeds(model: str) -> list[int]:
        return sorted(s for m, s in acc if m == model)

    base_accs = [acc[base, s] for s in seeds(base)]
    null_accs = [acc[null, s] for s in seeds(null)]  # without them, no pooled column
    pooled = f" vs {base} + {null} |" if null_accs else ""
    lines = [
        f"| model | seeds | cat_acc median | minus {base}, same seed: median [min, max] | median size "
        f"| Wilcoxon p (paired) | Mann-Whitney p vs {base} |{pooled}",
        "|---|---|---|---|---|---|---|" + ("---|" if null_accs else ""),
    ]
    for model in [base, null, *(m for m in models if m not in (base, null))]:
        mine = [acc[model, s] for s in seeds(model)]
        if not mine:
            continue
        diffs = [acc[model, s] - acc[base, s] for s in seeds(model) if (base, s) in acc]
        if model == base or not diffs:
            lines.append(
                f"| {model} | {len(mine)} | {statistics.median(mine):.3f} | | | | |" + (" |" if null_accs else "")
            )
            continue
        wilcoxon = stats.wilcoxon(diffs).pvalue if any(diffs) else 1.0
        vs_base = stats.mannwhitneyu(mine, base_accs).pvalue
        # the null is not its own reference: its cell stays empty
        vs_both = "" if model == null else f" {stats.mannwhitneyu(mine, base_accs + null_accs).pvalue:.2f}"
        lines.append(
            f"| {model} | {len(mine)} | {statistics.median(mine):.3f} | {statistics.median(diffs):+.3f} "
            f"[{min(diffs):+.3f}, {max(diffs):+.3f}] | {statistics.median(abs(d) for d in diffs):.3f} "
            f"| {wilcoxon:.2f} | {vs_base:.2f} |" + (f"{vs_both} |" if null_accs else "")
        )
    return lines


def seeds_needed(sd: float, delta: float) -> int:
    """Seeds per arm for a two-sided 5% test with 80% power to see ``delta`` (normal approximation)."""
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.80)
    return math.ceil(2 * (z * sd / delta) ** 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", type=Path, nargs="+")
    parser.add_argument("--base", default="infogan")
    parser.add_argument("--null", default="independent-l1e-6")
    parser.add_argument("--models", nargs="*", default=None, help="default: every model in the rows")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--delta", type=float, default=0.02, help="the difference to resolve (0.02: 2 points)")
    args = parser.parse_args()
    acc = load(args.rows, args.steps)
    models = args.models if args.models is not None else sorted({m for m, _ in acc})
    print("\n".join(table(acc, args.base, args.null, models)))
    reference = [v for (m, _), v in acc.items() if m in (args.base, args.null)]
    if len(reference) >= 2:
        sd = statistics.stdev(reference)
        names = " and ".join(m for m in (args.base, args.null) if any(mm == m for mm, _ in acc))
        print(
            f"\nsingle-run spread ({names}, {len(reference)} runs): sd {sd:.3f}; "
            f"an unpaired test needs {seeds_needed(sd, args.delta)} seeds a model to resolve {args.delta:.3f}"
        )


if __name__ == "__main__":
    main()
