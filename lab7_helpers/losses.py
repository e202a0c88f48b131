"""Losses: per-token log-probs, the exact KL to a reference, the KL-regularized loss and the DPO loss.

Conventions (as in Hugging Face models):
- ``logits`` are ``[B, T, V]``, computed from ``input_ids`` ``[B, T]``;
- ``labels`` are ``[B, T]`` aligned with ``input_ids``; prompt and padding positions hold -100;
- logits at position ``t - 1`` score the token at position ``t``: the functions shift by one themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import IGNORE_INDEX


def upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 to float32 (softmax over 50k logits needs it); float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def picked_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(logits)[i, targets[i]]`` for each position of ``logits`` ``[..., V]``, without building a second
    full-size tensor. Returns ``[...]``."""
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each next token, and where it counts.

    Args:
        logits: ``[B, T, V]``.
        labels: ``[B, T]``, -100 where a token is not scored.

    Returns:
        ``(logps, mask)``, both ``[B, T - 1]``: ``logps[b, t]`` is ``log p(labels[b, t + 1] | tokens <= t)``, set to
        0 where ``mask`` (a bool tensor) is False.
    """
    logits = upcast(logits[:, :-1])
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe_targets = targets.masked_fill(~mask, 0)
    return picked_logprobs(logits, safe_targets).masked_fill(~mask, 0.0), mask


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """**Sum** of next-token log-probs over the response tokens of each sequence: ``log pi(y | x)``.

    Args:
        logits: ``[B, T, V]``.
        labels: ``[B, T]``, -100 on prompt and padding.

    Returns:
        ``[B]``. A sum, not a mean: this is the sequence log-likelihood that DPO uses (paper, reference code, TRL).
    """
    logps, _ = token_logprobs(logits, labels)
    return logps.sum(dim=-1)


def token_kl(policy_logits: torch.Tensor, ref_logits: torch.Tensor) -> torch.Tensor:
    """Exact KL(pi_theta || pi_ref) over the whole vocabulary, at every position.

    ``KL = sum_v p(v) * (log p(v) - log r(v))`` with ``p = softmax(policy_logits)``, ``r = softmax(ref_logits)``.

    Args:
        policy_logits: ``[B, T, V]`` (any leading shape works), **with** gradient: the KL penalty only pulls the
            policy back to the reference if gradient flows through it. Do not wrap this in ``torch.no_grad()``.
        ref_logits: same shape, from the frozen reference (computed under ``no_grad``).

    Returns:
        ``[B, T]``, one KL value (>= 0, in nats) per position.
    """
    policy_logps = F.log_softmax(upcast(policy_logits), dim=-1)
    ref_logps = F.log_softmax(upcast(ref_logits), dim=-1)
    return (policy_logps.exp() * (policy_logps - ref_logps)).sum(dim=-1)


def kl_regularized_loss(policy_logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor,
                        beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``loss = NLL + beta * KL``, both a **mean over response tokens** of the batch.

    NLL is the mean negative log-likelihood of the response tokens; KL is the mean exact KL(pi_theta || pi_ref)
    of the next-token distributions at the positions that predict those tokens.

    Args:
        policy_logits: ``[B, T, V]`` from the model being trained.
        ref_logits: ``[B, T, V]`` from the frozen reference on the same ``input_ids``.
        labels: ``[B, T]``, -100 on prompt and padding.
        beta: KL strength, >= 0.

    Returns:
        ``(loss, nll, kl)``, scalars; gradient flows through ``nll`` and ``kl`` (detach them to log).
    """
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
             loss_type: str = "sigmoid") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The DPO loss per pair, from **summed** sequence log-probs (see ``sequence_logprobs``).

    With ``h = (log pi(y+|x) - log ref(y+|x)) - (log pi(y-|x) - log ref(y-|x))``:
    - ``"sigmoid"`` (DPO): ``-log sigmoid(beta * h)``;
    - ``"ipo"``: ``(h - 1 / (2 * beta)) ** 2``. TRL's IPO divides each log-ratio by the response length: pass
      mean per-token log-probs to get TRL's numbers;
    - ``"hinge"`` (SLiC): ``relu(1 - beta * h)``.

    All inputs are ``[B]``. Returns ``(losses [B], chosen_rewards [B], rejected_rewards [B])``; the implicit
    rewards ``beta * (log pi - log ref)`` are detached. TRL's training loss is ``losses.mean()``.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    h = chosen_logratios - rejected_logratios
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f'loss_type must be "sigmoid", "ipo" or "hinge", got {loss_type!r}')
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()
