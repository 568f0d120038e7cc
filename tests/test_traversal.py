from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import Tensor, nn

from gan.latents import SPECS, LatentSpec
from gan.models import build_models
from gan.traversal import code_traversal, make_grid, save_png, save_traversals, traversal_values

MNIST = SPECS["mnist"]  # c1 categorical(10) at columns 0..9, c2 at 10, c3 at 11; 62 noise


class RecordingG(nn.Module):
    """A stand-in G that records its inputs and mode, and returns blank 28x28 images."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))  # so the traversal can find a device
        self.calls: list[tuple[Tensor, Tensor, bool]] = []

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        self.calls.append((z.clone(), c.clone(), self.training))
        return torch.zeros(len(z), 1, 28, 28) + self.weight


@pytest.fixture
def small_g() -> nn.Module:
    torch.manual_seed(0)
    G, _ = build_models(MNIST, (1, 28, 28), width=0.25)
    return G


def test_make_grid_shape_range_and_placement() -> None:
    images = torch.linspace(-1, 1, 5).view(5, 1, 1, 1).expand(5, 1, 4, 3)  # image i is constant
    grid = make_grid(images, n_cols=3, pad=2, pad_value=0.5)
    assert grid.shape == (1, 2 * (4 + 2) + 2, 3 * (3 + 2) + 2)
    assert grid.min() >= 0 and grid.max() <= 1
    assert grid[0, 2, 2] == 0.0  # image 0 (-1) at row 0, column 0
    assert grid[0, 2 + 6, 2 + 5] == 1.0  # image 4 (+1) at row 1, column 1
    assert grid[0, 0, 0] == 0.5  # padding
    assert torch.all(grid[0, 8:12, 12:15] == 0.5)  # the missing sixth image is padding


def test_make_grid_rgb() -> None:
    grid = make_grid(torch.zeros(4, 3, 8, 8), n_cols=2, pad=0)
    assert grid.shape == (3, 16, 16)
    assert torch.all(grid == 0.5)


def test_continuous_traversal_inputs() -> None:
    G = RecordingG()
    images = code_traversal(G, MNIST, "c2", n_rows=4)
    assert images.shape == (4 * 10, 1, 28, 28)
    ((z, c, training),) = G.calls
    assert not training
    z, c = z.view(4, 10, -1), c.view(4, 10, -1)  # (rows, columns, ...)
    assert torch.allclose(c[:, :, 10], torch.linspace(-1, 1, 10).expand(4, 10))  # columns vary along c2
    others = torch.cat([z, c[:, :, :10], c[:, :, 11:]], dim=2)
    assert torch.equal(others, others[:, :1].expand_as(others))  # the rest is fixed along a row
    assert not torch.allclose(z[0, 0], z[1, 0])  # rows draw different noise
    assert len({tuple(row[0, 11:].tolist()) for row in c}) == 4  # and different other codes


def test_categorical_traversal_inputs() -> None:
    G = RecordingG()
    images = code_traversal(G, MNIST, "c1", n_rows=3)
    assert images.shape == (3 * 10, 1, 28, 28)
    ((_, c, _),) = G.calls
    c = c.view(3, 10, -1)
    assert torch.equal(c[:, :, :10], torch.eye(10).expand(3, 10, 10))  # column k is class k, one-hot


def test_traversal_with_real_generator(small_g: nn.Module) -> None:
    images = code_traversal(small_g, MNIST, "c2", n_rows=4).view(4, 10, 1, 28, 28)
    assert images.min() >= -1 and images.max() <= 1
    assert not torch.allclose(images[0, 0], images[1, 0])  # rows differ
    assert not torch.allclose(images[0, 0], images[0, -1])  # columns vary along the code


def test_explicit_values_and_q_name() -> None:
    G = RecordingG()
    code_traversal(G, MNIST, "q3", n_rows=2, values=[-2.0, 0.0, 2.0])
    ((_, c, _),) = G.calls
    assert c[:, 11].tolist() == [-2.0, 0.0, 2.0] * 2


def test_same_seed_same_images(small_g: nn.Module) -> None:
    a = code_traversal(small_g, MNIST, "c3", n_rows=3, seed=7)
    b = code_traversal(small_g, MNIST, "c3", n_rows=3, seed=7)
    c = code_traversal(small_g, MNIST, "c3", n_rows=3, seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_training_mode_is_restored(small_g: nn.Module) -> None:
    small_g.train()
    small_g.fc[1].eval()  # a mixed state survives too
    code_traversal(small_g, MNIST, "c1", n_rows=2)
    assert small_g.training and small_g.deconv.training
    assert not small_g.fc[1].training
    small_g.eval()
    code_traversal(small_g, MNIST, "c1", n_rows=2)
    assert not small_g.training


def test_traversal_values() -> None:
    assert traversal_values(MNIST, "c1") == [float(k) for k in range(10)]
    assert traversal_values(MNIST, "c2") == pytest.approx(torch.linspace(-1, 1, 10).tolist())


def test_save_png_roundtrip(tmp_path: Path) -> None:
    grid = torch.zeros(1, 5, 7)
    grid[0, 1, 2] = 1.0
    path = save_png(grid, tmp_path / "sub" / "g.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "L" and image.size == (7, 5)
        assert image.getpixel((2, 1)) == 255 and image.getpixel((0, 0)) == 0
    with Image.open(save_png(torch.ones(3, 4, 6), tmp_path / "rgb.png")) as image:
        assert image.mode == "RGB" and image.size == (6, 4)


def test_save_traversals_writes_every_grid(tmp_path: Path, small_g: nn.Module) -> None:
    paths = save_traversals(small_g, MNIST, tmp_path, n_rows=4)
    names = [
        "traversal_c1.png",
        "traversal_c2.png",
        "traversal_c2_extrapolate.png",
        "traversal_c3.png",
        "traversal_c3_extrapolate.png",
    ]
    assert [p.name for p in paths] == names
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    height = 4 * (28 + 2) + 2
    for path in paths:
        n_cols = 3 if "extrapolate" in path.name else 10
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (n_cols * (28 + 2) + 2, height)


def test_save_traversals_continuous_only(tmp_path: Path) -> None:
    spec: LatentSpec = SPECS["shapes"]
    G, _ = build_models(spec, (1, 32, 32), width=0.25)
    paths = save_traversals(G, spec, tmp_path, n_rows=2, extrapolate=())
    assert [p.name for p in paths] == ["traversal_c1.png", "traversal_c2.png", "traversal_c3.png"]
    with Image.open(paths[0]) as image:
        assert image.size == (10 * 34 + 2, 2 * 34 + 2)
