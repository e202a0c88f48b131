"""The two update loops, KL-regularized and DPO: forward, loss, backward, clip, step. Each trains ``policy`` in
place and returns one row per optimizer step. Each loop hands ``engine.session`` the plain steps below and calls
what it hands back: on a float32 CPU, faster twins with the same numbers; elsewhere these functions themselves.
A step reads its numbers back from the device once (``read_back``), so a GPU never waits on the loop mid-step."""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from typing import Callable, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import engine
from .data import encode_pair, pad_batch
from .evaluation import nll_and_kl
from .losses import dpo_loss, kl_regularized_loss, picked_logprobs
from .models import mixed_precision_dtype, trainable_copy
from .scoring import model_logits, pair_logprobs, reference_logits, response_logits, sum_by_side

MAX_GRAD_NORM = 1.0  # gradient clipping, as in TRL and the Hugging Face Trainer
# DPO's passes scale with the data: at least DPO_MIN_STEPS steps, so that a small file moves the model visibly,
# and at most DPO_MAX_EPOCHS passes, since repeating a small file overfits it (README, "Defaults that scale").
DPO_MIN_STEPS = 50
DPO_MAX_EPOCHS = 4


def scaled_dpo_epochs(n_train: int, batch_size: int = 1) -> int:
    """Passes over ``n_train`` pairs for at least ``DPO_MIN_STEPS`` steps, between 1 and ``DPO_MAX_EPOCHS``."""
    steps_per_epoch = math.ceil(n_train / batch_size)
    return max(1, min(DPO_MAX_EPOCHS, math.ceil(DPO_MIN_STEPS / steps_per_epoch)))


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, TRL's defaults (no weight decay; a constant learning rate here), with
    the fused kernel where torch has one."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=params[0].device.type in ("cpu", "cuda"))


def autocast(device: torch.device):
    """``(context manager factory, GradScaler or None)`` for the precision ``mixed_precision_dtype`` chooses;
    fp16 needs the scaler against gradient underflow."""
    dtype = mixed_precision_dtype(device)
    if dtype is None:
        return nullcontext, None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def batches(n_items: int, batch_size: int, n_batches: int, seed: int) -> list[list[int]]:
    """``n_batches`` lists of indices: passes over ``range(n_items)``, each in a new seeded shuffle (the last
    batch of a pass may be smaller)."""
    rng = random.Random(seed)
    out: list[list[int]] = []
    while len(out) < n_batches:
        order = list(range(n_items))
        rng.shuffle(order)
        out += [order[i:i + batch_size] for i in range(0, n_items, batch_size)]
    return out[:n_batches]


def read_back(values: dict[str, torch.Tensor], stage: str, step: int, pairs: Sequence[dict]) -> dict[str, float]:
    """The step's scalars as floats, read from the device in one go; stops with a clear message instead of training
    on (and reporting) a NaN or infinite loss."""
    device = values["loss"].device
    row = dict(zip(values, torch.stack([torch.as_tensor(v, device=device).detach().float().reshape(())
                                        for v in values.values()]).tolist()))
    if not math.isfinite(row["loss"]):
        raise FloatingPointError(f"{stage}: the loss became {row['loss']} at step {step} (batch starting with the "
                                 f"prompt {pairs[0]['prompt'][:60]!r}). Try a smaller learning rate.")
    return row


def optimizer_step(loss: torch.Tensor, optimizer, scaler=None, max_norm: float = MAX_GRAD_NORM) -> None:
    """Backward, clip the gradient norm to ``max_norm``, step (through the fp16 scaler if any), then free the
    gradients, which the next forward pass would otherwise hold in memory (one more copy of the model)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)


def release(optimizer: torch.optim.Optimizer) -> None:
    """Free the gradients and the optimizer's state (AdamW: two tensors per parameter) once training is over."""
    optimizer.zero_grad(set_to_none=True)
    optimizer.state.clear()


def history_frame(rows: list[dict]) -> pd.DataFrame:
    """Per-step dicts as a DataFrame indexed by step, from 1."""
    return pd.DataFrame(rows, index=pd.RangeIndex(1, len(rows) + 1, name="step"))


def train_kl(policy, ref, tokenizer, pairs: Sequence[dict], beta: float = 0.05, lr: float = 5e-5,
             steps: int = 30, batch_size: int = 1, seed: int = 0, max_length: int = 256,
             progress: bool = True, loss_fn: Callable = kl_regularized_loss) -> pd.DataFrame:
    """The KL-regularized update on the **chosen** responses, ``loss = NLL + beta * KL(pi || ref)``: columns
    ``loss``, ``nll``, ``kl``. ``loss_fn``: ``kl_regularized_loss`` or the student's own, with its signature: it
    gets the policy's and the reference's logits ``[B, T, V]`` and the labels ``[B, T]`` of each step's batch."""
    device = next(policy.parameters()).device
    encoded = [encode_pair(tokenizer, p["prompt"], p["chosen"], max_length) for p in pairs]
    optimizer = make_optimizer(policy, lr)
    amp, scaler = autocast(device)
    policy.train()
    rows = []
    schedule = batches(len(pairs), batch_size, steps, seed)
    step_batches = [{k: v.to(device) for k, v in pad_batch([encoded[i] for i in idx], tokenizer.pad_token_id).items()}
                    for idx in schedule]
    plain = engine.Steps(reference_logits=reference_logits, optimizer_step=optimizer_step)
    with engine.session(policy, ref, training=True, plain=plain) as fast:
        ref_logits_at = fast.reference_logits(ref, step_batches, amp)  # the frozen reference: no graph for it
        for step, (idx, batch) in enumerate(tqdm(list(zip(schedule, step_batches)), desc=f"KL update (beta={beta})",
                                                 disable=not progress, unit="step"), start=1):
            with amp():
                loss, nll, kl = loss_fn(model_logits(policy, batch), ref_logits_at(step - 1), batch["labels"], beta)
            rows.append(read_back({"loss": loss, "nll": nll, "kl": kl}, "KL update", step, [pairs[i] for i in idx]))
            fast.optimizer_step(loss, optimizer, scaler, MAX_GRAD_NORM)  # backward, clip, step, zero_grad
        release(optimizer)
    return history_frame(rows)


def train_dpo(policy, ref, tokenizer, pairs: Sequence[dict], beta: float = 0.1, lr: float = 5e-6,
              epochs: int = 1, batch_size: int = 1, seed: int = 0, max_length: int = 256,
              loss_type: str = "sigmoid", progress: bool = True) -> pd.DataFrame:
    """DPO with our own loop, the loss of TRL's ``DPOTrainer`` (summed log-probs).

    Columns: ``loss``; TRL's ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins``,
    ``rewards/accuracies``; ``logps_vs_ref/chosen`` and ``/rejected``, the policy's summed log-prob minus the
    reference's (rewards / beta). A negative ``logps_vs_ref/chosen`` is likelihood displacement: the margin
    widens while the chosen response gets *less* likely. All are batch means before the step's update.
    """
    device = next(policy.parameters()).device
    amp, scaler = autocast(device)
    optimizer = make_optimizer(policy, lr)
    rows = []
    plain = engine.Steps(response_logits=response_logits, optimizer_step=optimizer_step)
    with engine.session(policy, ref, training=True, plain=plain) as fast:
        # the reference's log-probs never change: computed once, in the policy's precision so that at step 1
        # (policy = reference) the loss is exactly log 2
        with amp():
            ref_scores = pair_logprobs(ref, tokenizer, pairs, max_length=max_length, progress=progress)  # [N] each
        policy.train()
        schedule = batches(len(pairs), batch_size, epochs * math.ceil(len(pairs) / batch_size), seed)
        with fast.unused(ref):  # on a CPU the reference's weights wait on disk meanwhile
            for step, idx in enumerate(tqdm(schedule, desc="DPO", disable=not progress, unit="step"), start=1):
                chunk = [pairs[i] for i in idx]
                with amp():
                    logits, targets, side = fast.response_logits(policy, tokenizer, chunk, max_length)
                    chosen_logps, rejected_logps, chosen_tokens, rejected_tokens = sum_by_side(
                        picked_logprobs(logits, targets), side)
                losses, chosen_rewards, rejected_rewards = dpo_loss(
                    chosen_logps, rejected_logps, ref_scores["chosen"][idx].to(device),
                    ref_scores["rejected"][idx].to(device), beta=beta, loss_type=loss_type,
                    chosen_tokens=chosen_tokens, rejected_tokens=rejected_tokens)
                loss = losses.mean()
                rows.append(read_back({
                    "loss": loss, "rewards/chosen": chosen_rewards.mean(), "rewards/rejected": rejected_rewards.mean(),
                    "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
                    "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
                    "logps_vs_ref/chosen": (chosen_rewards / beta).mean(),
                    "logps_vs_ref/rejected": (rejected_rewards / beta).mean()}, "DPO", step, chunk))
                fast.optimizer_step(loss, optimizer, scaler, MAX_GRAD_NORM)  # backward, clip, step, zero_grad
            release(optimizer)
    return history_frame(rows)


def kl_beta_sweep(ref, tokenizer, pairs: Sequence[dict], betas: Sequence[float], progress: bool = True,
                  trained: dict | None = None, steps: int = 30, batch_size: int = 1, seed: int = 0,
                  **train_kl_args) -> pd.DataFrame:
    """``train_kl`` once per beta, each from a fresh copy of ``ref`` (one copy at a time), then ``nll_and_kl`` on
    the pairs those steps trained on (all of ``pairs`` once the steps cover them): a DataFrame indexed by
    ``beta``. Larger beta should give smaller KL and larger NLL.

    ``trained`` maps a beta to a model that ``train_kl`` already trained on ``pairs`` with the same arguments (the
    notebook's KL update): it is measured, not trained again, and gives the same numbers."""
    schedule = batches(len(pairs), batch_size, steps, seed)  # as train_kl draws them
    seen = [pairs[i] for i in dict.fromkeys(i for idx in schedule for i in idx)]
    args = dict(steps=steps, batch_size=batch_size, seed=seed, **train_kl_args)
    rows = []
    for beta in betas:
        policy = (trained or {}).get(beta)
        if policy is None:
            policy = trainable_copy(ref)
            train_kl(policy, ref, tokenizer, pairs, beta=beta, progress=progress, **args)
        nll, kl = nll_and_kl(policy, ref, tokenizer, seen, max_length=args.get("max_length", 256))
        rows.append({"beta": beta, "nll": nll, "kl": kl})
        del policy
    return pd.DataFrame(rows).set_index("beta")
