"""A file that is not a checkpoint (empty, truncated, random bytes, a malicious pickle) is refused at
``Trainer.load`` in one line naming it, and nothing in it runs."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import pytest
import torch

from gan.latents import get_spec
from gan.train import CheckpointError, TrainConfig, Trainer
from structsearch.graph import preset

SPEC = get_spec("shapes")
TINY = TrainConfig(n_steps=2, batch_size=8, width=0.125, log_every=1, checkpoint_every=0)


class Payload:
    """Unpickled, this creates ``marker``: the stand-in for code a malicious checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _trainer() -> Trainer:
    data = torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sample = lambda b, g: data[torch.randint(len(data), (b,), generator=g)]  # noqa: E731
    parents = preset("collider", SPEC).parents()
    return Trainer(TINY, SPEC, parents, sample, (1, 32, 32), torch.device("cpu"))


def _good(tmp_path: Path) -> bytes:
    trainer = _trainer()
    trainer.run()
    return trainer.save(tmp_path / "good.pt").read_bytes()


def test_the_payload_is_real(tmp_path) -> None:
    """Plain unpickling runs it: so the refusals below are what keeps the marker from existing."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["empty", "truncated", "random bytes", "malicious pickle", "malicious torch file"])
def test_a_bad_checkpoint_is_refused_by_name_and_runs_nothing(tmp_path, kind) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "checkpoint.pt"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        good = _good(tmp_path)
        path.write_bytes(good[: len(good) // 2])
    elif kind == "random bytes":
        path.write_bytes(random.Random(0).randbytes(4096))
    elif kind == "malicious pickle":
        path.write_bytes(pickle.dumps({"step": 1, "G": Payload(marker)}))
    else:
        torch.save({"step": 1, "G": Payload(marker)}, path)
    trainer = _trainer()
    with pytest.raises(CheckpointError) as info:
        trainer.load(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not a valid structsearch checkpoint (")
    assert "earlier copy" in message and "start the run over" in message
    assert "weights_only" not in message and "\n" not in message
    assert not marker.exists(), "unpickling the checkpoint ran its code"
    assert trainer.step == 0


def test_a_checkpoint_of_other_models_is_refused(tmp_path) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 3}, path)  # plain data, but not a Trainer's state
    with pytest.raises(CheckpointError, match=r"is not a valid structsearch checkpoint \(it lacks 'G'\)"):
        _trainer().load(path)


def test_a_good_checkpoint_still_loads(tmp_path) -> None:
    _good(tmp_path)
    trainer = _trainer()
    trainer.load(tmp_path / "good.pt")
    assert trainer.step == 2
