"""Batched, seeded sampling from a model, returning only the newly generated text."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from .data import format_prompt


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 80, temperature: float = 0.8,
             top_p: float = 0.95, seed: int = 0, batch_size: int = 16, progress: bool = False) -> list[str]:
    """Sample one response per prompt, in batches (left padding), with the lab's prompt template.

    Each prompt is wrapped with ``format_prompt``, exactly as in training. Only the new tokens are decoded
    (the prompt is cut off by token count, not by string length, which breaks when decoding changes spaces).
    The same model, prompts, settings and ``seed`` give the same texts. ``temperature=0`` means greedy decoding.

    Returns:
        One string per prompt, in order, without the prompt and without special tokens.
    """
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # new tokens must follow the prompt directly, so pad on the left
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    device = next(model.parameters()).device
    texts: list[str] = []
    try:
        with prepacked_weights(model, min(batch_size, len(prompts))):
            torch.manual_seed(seed)
            starts = range(0, len(prompts), batch_size)
            for start in tqdm(starts, desc="generating", disable=not progress, unit="batch"):
                batch = [format_prompt(p) for p in prompts[start:start + batch_size]]
                inputs = tokenizer(batch, return_tensors="pt", padding=True, return_token_type_ids=False).to(device)
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id, **sampling)
                new_tokens = output[:, inputs["input_ids"].shape[1]:]
                texts += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return texts


def _has_onednn_linear() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@contextmanager
def prepacked_weights(model, rows: int) -> Iterator[None]:
    """On CPU, run the model's linear layers through oneDNN with each weight re-laid out once, up front.

    Decoding multiplies a handful of rows (one per prompt) by every weight matrix at each new token; for that
    shape the plain float32 path is 2-3x slower than oneDNN with a pre-packed weight. Packing costs one extra
    copy of the weights while the block runs; results agree with the plain path to float32 rounding.
    Elsewhere (GPU, half precision, a torch without oneDNN) nothing changes.
    """
    weight = next(model.parameters())
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not _has_onednn_linear():
        yield
        return
    patched = []
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)) and "forward" not in module.__dict__:
            matrix = module.weight.t() if isinstance(module, Conv1D) else module.weight  # as [out, in]
            packed = torch.ops.mkldnn._reorder_linear_weight(matrix.detach(), rows)
            module.forward = _packed_forward(packed, module.bias)
            patched.append(module)
    try:
        yield
    finally:
        for module in patched:
            del module.forward


def _packed_forward(packed: torch.Tensor, bias: torch.Tensor | None):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return forward
