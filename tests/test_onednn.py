from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state

from gan.onednn import Linear, uses_onednn

needs_onednn = pytest.mark.skipif(
    not uses_onednn(torch.zeros(1, 1), torch.zeros(1, 1)), reason="torch built without oneDNN"
)


def _pair(in_dim: int, out_dim: int, bias: bool, seed: int = 0) -> tuple[Linear, torch.nn.Linear]:
    torch.manual_seed(seed)
    ours = Linear(in_dim, out_dim, bias=bias)
    plain = torch.nn.Linear(in_dim, out_dim, bias=bias)
    plain.load_state_dict(ours.state_dict())
    return ours, plain


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed_input", [False, True])
def test_forward_and_gradients_equal_f_linear(bias: bool, transposed_input: bool) -> None:
    ours, plain = _pair(300, 200, bias)
    x = torch.randn(64, 300) if not transposed_input else torch.randn(300, 64).t()
    x_ours, x_plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(64, 200)
    y_ours, y_plain = ours(x_ours), plain(x_plain)
    y_ours.backward(grad)
    y_plain.backward(grad)
    assert y_ours.grad_fn.name().endswith("_OneDNNLinearBackward")  # the oneDNN path ran
    assert _rel(y_ours, y_plain) < 1e-5
    assert _rel(x_ours.grad, x_plain.grad) < 1e-5
    assert _rel(ours.weight.grad, plain.weight.grad) < 1e-5
    if bias:
        assert _rel(ours.bias.grad, plain.bias.grad) < 1e-5


def test_other_dtypes_and_autocast_fall_back_to_f_linear() -> None:
    ours, plain = _pair(30, 20, True)
    x = torch.randn(8, 30)
    assert torch.equal(ours.double()(x.double()), plain.double()(x.double()))  # exactly F.linear
    ours.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x).dtype == torch.bfloat16
    assert ours(torch.randn(2, 8, 30)).shape == (2, 8, 20)  # 3-D input: F.linear


def test_vmap_over_stacked_layers_falls_back_and_equals_each_layer() -> None:
    layers = [_pair(30, 20, True, seed)[0] for seed in range(3)]
    params, buffers = stack_module_state(layers)
    base = copy.deepcopy(layers[0]).to("meta")
    x = torch.randn(3, 8, 30)
    stacked = torch.vmap(lambda p, b, xi: functional_call(base, (p, b), (xi,)))(params, buffers, x)
    for k, layer in enumerate(layers):
        assert torch.allclose(stacked[k], F.linear(x[k], layer.weight, layer.bias), atol=1e-6)


def test_compiled_layer_falls_back_and_trains() -> None:
    ours, plain = _pair(30, 20, True)
    x = torch.randn(8, 30)
    compiled = torch.compile(ours)
    y = compiled(x)
    y.sum().backward()
    assert torch.allclose(y, plain(x), atol=1e-6) and ours.weight.grad is not None
