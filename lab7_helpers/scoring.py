"""Score responses under a model: its logits on a batch, and the log-probs of each pair's chosen and rejected response.

``model_logits`` and ``reference_logits`` give the logits ``[B, T, V]`` the KL update's loss takes;
``response_logits`` keeps the logits that predict a response token, ``sum_by_side`` adds up per-token values per
pair and side, and ``pair_logprobs`` does both for a list of pairs. Which positions are kept is worked out on the
CPU, from the token ids, so that on a GPU nothing waits for the device until the loss is read.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from . import engine
from .data import FIELDS, IGNORE_INDEX, encode_pairs_for_dpo
from .losses import picked_logprobs, upcast


def model_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's float32 logits ``[B, T, V]`` on ``batch["input_ids"]`` ``[B, T]``."""
    return upcast(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits)


def reference_logits(ref, batches: list[dict[str, torch.Tensor]], amp) -> Callable[[int], torch.Tensor]:
    """``at(i)``: the frozen ``ref``'s logits ``[B, T, V]`` on ``batches[i]``, computed when asked for, without a
    graph (under ``amp``, the policy's precision, so that the two compare like with like)."""

    @torch.no_grad()
    def at(i: int) -> torch.Tensor:
        with amp():
            return model_logits(ref, batches[i])

    return at


def response_logits(model, tokenizer, pairs: Sequence[dict], max_length: int = 256) -> tuple[torch.Tensor, ...]:
    """``(logits, targets, side)`` for the N tokens of the B ``pairs``' responses: ``logits`` ``[N, V]`` (float32;
    with gradient when enabled) at the positions that predict them and ``targets`` ``[N]`` (the tokens), pair by
    pair, the chosen response's tokens first; ``side`` ``[B, K]`` marks each pair's tokens: 0 chosen, then 1
    rejected, then -1 (padding). ``side`` stays on the CPU: it is known from the token ids alone."""
    batch = encode_pairs_for_dpo(tokenizer, pairs, max_length)  # [2B, T]: rows :B chosen, B: rejected
    labels = batch["labels"][:, 1:]  # position t predicts token t + 1
    n = len(pairs)
    rows = torch.arange(2 * n).view(2, n).T.reshape(-1)  # pair b: its chosen row b, then its rejected row n + b
    scored = labels[rows] != IGNORE_INDEX  # [2B, T - 1], in that order
    flat = (rows[:, None] * labels.shape[1] + torch.arange(labels.shape[1]))[scored]  # [N]: in [2B * (T - 1)]
    counts = scored.sum(-1).view(n, 2)  # [B, 2]: tokens of each pair's chosen and rejected response
    slot = torch.arange(int(counts.sum(-1).max()))
    side = torch.where(slot < counts[:, :1], 0, torch.where(slot < counts.sum(-1, keepdim=True), 1, -1))
    device = next(model.parameters()).device
    # a ready [2B, 1, T, T] mask: with the [2B, T] padding mask the model would read it to look for padding, and
    # on a GPU every such read waits for the device
    mask = torch.tril(torch.ones(labels.shape[1] + 1, labels.shape[1] + 1, dtype=torch.bool)) & \
        batch["attention_mask"].bool()[:, None, None, :]
    logits = model(input_ids=batch["input_ids"].to(device), attention_mask=mask.to(device)).logits
    picked = logits[:, :-1].reshape(-1, logits.shape[-1]).index_select(0, flat.to(device))
    return upcast(picked), labels.reshape(-1)[flat].to(device), side


def sum_by_side(token_values: torch.Tensor, side: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(chosen, rejected, chosen_tokens, rejected_tokens)``, each ``[B]`` on ``token_values``' device: per pair,
    the **sums** of ``token_values`` ``[N]`` (one per entry of ``side >= 0``, row-major) over its chosen and over
    its rejected tokens. ``side`` is on the CPU, as ``response_logits`` gives it, so nothing waits for the device."""
    device = token_values.device
    values = token_values.new_zeros(side.numel()).index_put((side.flatten().ge(0).nonzero()[:, 0].to(device),),
                                                            token_values).view(side.shape)
    chosen, rejected = (side == 0).to(device), (side == 1).to(device)
    return (values * chosen).sum(-1), (values * rejected).sum(-1), chosen.sum(-1), rejected.sum(-1)


def length_sorted_batches(pairs: Sequence[dict], batch_size: int) -> list[list[int]]:
    """Indices of ``pairs`` in batches of similar total length (less padding to compute), shortest first."""
    order = sorted(range(len(pairs)), key=lambda i: sum(len(pairs[i][k]) for k in FIELDS))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def in_original_order(values: torch.Tensor, batches: list[list[int]]) -> torch.Tensor:
    """``values`` computed over ``batches`` (``length_sorted_batches``), put back in the pairs' order."""
    out = torch.empty_like(values)
    out[torch.tensor(sum(batches, []), dtype=torch.long)] = values
    return out


@torch.inference_mode()
def pair_logprobs(model, tokenizer, pairs: Sequence[dict], batch_size: int = 8, max_length: int = 256,
                  progress: bool = False) -> dict[str, torch.Tensor]:
    """``[N]`` CPU tensors ``chosen`` and ``rejected`` (**sums** of log-probs over the response tokens, EOS
    included), ``chosen_tokens`` and ``rejected_tokens`` (how many)."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {"chosen": [], "rejected": [], "chosen_tokens": [], "rejected_tokens": []}
    batches = length_sorted_batches(pairs, batch_size)
    try:
        with engine.session(model, plain=engine.Steps(response_logits=response_logits)) as fast:
            for idx in tqdm(batches, desc="scoring pairs", disable=not progress, unit="batch"):
                logits, targets, side = fast.response_logits(model, tokenizer, [pairs[i] for i in idx], max_length)
                for key, value in zip(parts, sum_by_side(picked_logprobs(logits, targets), side)):
                    parts[key].append(value.cpu())
    finally:
        model.train(was_training)
    return {k: in_original_order(torch.cat(v), batches) for k, v in parts.items()}
