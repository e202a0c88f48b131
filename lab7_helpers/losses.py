"""Losses: per-token log-probs, the exact KL to a reference, the KL-regularized loss and the DPO loss.

Shapes as in Hugging Face models: ``logits`` ``[B, T, V]`` from ``input_ids`` ``[B, T]``; ``labels`` ``[B, T]``
aligned with ``input_ids``, -100 on prompt and padding. The logits at ``t - 1`` score the token at ``t``: the
functions shift by one themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 to float32 (a softmax over 50k logits needs it); other dtypes stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def picked_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)[..., targets]``: ``[..., V]``, ``[...]`` -> ``[...]``, without a second ``[..., V]``
    tensor."""
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logps, mask)``, both ``[B, T - 1]``: ``logps[b, t] = log p(labels[b, t + 1] | tokens <= t)``, and 0
    where the bool ``mask`` is False (label -100)."""
    logits = upcast(logits[:, :-1])
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    return picked_logprobs(logits, targets.masked_fill(~mask, 0)).masked_fill(~mask, 0.0), mask


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log pi(y | x)`` ``[B]``: the **sum** of the response tokens' log-probs (a sum, as DPO uses: the paper,
    its code, TRL)."""
    logps, _ = token_logprobs(logits, labels)
    return logps.sum(dim=-1)


def token_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact ``KL(pi || ref) = sum_v p(v) * (log p(v) - log r(v))`` over the vocabulary, at every position.

    ``[..., V]`` twice -> ``[...]`` (nats, >= 0). ``policy_logits`` must keep its gradient (never compute this
    under ``torch.no_grad()``): the penalty pulls the policy back to the reference only through it.
    """
    policy_logps = F.log_softmax(upcast(policy_logits), dim=-1)
    ref_logps = F.log_softmax(upcast(ref_logits), dim=-1)
    return (policy_logps.exp() * (policy_logps - ref_logps)).sum(dim=-1)


def kl_regularized_loss(policy_logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor,
                        beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, nll, kl)`` scalars, ``loss = nll + beta * kl``: both a **mean over the response tokens** of the
    batch, the KL at the positions that predict them. ``nll`` and ``kl`` carry gradient (detach them to log)."""
    logps, mask = token_logprobs(policy_logits, labels)
    n_tokens = mask.sum()
    if n_tokens == 0:
        raise ValueError("the batch has no response tokens (every label is -100): nothing to learn from")
    nll = -logps.sum() / n_tokens
    response_positions = F.pad(mask, (0, 1), value=False)  # back to [B, T]
    kl = token_kl(policy_logits[response_positions], ref_logits[response_positions]).mean()
    return nll + beta * kl, nll, kl


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float = 0.1,
             loss_type: str = "sigmoid", chosen_tokens: torch.Tensor | None = None,
             rejected_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss per pair from **summed** log-probs, all ``[B]``: ``(losses, chosen_rewards, rejected_rewards)``.

    With the log-ratios ``c = log pi(y+|x) - log ref(y+|x)`` and ``r = log pi(y-|x) - log ref(y-|x)``:
    ``"sigmoid"`` (DPO) is ``-log sigmoid(beta * (c - r))`` and ``"hinge"`` (SLiC) ``relu(1 - beta * (c - r))``;
    ``"ipo"`` is ``(c / chosen_tokens - r / rejected_tokens - 1 / (2 * beta)) ** 2``: IPO on the log-ratios
    **averaged per token**, as TRL computes it (it needs the responses' token counts, ``[B]``). The implicit
    rewards ``beta * c`` and ``beta * r`` (summed, whatever the loss) are detached. TRL trains on ``losses.mean()``.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * (chosen_logratios - rejected_logratios))
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError('loss_type="ipo" averages the log-ratios per token: pass chosen_tokens and rejected_tokens')
        per_token = chosen_logratios / chosen_tokens.clamp(min=1) - rejected_logratios / rejected_tokens.clamp(min=1)
        losses = (per_token - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f'loss_type must be "sigmoid", "ipo" or "hinge", got {loss_type!r}')
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
