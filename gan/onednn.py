"""A linear layer whose fp32 CPU matmuls run in oneDNN instead of the BLAS that ``torch.mm`` calls.

Why: on the AMD EPYC (Zen 5) CPU this project is developed on, torch's CPU build sends
``torch.mm`` to MKL, which runs its AVX2 code on non-Intel processors (88 GFLOP/s on one core for a
2048x2048 fp32 product), while oneDNN, which torch already uses for convolutions, dispatches by
instruction set and runs AVX-512 (about 200 GFLOP/s on the same core). The `paper` net's two
6.4M-weight FC layers are half the arithmetic of a training step, and their three matmuls (the
forward, the input gradient and the weight gradient) run 1.5-2.3x faster in oneDNN
(docs/results/speed/README.md).

:class:`Linear` is ``nn.Linear`` (same parameters, state dict and init) whose forward takes the
oneDNN path when it can: a 2-D fp32 input on the CPU, outside autocast, torch.func transforms
(``vmap``, ``grad``: the stacked trainer runs the nets under vmap) and ``torch.compile`` (whose
lowering of the op wants frozen weights), with torch built with oneDNN. Everywhere else it is
``F.linear``. The results equal ``F.linear``'s to float
rounding (another summation order: about 1e-6 relative in fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _linear_op():
    """torch's oneDNN linear (``mkldnn::_linear_pointwise``, what inductor lowers CPU linears to), or None."""
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, "_linear_pointwise", None)


_LINEAR = _linear_op()


def matmul_nt(a: Tensor, b: Tensor) -> Tensor:
    """a @ b.T in oneDNN: a (M, K), b (N, K), either may be a transposed view -> (M, N) (fp32, CPU)."""
    return _LINEAR(a, b, None, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b with the three matmuls in oneDNN; x (B, in), W (out, in), b (out,) or None."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _LINEAR(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        grad_x = matmul_nt(grad, weight.t()) if need_x else None  # (B, out) @ (out, in)
        grad_w = matmul_nt(grad.t(), x.t()) if need_w else None  # (out, B) @ (B, in)
        grad_b = grad.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b


def _in_functorch(*tensors: Tensor) -> bool:
    """Whether any tensor is wrapped by a torch.func transform (vmap's batched or grad's tracking tensors)."""
    return any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)


def uses_onednn(x: Tensor, weight: Tensor) -> bool:
    """Whether :class:`Linear` sends this input through oneDNN (see the module docstring)."""
    return (
        _LINEAR is not None
        and not torch.compiler.is_compiling()  # inductor lowers this op only with frozen weights
        and x.device.type == "cpu"
        and x.dim() == 2
        and x.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and not _in_functorch(x, weight)
    )


class Linear(nn.Linear):
    """``nn.Linear`` whose fp32 CPU matmuls run in oneDNN (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight  # read once: under a parametrization (spectral norm) each read recomputes it
        if uses_onednn(x, weight):
            return _OneDNNLinear.apply(x, weight, self.bias)
        return F.linear(x, weight, self.bias)
