"""Score responses under a model: per-token and per-sequence log-probs of chosen and rejected responses."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from .data import IGNORE_INDEX, encode_pairs_shared_prompt
from .losses import picked_logprobs, upcast
from .onednn import onednn_linears


def response_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits at the positions that predict a response token, and only there.

    The LM head is applied to those positions alone: the ``[B, T, V]`` logits of prompt and padding positions are
    never built (V is 50k for GPT-2), which saves compute in the forward and the backward pass. On CPU the linear
    layers run through oneDNN (``onednn_linears``).

    Args:
        input_ids, attention_mask, labels: ``[B, T]`` (labels -100 on prompt and padding).

    Returns:
        ``(logits, mask)``: ``logits`` ``[N, V]`` (float32), one row per True entry of ``mask`` ``[B, T - 1]``,
        in row-major order; ``mask[b, t]`` says that position ``t`` predicts the response token ``labels[b, t + 1]``.
        Gradient flows if enabled.
    """
    mask = labels[:, 1:] != IGNORE_INDEX
    with onednn_linears(model):
        hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        return upcast(model.get_output_embeddings()(hidden[:, :-1][mask])), mask


def logits_at_responses(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, T, V]`` logits holding ``rows`` (``[N, V]``, from ``response_logits``) at the positions of ``mask``
    (``[B, T - 1]``) and zeros everywhere else: the layout that ``kl_regularized_loss`` takes. The zeros sit where
    the labels are -100, which every loss skips. Differentiable with respect to ``rows``."""
    logits = rows.new_zeros(mask.shape[0], mask.shape[1] + 1, rows.shape[-1])
    logits[:, :-1][mask] = rows
    return logits


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probs of the response tokens, applying the LM head to response positions only.

    Equal to ``token_logprobs(model(input_ids, attention_mask).logits, labels)`` but cheaper (see
    ``response_logits``).

    Args:
        input_ids, attention_mask, labels: ``[B, T]`` (labels -100 on prompt and padding).

    Returns:
        ``(logps, mask)``, both ``[B, T - 1]``; ``logps`` is 0 where ``mask`` is False. Gradient flows if enabled.
    """
    logits, mask = response_logits(model, input_ids, attention_mask, labels)
    logps = torch.zeros(mask.shape, dtype=logits.dtype, device=logits.device)
    logps[mask] = picked_logprobs(logits, labels[:, 1:][mask])
    return logps, mask


def shared_prompt_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits ``[N, V]`` (float32) at the N scored positions of ``encode_pairs_shared_prompt`` rows, one per entry
    of ``batch["side"] >= 0`` in row-major order; the LM head runs on those positions only (on CPU through oneDNN,
    as in ``response_logits``)."""
    with onednn_linears(model):
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  position_ids=batch["position_ids"]).last_hidden_state  # [B, L, H]
        states = hidden.gather(1, batch["source"].unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # [B, K, H]
        return upcast(model.get_output_embeddings()(states[batch["side"] >= 0]))


def sum_by_side(token_logps: torch.Tensor, side: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                        torch.Tensor]:
    """Per-row sums of ``token_logps`` (``[N]``, one per entry of ``side >= 0``) over the chosen (side 0) and the
    rejected (side 1) tokens. Returns ``(chosen [B], rejected [B], chosen_tokens [B], rejected_tokens [B])``."""
    logps = torch.zeros(side.shape, dtype=token_logps.dtype, device=token_logps.device)
    logps[side >= 0] = token_logps
    chosen, rejected = side == 0, side == 1
    return (logps * chosen).sum(-1), (logps * rejected).sum(-1), chosen.sum(-1), rejected.sum(-1)


def shared_prompt_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                           torch.Tensor]:
    """Summed log-probs of chosen and rejected responses from ``encode_pairs_shared_prompt`` rows.

    Equal to ``response_logprobs`` on ``encode_pairs_for_dpo`` (summed per sequence), with the prompt computed once.
    Returns ``(chosen [B], rejected [B], chosen_tokens [B], rejected_tokens [B])``; gradient flows if enabled.
    """
    logits = shared_prompt_logits(model, batch)
    return sum_by_side(picked_logprobs(logits, batch["target"][batch["side"] >= 0]), batch["side"])


def length_sorted_batches(pairs: Sequence[dict], batch_size: int) -> list[list[int]]:
    """Indices of ``pairs`` in batches of similar total length (less padding to compute), shortest first."""
    order = sorted(range(len(pairs)), key=lambda i: sum(len(pairs[i][k]) for k in ("prompt", "chosen", "rejected")))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


@torch.inference_mode()
def pair_logprobs(model, tokenizer, pairs: Sequence[dict], batch_size: int = 8, max_length: int = 256,
                  progress: bool = False) -> dict[str, torch.Tensor]:
    """Summed log-probs and token counts of each pair's chosen and rejected response, on the CPU.

    Returns a dict of ``[N]`` tensors: ``chosen`` and ``rejected`` (sums of log-probs over response tokens,
    EOS included) and ``chosen_tokens`` and ``rejected_tokens`` (how many tokens were summed).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {"chosen": [], "rejected": [], "chosen_tokens": [], "rejected_tokens": []}
    batches = length_sorted_batches(pairs, batch_size)
    try:
        for idx in tqdm(batches, desc="scoring pairs", disable=not progress, unit="batch"):
            chunk = [pairs[i] for i in idx]
            batch = {k: v.to(device) for k, v in encode_pairs_shared_prompt(tokenizer, chunk, max_length).items()}
            for key, value in zip(parts, shared_prompt_logprobs(model, batch)):
                parts[key].append(value.cpu())
    finally:
        model.train(was_training)
    return {k: in_original_order(torch.cat(v), batches) for k, v in parts.items()}


def in_original_order(values: torch.Tensor, batches: list[list[int]]) -> torch.Tensor:
    """``values`` computed batch by batch over ``batches`` (from ``length_sorted_batches``), put back in the order
    of the pairs."""
    out = torch.empty_like(values)
    out[torch.tensor(sum(batches, []), dtype=torch.long)] = values
    return out
