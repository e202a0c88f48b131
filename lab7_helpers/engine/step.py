"""The optimizer step and the tied embedding's gradient, with less memory traffic than the plain versions."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler, max_norm: float) -> None:
    """Twin of ``training.optimizer_step`` on a float32 CPU (no ``scaler``)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    loss.backward()
    clipped_step(optimizer, params, max_norm)
    optimizer.zero_grad(set_to_none=True)


def clipped_step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], max_norm: float) -> None:
    """``clip_grad_norm_(params, max_norm)`` then ``optimizer.step()``, with one pass over the gradients less
    where the optimizer is fused: clipping multiplies every gradient by ``min(1, max_norm / (norm + 1e-6))``,
    and a fused AdamW divides each gradient by its ``grad_scale`` as it reads it (how ``GradScaler`` unscales
    fp16 gradients), so the clip factor goes there. The same update to float32 rounding."""
    if not optimizer.defaults.get("fused"):
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
        return
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale


@contextmanager
def tied_embedding_gradient_in_place(model: torch.nn.Module) -> Iterator[None]:
    """While the block runs, a tied input embedding (GPT-2, SmolLM2) adds its rows of gradient straight into the
    shared weight's ``.grad`` (``index_add_``) instead of building a dense ``[V, H]`` gradient and adding it to the
    output layer's into a third; ``padding_idx``'s row gets nothing, as in ``nn.Embedding``. Untied embeddings,
    and those with ``max_norm``, ``scale_grad_by_freq`` or ``sparse``, keep the default."""
    embedding, output = model.get_input_embeddings(), model.get_output_embeddings()
    tied = isinstance(embedding, torch.nn.Embedding) and output is not None and output.weight is embedding.weight
    if not tied or embedding.max_norm is not None or embedding.scale_grad_by_freq or embedding.sparse:
        yield
        return
    weight, padding_idx = embedding.weight, embedding.padding_idx

    def add_rows(ids: torch.Tensor, grad: torch.Tensor) -> None:  # ids [N], grad [N, H]
        if padding_idx is not None:
            keep = ids != padding_idx
            ids, grad = ids[keep], grad[keep]
        if weight.grad is None:  # the output layer's gradient usually arrives first
            weight.grad = torch.zeros_like(weight)
        weight.grad.index_add_(0, ids, grad)

    def forward(input_ids: torch.Tensor) -> torch.Tensor:
        rows = torch.nn.functional.embedding(input_ids, weight.detach(), padding_idx)
        if torch.is_grad_enabled() and weight.requires_grad:
            rows.requires_grad_()
            rows.register_hook(lambda grad: add_rows(input_ids.reshape(-1), grad.reshape(-1, grad.shape[-1])))
        return rows

    embedding.forward = forward
    try:
        yield
    finally:
        del embedding.forward
