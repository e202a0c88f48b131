"""Score responses under a model: the log-probs of each pair's chosen and rejected response.

``response_logits`` keeps the logits that predict a response token, ``sum_by_side`` adds up per-token values per
pair and side, and ``pair_logprobs`` does both for a list of pairs.
"""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from . import engine
from .data import FIELDS, IGNORE_INDEX, encode_pairs_for_dpo
from .losses import picked_logprobs, upcast


def response_logits(model, tokenizer, pairs: Sequence[dict], max_length: int = 256) -> tuple[torch.Tensor, ...]:
    """``(logits, targets, side)``: the logits at every position that predicts a response token of the B ``pairs``
    (with gradient when enabled).

    ``side`` ``[B, K]`` marks each pair's scored tokens: 0 for chosen, then 1 for rejected, -1 for padding.
    ``logits`` ``[N, V]`` (float32) and ``targets`` ``[N]`` have one row per entry of ``side >= 0``, row-major.
    """
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in encode_pairs_for_dpo(tokenizer, pairs, max_length).items()}
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]  # position t predicts token t + 1
    scored = labels != IGNORE_INDEX  # [2B, T - 1]
    n = len(pairs)
    rows = [r for b in range(n) for r in (b, n + b)]  # pair b: its chosen row b, then its rejected row n + b
    side = torch.full((n, int(scored.sum(-1).view(2, n).sum(0).max())), -1, dtype=torch.long, device=device)
    for b in range(n):
        n_chosen, n_rejected = int(scored[b].sum()), int(scored[n + b].sum())
        side[b, :n_chosen] = 0
        side[b, n_chosen:n_chosen + n_rejected] = 1
    return (upcast(torch.cat([logits[r][scored[r]] for r in rows])), torch.cat([labels[r][scored[r]] for r in rows]),
            side)


def sum_by_side(token_values: torch.Tensor, side: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(chosen, rejected, chosen_tokens, rejected_tokens)``, each ``[B]``: per pair, the **sums** of
    ``token_values`` ``[N]`` (one per entry of ``side >= 0``) over its chosen and its rejected tokens."""
    values = torch.zeros(side.shape, dtype=token_values.dtype, device=token_values.device)
    values[side >= 0] = token_values
    chosen, rejected = side == 0, side == 1
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
        with engine.session(model) as fast:
            for idx in tqdm(batches, desc="scoring pairs", disable=not progress, unit="batch"):
                logits, targets, side = fast.response_logits(model, tokenizer, [pairs[i] for i in idx], max_length)
                for key, value in zip(parts, sum_by_side(picked_logprobs(logits, targets), side)):
                    parts[key].append(value.cpu())
    finally:
        model.train(was_training)
    return {k: in_original_order(torch.cat(v), batches) for k, v in parts.items()}
