"""One run of one graph: the anchored subset (size, seed, record) and a tiny anchored training run."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
import torch

from gan.train import TrainConfig
from structsearch import trial
from structsearch.config import RunConfig
from structsearch.datasets import get_dataset
from structsearch.graph import preset


@pytest.fixture(scope="module")
def shapes():
    return get_dataset("shapes", n_train=4000, n_test=500)


def _cfg(anchor_labels: float = 0.0, seed: int = 0, **train) -> RunConfig:
    fields = dict(n_steps=5, batch_size=16, width=0.125, log_every=5, checkpoint_every=0) | train
    return RunConfig(
        dataset="shapes", device="cpu", n_eval=100, train=TrainConfig(anchor_labels=anchor_labels, seed=seed, **fields)
    )


@pytest.mark.parametrize(
    ("anchor_labels", "count"), [(0.01, 40), (0.5, 2000), (1e-6, 1), (1.0, 1), (37.0, 37), (4000, 4000)]
)
def test_the_anchored_subset_has_the_size_asked_for(shapes, anchor_labels, count) -> None:
    index = trial.anchor_index(_cfg(anchor_labels), shapes)
    assert len(index) == count and index.dtype == np.int64
    assert np.all(np.diff(index) > 0) and 0 <= index[0] and index[-1] < shapes.n_train  # sorted, distinct


def test_more_anchors_than_training_images_are_refused(shapes) -> None:
    with pytest.raises(ValueError, match="--anchor-labels 4001 asks for 4001 anchored images, but shapes has 4000"):
        trial.check_anchors(_cfg(4001), shapes.spec, shapes)
    trial.check_anchors(_cfg(4000), shapes.spec, shapes)  # all of them is fine
    trial.check_anchors(_cfg(0), shapes.spec, shapes)  # off: nothing to check


def test_the_subset_is_fixed_by_the_seed_and_leaves_torch_alone(shapes) -> None:
    state = torch.get_rng_state()
    a, b, c = (trial.anchor_index(_cfg(100, seed=s), shapes) for s in (3, 3, 4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)  # drawn by numpy: no torch stream moves
    assert np.array_equal(trial.anchor_index(_cfg(0.025, seed=3), shapes), a)  # 0.025 of 4000 is the same 100


def test_make_trainer_gives_the_subset_with_its_known_codes(shapes) -> None:
    cfg = _cfg(50, seed=1)
    trainer = trial.make_trainer(cfg, preset("collider", shapes.spec), shapes)
    index = trial.anchor_index(cfg, shapes)
    assert len(trainer.anchors) == 50 and trainer.anchors.mask == (True, True, True)
    np.testing.assert_allclose(
        trainer.anchors.targets.numpy(), shapes.scm.values(shapes.train_factors[index]), rtol=1e-6
    )
    images, targets = trainer.anchors.batch(8, torch.Generator().manual_seed(0))
    positions = torch.randint(50, (8,), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(images, shapes.observations_from_factors(shapes.train_factors[index[positions.numpy()]]))
    assert trial.make_trainer(_cfg(0), preset("collider", shapes.spec), shapes).anchors is None


def test_the_run_folder_records_its_anchors(shapes, tmp_path) -> None:
    cfg = _cfg(25, seed=2)
    result = trial.run_trial(
        cfg, preset("collider", shapes.spec), shapes, trial.Recorder(tmp_path / "run"), progress=False
    )
    record = json.loads((tmp_path / "run" / "anchors.json").read_text())
    index = trial.anchor_index(cfg, shapes)
    assert record["count"] == 25 and record["seed"] == 2 and record["codes"] == ["c1", "c2", "c3"]
    assert record["index"] == index.tolist()
    assert record["sha256"] == hashlib.sha256(index.astype("<i8").tobytes()).hexdigest()
    assert result.status == "completed" and "anchor_r2" in result.scores
    plain = tmp_path / "plain"
    trial.run_trial(_cfg(0), preset("collider", shapes.spec), shapes, trial.Recorder(plain), progress=False)
    assert not (plain / "anchors.json").exists()


@pytest.mark.slow
def test_anchors_pin_the_codes_to_the_factors(shapes) -> None:
    """200 steps at width 0.125, with 200 anchored images or none. Measured on shapes (4000
    training images, collider), seeds 0-4: anchor_r2 0.83, 0.73, 0.61, 0.45, 0.80 anchored,
    -0.27, -0.11, -0.68, -1.12, 0.18 without; seed 0 is asserted with margin."""
    graph = preset("collider", shapes.spec)
    cfg = _cfg(200, n_steps=200, batch_size=64, log_every=50)
    cfg = dataclasses.replace(cfg, n_eval=500)
    anchored = trial.train_and_score(cfg, graph, shapes)
    plain = trial.train_and_score(
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, anchor_labels=0)), graph, shapes
    )
    assert anchored.result.losses["loss/anchor"] > 0 and plain.result.losses["loss/anchor"] == 0
    assert anchored.scores["anchor_r2"] > 0.5  # measured 0.83
    assert plain.scores["anchor_r2"] < anchored.scores["anchor_r2"] - 0.4  # measured -0.27
