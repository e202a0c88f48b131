"""Linear layers through oneDNN on a CPU: the maths of ``torch.nn.functional.linear``, faster at this lab's
shapes (a few dozen rows in training, a handful per new token in decoding) than MKL, which PyTorch uses by
default. Both context managers route a model's linear layers (``nn.Linear``, GPT-2's ``Conv1D``) through
``torch.ops.mkldnn._linear_pointwise`` while the block runs; on a GPU, in half precision, or without oneDNN
they change nothing."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from transformers.pytorch_utils import Conv1D


def has_onednn_linear() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` with ``weight`` ``[out, in]`` (plain or pre-packed)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _weight_out_in(module: torch.nn.Module) -> torch.Tensor:
    return module.weight.t() if isinstance(module, Conv1D) else module.weight  # Conv1D stores [in, out]


@contextmanager
def _patched_linears(model: torch.nn.Module, make_forward: Callable) -> Iterator[None]:
    """Each linear layer of ``model`` gets ``make_forward(module)`` as its instance ``forward`` until the block
    ends (a layer that has one already is left alone)."""
    weight = next(model.parameters())
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not has_onednn_linear():
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
    """``x @ weight.T + bias`` (``x`` ``[..., in]``, ``weight`` ``[out, in]``, ``bias`` ``[out]`` or None):
    forward and input gradient through oneDNN, the weight gradient through MKL (oneDNN is no faster there)."""

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


def onednn_linears(model: torch.nn.Module):
    """``model``'s linear layers through ``OneDNNLinear`` while the block runs, for training and scoring: the
    weights are read at each call and get their gradients as usual."""
    return _patched_linears(model, lambda module: lambda x: OneDNNLinear.apply(x, _weight_out_in(module),
                                                                                module.bias))


def prepacked_weights(model: torch.nn.Module, rows: int):
    """``model``'s linear layers through oneDNN with each weight re-laid out once, up front, for decoding (a
    handful of rows per new token, where it is 2-3x faster). One more copy of the weights meanwhile; the
    weights must not change inside the block."""
    def make_forward(module: torch.nn.Module) -> Callable:
        packed = torch.ops.mkldnn._reorder_linear_weight(_weight_out_in(module).detach(), rows)
        return lambda x: _onednn_linear(x, packed, module.bias)

    return _patched_linears(model, make_forward)
