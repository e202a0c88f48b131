"""Score responses under a model: per-token and per-sequence log-probs of chosen and rejected responses."""

from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from .data import IGNORE_INDEX, encode_pairs_shared_prompt
from .losses import upcast


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token log-probs of the response tokens, applying the LM head to response positions only.

    Equal to ``token_logprobs(model(input_ids, attention_mask).logits, labels)`` but cheaper: the
    ``[B, T, V]`` logits of prompt and padding positions are never built (V is 50k for GPT-2).

    Args:
        input_ids, attention_mask, labels: ``[B, T]`` (labels -100 on prompt and padding).

    Returns:
        ``(logps, mask)``, both ``[B, T - 1]``; ``logps`` is 0 where ``mask`` is False. Gradient flows if enabled.
    """
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logits = upcast(model.get_output_embeddings()(hidden[:, :-1][mask]))  # [N, V], N = response tokens
    picked = logits.gather(-1, targets[mask].unsqueeze(-1)).squeeze(-1)
    logps = torch.zeros(mask.shape, dtype=logits.dtype, device=logits.device)
    logps[mask] = picked - torch.logsumexp(logits, dim=-1)
    return logps, mask


def shared_prompt_logprobs(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                           torch.Tensor]:
    """Summed log-probs of chosen and rejected responses from ``encode_pairs_shared_prompt`` rows.

    Equal to ``response_logprobs`` on ``encode_pairs_for_dpo`` (summed per sequence), with the prompt computed once.
    Returns ``(chosen [B], rejected [B], chosen_tokens [B], rejected_tokens [B])``; gradient flows if enabled.
    """
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              position_ids=batch["position_ids"]).last_hidden_state  # [B, L, H]
    side = batch["side"]
    scored = side >= 0
    states = hidden.gather(1, batch["source"].unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # [B, K, H]
    logits = upcast(model.get_output_embeddings()(states[scored]))  # [N, V]
    picked = logits.gather(-1, batch["target"][scored].unsqueeze(-1)).squeeze(-1)
    logps = torch.zeros(side.shape, dtype=logits.dtype, device=logits.device)
    logps[scored] = picked - torch.logsumexp(logits, dim=-1)
    chosen, rejected = side == 0, side == 1
    return ((logps * chosen).sum(-1), (logps * rejected).sum(-1), chosen.sum(-1), rejected.sum(-1))


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
    # Batch pairs of similar length together (less padding to compute), then put the results back in order.
    order = sorted(range(len(pairs)), key=lambda i: sum(len(pairs[i][k]) for k in ("prompt", "chosen", "rejected")))
    parts: dict[str, list[torch.Tensor]] = {"chosen": [], "rejected": [], "chosen_tokens": [], "rejected_tokens": []}
    try:
        for start in tqdm(range(0, len(pairs), batch_size), desc="scoring pairs", disable=not progress,
                          unit="batch"):
            chunk = [pairs[i] for i in order[start:start + batch_size]]
            batch = {k: v.to(device) for k, v in encode_pairs_shared_prompt(tokenizer, chunk, max_length).items()}
            for key, value in zip(parts, shared_prompt_logprobs(model, batch)):
                parts[key].append(value.cpu())
    finally:
        model.train(was_training)
    in_order = torch.empty(len(pairs), dtype=torch.long)
    in_order[torch.tensor(order, dtype=torch.long)] = torch.arange(len(pairs))
    return {k: torch.cat(v)[in_order] for k, v in parts.items()}
