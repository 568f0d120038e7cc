from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan.latents import SPECS, LatentSpec, continuous_spec
from gan.models import SUPPORTED_SHAPES, Discriminator, Generator, build_models, param_count

SHAPES = [(1, 28, 28), (1, 32, 32), (1, 64, 64)]


@pytest.mark.parametrize("width", [0.25, 1.0])
@pytest.mark.parametrize("spec_name", ["mnist", "shapes", "dsprites"])
@pytest.mark.parametrize("image_shape", SHAPES)
def test_output_shapes(image_shape: tuple[int, int, int], spec_name: str, width: float) -> None:
    torch.manual_seed(0)
    spec = SPECS[spec_name]
    G, D = build_models(spec, image_shape, width)
    z, c = spec.sample(4, generator=torch.Generator().manual_seed(0))
    x = G(z, c)
    assert x.shape == (4, *image_shape)
    logit, q = D(x)
    assert logit.shape == (4,)
    assert q.shape == (4, spec.code_dim)
    assert torch.equal(D.q(x), q)  # same trunk, same head (train-mode BN on the same batch)
    assert [part.shape[1] for part in spec.split(q)] == [code.dim for code in spec.codes]


def test_rgb_images() -> None:
    spec = SPECS["dsprites"]
    G, D = build_models(spec, (3, 32, 32), width=0.25)
    x = G(*spec.sample(3))
    assert x.shape == (3, 3, 32, 32)
    assert D(x)[0].shape == (3,)


def test_width_shrinks_the_nets() -> None:
    spec = SPECS["mnist"]
    narrow, wide = build_models(spec, (1, 28, 28), 0.25), build_models(spec, (1, 28, 28), 1.0)
    for small, big in zip(narrow, wide, strict=True):
        assert param_count(small) < param_count(big) / 8


def test_q_returns_logits_not_probabilities() -> None:
    torch.manual_seed(0)
    spec = SPECS["mnist"]
    G, D = build_models(spec, (1, 28, 28), width=0.25)
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Sigmoid)) for m in D.modules())
    q = D.q(G(*spec.sample(16)))
    cat = spec.split(q)[0]  # (16, 10) logits of the categorical code
    assert q.min() < 0
    assert not torch.allclose(cat.sum(dim=1), torch.ones(16), atol=1e-3)


def test_generator_output_is_in_tanh_range() -> None:
    torch.manual_seed(0)
    spec = SPECS["mnist"]
    G, _ = build_models(spec, (1, 28, 28), width=0.25)
    last = [m for m in G.modules() if isinstance(m, nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last.weight.mul_(1000)  # push the pre-activation far outside [-1, 1]
    x = G(*spec.sample(8))
    assert x.min() >= -1 and x.max() <= 1
    assert x.abs().max() > 0.99  # saturated, so the bound is really tested


@pytest.mark.parametrize("bad", [(1, 48, 48), (2, 28, 28), (1, 28, 32)])
def test_unsupported_shape_raises(bad: tuple[int, int, int]) -> None:
    for cls in (Generator, Discriminator):
        with pytest.raises(ValueError, match=re.escape(str(bad))) as info:
            cls(SPECS["mnist"], bad)
        assert str((1, 28, 28)) in str(info.value)  # names the accepted shapes too


def test_supported_shapes_include_rgb() -> None:
    assert {(c, s, s) for c in (1, 3) for s in (28, 32, 64)} == set(SUPPORTED_SHAPES)


def test_zero_noise_dim() -> None:
    spec = continuous_spec(3, 0)
    G, D = build_models(spec, (1, 32, 32), width=0.25)
    z, c = spec.sample(4)
    assert z.shape == (4, 0)
    x = G(z, c)
    assert x.shape == (4, 1, 32, 32)
    assert D(x)[1].shape == (4, 3)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in module.named_parameters()}


def _unchanged(module: nn.Module, before: dict[str, torch.Tensor]) -> list[str]:
    return [name for name, p in module.named_parameters() if torch.equal(p, before[name])]


def test_one_step_changes_every_parameter() -> None:
    torch.manual_seed(0)
    spec: LatentSpec = SPECS["mnist"]
    G, D = build_models(spec, (1, 28, 28), width=0.25)
    opt = torch.optim.SGD([*G.parameters(), *D.parameters()], lr=0.1)
    g_before, d_before = _snapshot(G), _snapshot(D)
    z, c = spec.sample(8)
    real = torch.rand(8, 1, 28, 28) * 2 - 1
    fake_logit, q = D(G(z, c))
    real_logit, _ = D(real)
    loss = (
        F.binary_cross_entropy_with_logits(real_logit, torch.ones(8))
        + F.binary_cross_entropy_with_logits(fake_logit, torch.zeros(8))
        + F.binary_cross_entropy_with_logits(q[:, :10], c[:, :10])  # the info term reaches Q
    )
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert _unchanged(G, g_before) == []
    assert _unchanged(D, d_before) == []  # trunk, D head and Q head


def test_param_count_of_infogan_mnist() -> None:
    # InfoGAN-MNIST: about 13.3M parameters for G + D + Q (docs/design.md section 7).
    G, D = build_models(SPECS["mnist"], (1, 28, 28), width=1.0)
    g, d = param_count(G), param_count(D)
    assert 6.4e6 < g < 6.9e6
    assert 6.4e6 < d < 6.9e6
    assert 1.30e7 < g + d < 1.36e7


def test_param_count_counts_only_trainable() -> None:
    layer = nn.Linear(3, 2)  # 6 weights + 2 biases
    assert param_count(layer) == 8
    layer.bias.requires_grad_(False)
    assert param_count(layer) == 6


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_text_parses_back_to_the_same_spec(name: str) -> None:
    assert LatentSpec.parse(SPECS[name].text()) == SPECS[name]


def test_uniform_noise_is_parsed_printed_and_drawn() -> None:
    """openai/InfoGAN's MNIST noise, Uniform(-1, 1)^62: the spec text round-trips and z is uniform;
    the default stays N(0, I) and its text unchanged."""
    from gan.latents import LatentSpec, get_spec

    uniform = get_spec("infogan-mnist")
    assert uniform.text() == "cat10,cont,cont;noise=uniform62" and LatentSpec.parse(uniform.text()) == uniform
    assert get_spec("mnist").text() == "cat10,cont,cont;noise=62" and get_spec("mnist").noise == "normal"
    z, _ = uniform.sample(4000, torch.Generator().manual_seed(0))
    assert z.min() >= -1 and z.max() <= 1 and abs(z.var().item() - 1 / 3) < 0.01
    z, _ = get_spec("mnist").sample(4000, torch.Generator().manual_seed(0))
    assert z.abs().max() > 1.5 and abs(z.var().item() - 1) < 0.02
    with pytest.raises(ValueError, match="noise=uniform62"):
        LatentSpec.parse("cat10;noise=laplace62")
