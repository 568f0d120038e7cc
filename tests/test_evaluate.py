from __future__ import annotations

import pytest
import torch

from gan.latents import LatentSpec
from structsearch.evaluate import info_scores

SPEC = LatentSpec.parse("cat3,cont,cont,cont")


def _codes(n: int = 4000, seed: int = 0) -> torch.Tensor:
    return SPEC.sample(n, torch.Generator().manual_seed(seed))[1]


def test_info_reads_back_a_shrunken_code_fully_and_an_unrelated_one_not_at_all() -> None:
    """Q's heads output the codes at a fraction of their spread; that costs no information."""
    c = _codes()
    cat, c2, c3, c4 = SPEC.split(c)
    noise = torch.randn(len(c), 1, generator=torch.Generator().manual_seed(1))
    q = torch.cat([5 * cat, 0.3 * c2 + 0.1, 0.3 * c2, torch.zeros_like(c4)], dim=1)
    scores = info_scores(SPEC, c, q)
    assert scores["info/c1"] == 1.0  # the categorical head's argmax is the code
    assert scores["info/c2"] == pytest.approx(1.0)  # scaled and shifted: fully recoverable
    assert scores["info/c3"] == pytest.approx(0.0, abs=0.01)  # reads another code
    assert scores["info/c4"] == 0.0  # a constant head: no NaN
    assert scores["info_min"] == 0.0
    half = info_scores(SPEC, c, torch.cat([5 * cat, c2 + noise * c2.std(), c3, c4], dim=1))
    assert half["info/c2"] == pytest.approx(0.5, abs=0.03)  # corr^2 of a code plus equal noise


def test_metrics_none_means_only_the_base_scores() -> None:
    from structsearch.objectives import available_metrics

    assert available_metrics(None, SPEC, "none") == [] and available_metrics(None, SPEC, "") == []
    with pytest.raises(ValueError, match="nonesuch"):
        available_metrics(None, SPEC, "nonesuch")
