"""Linear layers through oneDNN on CPU: the same maths as ``torch.nn.functional.linear``, faster at our shapes.

On CPU, PyTorch multiplies float32 matrices with MKL. For the shapes of this lab (a few dozen rows times a
576 x 1536 weight in training, a handful of rows per new token in decoding) oneDNN, which PyTorch also ships,
is faster (README.md, Performance, has the figures). Both context managers below route a
model's linear layers (``nn.Linear``, and GPT-2's ``Conv1D``) through ``torch.ops.mkldnn._linear_pointwise``
while the block runs; results agree with the plain path to float32 rounding. On a GPU, in half precision, or
with a torch built without oneDNN they change nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from transformers.pytorch_utils import Conv1D



def has_onednn_linear() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_applies(model: torch.nn.Module) -> bool:
    weight = next(model.parameters())
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and has_onednn_linear()


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` with ``weight`` ``[out, in]`` (plain or pre-packed)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _weight_out_in(module: torch.nn.Module) -> torch.Tensor:
    """The layer's weight as ``[out, in]``: ``Conv1D`` stores it as ``[in, out]`` (a view; gradient flows)."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


@contextmanager
def _patched_linears(model: torch.nn.Module, make_forward: Callable) -> Iterator[None]:
    """Give each linear layer of ``model`` the instance ``forward`` that ``make_forward(module)`` returns, and
    take it away on exit. Layers that already carry an instance ``forward`` are left alone."""
    if not _onednn_applies(model):
        yield
        return
    patched = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and "forward" not in module.__dict__:
            module.forward = make_forward(module)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


class OneDNNLinear(torch.autograd.Function):
    """``x @ weight.T + bias`` forward and input gradient through oneDNN; the weight gradient through MKL.

    Shapes: ``x`` ``[..., in]``, ``weight`` ``[out, in]`` (may be a transposed view), ``bias`` ``[out]`` or None.
    The weight gradient stays on MKL's ``mm``: oneDNN is no faster there and needs extra memory for it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_x = _onednn_linear(grad_out, weight.t(), None) if ctx.needs_input_grad[0] else None
        grad_2d, x_2d = grad_out.reshape(-1, grad_out.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_weight = grad_2d.t() @ x_2d if ctx.needs_input_grad[1] else None  # [out, in]
        grad_bias = grad_2d.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


@contextmanager
def onednn_linears(model: torch.nn.Module) -> Iterator[None]:
    """On CPU, run ``model``'s linear layers through oneDNN (``OneDNNLinear``) while the block runs, for training
    and for scoring. Gradients reach the parameters as usual (a ``Conv1D`` weight gets its ``[in, out]``
    gradient). The weights are read at each call, so they may change between steps."""
    def make_forward(module: torch.nn.Module) -> Callable:
        return lambda x: OneDNNLinear.apply(x, _weight_out_in(module), module.bias)

    with _patched_linears(model, make_forward):
        yield


@contextmanager
def prepacked_weights(model: torch.nn.Module, rows: int) -> Iterator[None]:
    """On CPU, run the model's linear layers through oneDNN with each weight re-laid out once, up front.

    Decoding multiplies a handful of rows (one per prompt) by every weight matrix at each new token; for that
    shape the plain float32 path is 2-3x slower than oneDNN with a pre-packed weight. Packing costs one extra
    copy of the weights while the block runs, and the weights must not change inside the block (no training).
    """
    def make_forward(module: torch.nn.Module) -> Callable:
        packed = torch.ops.mkldnn._reorder_linear_weight(_weight_out_in(module).detach(), rows)
        return lambda x: _onednn_linear(x, packed, module.bias)

    with _patched_linears(model, make_forward):
        yield
