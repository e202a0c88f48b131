"""Training loops: the KL-regularized supervised update and DPO. Both train ``policy`` in place.

Each returns a pandas DataFrame with one row per optimizer step, indexed by step (1, 2, ...).
"""

from __future__ import annotations

import math
import random
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from .cpu_memory import reuse_freed_memory
from .data import encode_pair, encode_pairs_shared_prompt, pad_batch
from .losses import dpo_loss, kl_regularized_loss
from .models import mixed_precision_dtype, weights_on_disk
from .scoring import logits_at_responses, pair_logprobs, response_logits, shared_prompt_logprobs


MAX_GRAD_NORM = 1.0  # gradient clipping, as in TRL / the Hugging Face Trainer


def make_optimizer(model: torch.nn.Module, lr: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters with TRL's defaults (no weight decay, constant learning rate here),
    using the fused kernel where torch has one (much faster on CPU)."""
    params = [p for p in model.parameters() if p.requires_grad]
    device_type = params[0].device.type
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=device_type in ("cpu", "cuda"))


def autocast(device: torch.device):
    """Mixed precision as ``mixed_precision_dtype`` chooses it (none on CPU).

    Returns ``(context manager factory, GradScaler or None)``; fp16 needs the scaler to avoid underflow.
    """
    dtype = mixed_precision_dtype(device)
    if dtype is None:
        return nullcontext, None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast("cuda", dtype=dtype)), scaler


def batches(n_items: int, batch_size: int, n_batches: int, seed: int) -> list[list[int]]:
    """``n_batches`` lists of indices: passes over a seeded shuffle of ``range(n_items)``, in order, reshuffled
    each pass. The last batch of a pass may be smaller; no index repeats within a pass."""
    rng = random.Random(seed)
    out: list[list[int]] = []
    while len(out) < n_batches:
        order = list(range(n_items))
        rng.shuffle(order)
        out += [order[i:i + batch_size] for i in range(0, n_items, batch_size)]
    return out[:n_batches]


def check_finite(value: torch.Tensor, stage: str, step: int, pairs: Sequence[dict]) -> None:
    """Stop with a clear message instead of training on (and reporting) NaN or infinity."""
    if not torch.isfinite(value).all():
        prompt = pairs[0]["prompt"][:60]
        raise FloatingPointError(f"{stage}: the loss became {value.item()} at step {step} (batch starting with "
                                 f"the prompt {prompt!r}). Try a smaller learning rate.")


def optimizer_step(loss: torch.Tensor, optimizer, scaler) -> None:
    """Backward, clip the gradient norm to ``MAX_GRAD_NORM``, step (through the fp16 scaler when there is one),
    then free the gradients: otherwise the next forward pass runs with this step's gradients (one more copy of
    the model) still in memory."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if scaler is None:
        loss.backward()
        clipped_step(optimizer, params)
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)


def clipped_step(optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter]) -> None:
    """``clip_grad_norm_(params, MAX_GRAD_NORM)`` then ``optimizer.step()``, with one pass over the gradients less
    where the optimizer is fused.

    Clipping multiplies every gradient by ``min(1, MAX_GRAD_NORM / (norm + 1e-6))``: a read and a write of the
    whole gradient (0.5 GB for SmolLM2-135M) before the optimizer reads it again. A fused Adam/AdamW divides each
    gradient by its ``grad_scale`` tensor as it reads it (the attribute ``torch.amp.GradScaler`` sets to unscale
    fp16 gradients), so the clip factor goes there: the same update to float32 rounding, about 15 ms less per
    CPU step. The gradients themselves are left unclipped.
    """
    if not optimizer.defaults.get("fused"):
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        return
    norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    optimizer.grad_scale = torch.clamp((norm + 1e-6) / MAX_GRAD_NORM, min=1.0)
    try:
        optimizer.step()
    finally:
        del optimizer.grad_scale


@contextmanager
def tied_embedding_gradient_in_place(model: torch.nn.Module) -> Iterator[None]:
    """While the block runs, the input embedding of a model with tied input and output embeddings (GPT-2,
    SmolLM2) adds its gradient, one row per input token, straight into the shared weight's ``.grad``.

    By default autograd builds the embedding's gradient as a dense ``[V, H]`` matrix of zeros with a few rows
    filled in (113 MB for a 49k x 576 vocabulary; a sparse gradient avoids that), then adds it to the output
    layer's gradient of the same weight into a new ``[V, H]`` tensor. Here the rows are looked up in the detached
    weight and a hook on them adds their gradient into ``weight.grad`` with ``index_add_``: the same sum, with no
    ``[V, H]`` temporary (about 0.15 GB less peak memory in training). As in ``nn.Embedding``, the row of
    ``padding_idx`` gets nothing from the input side. Untied models, and embeddings with ``max_norm``,
    ``scale_grad_by_freq`` or ``sparse``, keep the default.
    """
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


def release(optimizer: torch.optim.Optimizer) -> None:
    """Free the gradients and the optimizer's state (AdamW: two tensors per parameter) once training is over."""
    optimizer.zero_grad(set_to_none=True)
    optimizer.state.clear()


def train_kl(policy, ref, tokenizer, pairs: Sequence[dict], beta: float = 0.05, lr: float = 5e-5,
             steps: int = 30, batch_size: int = 1, seed: int = 0, max_length: int = 256,
             progress: bool = True, loss_fn: Callable = kl_regularized_loss) -> pd.DataFrame:
    """KL-regularized supervised update on the **chosen** responses: ``loss = NLL + beta * KL(pi || ref)``.

    NLL and KL are means over the response tokens of each batch (``kl_regularized_loss``); the KL is exact over
    the vocabulary and carries gradient. ``loss_fn`` lets the notebook train with the student's own version of
    ``kl_regularized_loss`` (same arguments and return value).

    Both models' logits are computed at the response positions only (``response_logits``): ``loss_fn``
    receives ``[B, T, V]`` logits with zeros at prompt and padding positions, which the labels mask out of every
    loss. The reference's logits are computed first, for every batch the steps will see, and kept on disk
    (``reference_logits_on_disk``); while the policy trains, the reference's weights wait on disk too.

    Returns a DataFrame with columns ``loss``, ``nll``, ``kl`` (one row per step).
    """
    device = next(policy.parameters()).device
    encoded = [encode_pair(tokenizer, p["prompt"], p["chosen"], max_length) for p in pairs]
    schedule = batches(len(pairs), batch_size, steps, seed)

    def padded(idx: Sequence[int]) -> dict[str, torch.Tensor]:
        batch = pad_batch([encoded[i] for i in idx], tokenizer.pad_token_id)
        return {k: v.to(device) for k, v in batch.items()}

    optimizer = make_optimizer(policy, lr)
    amp, scaler = autocast(device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="lab7_reference_") as folder, reuse_freed_memory():
        ref_files = reference_logits_on_disk(ref, schedule, padded, Path(folder), amp, progress)
        policy.train()
        steps_bar = tqdm(schedule, desc=f"KL update (beta={beta})", disable=not progress, unit="step")
        with reference_on_disk(policy, ref), tied_embedding_gradient_in_place(policy):
            for step, idx in enumerate(steps_bar, start=1):
                batch = padded(idx)
                with amp():
                    logits, mask = response_logits(policy, **batch)  # [N, V], N response tokens
                    ref_logits = torch.load(ref_files[tuple(idx)], map_location=device, weights_only=True)
                    loss, nll, kl = loss_fn(logits_at_responses(logits, mask), logits_at_responses(ref_logits, mask),
                                            batch["labels"], beta)
                check_finite(loss, "KL update", step, [pairs[i] for i in idx])
                optimizer_step(loss, optimizer, scaler)
                rows.append({"loss": loss.item(), "nll": nll.item(), "kl": kl.item()})
            release(optimizer)
    return history_frame(rows)


@torch.inference_mode()
def reference_logits_on_disk(ref, schedule: list[list[int]], padded: Callable, folder: Path, amp,
                             progress: bool = True) -> dict[tuple[int, ...], Path]:
    """Run ``ref`` once on each distinct batch of ``schedule`` and save its logits at the response positions.

    ``padded(idx)`` gives the batch exactly as training will see it, and ``response_logits`` computes them as
    training does, so they are the logits an on-the-fly reference would give: the KL at step 1 (policy ==
    reference) is exactly 0. One ``[N, V]`` file per distinct batch (N response tokens), keyed by its indices.
    """
    files: dict[tuple[int, ...], Path] = {}
    distinct = list(dict.fromkeys(tuple(idx) for idx in schedule))
    for idx in tqdm(distinct, desc="reference logits", disable=not progress, unit="batch"):
        batch = padded(idx)
        with amp():
            logits, _ = response_logits(ref, **batch)
        files[idx] = folder / f"{len(files)}.pt"
        torch.save(logits, files[idx])
    return files


def reference_on_disk(policy, ref):
    """``weights_on_disk(ref)``, unless ``ref`` shares weights with ``policy`` (the same model passed twice)."""
    shared = {p.data_ptr() for p in policy.parameters()} & {p.data_ptr() for p in ref.parameters()}
    return nullcontext() if shared else weights_on_disk(ref)


def train_dpo(policy, ref, tokenizer, pairs: Sequence[dict], beta: float = 0.1, lr: float = 5e-6,
              epochs: int = 1, batch_size: int = 1, seed: int = 0, max_length: int = 256,
              loss_type: str = "sigmoid", progress: bool = True) -> pd.DataFrame:
    """DPO on ``pairs`` with our own loop; the same loss as TRL's ``DPOTrainer`` (summed log-probs).

    The reference log-probs are computed once, before training, in batches of similar length: ``ref`` is not
    needed during the updates, so its weights wait on disk meanwhile (unless ``ref`` is ``policy`` itself). Each
    step runs prompt, chosen and rejected through the policy as one sequence (the prompt once; see
    ``encode_pairs_shared_prompt``) and applies the LM head to response positions only. On CPU the linear layers
    run through oneDNN (``onednn_linears``).

    Returns a DataFrame with ``loss`` and the ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins`` and
    ``rewards/accuracies`` that TRL logs (batch means, before the step's update).
    """
    device = next(policy.parameters()).device
    amp, scaler = autocast(device)
    n_steps = epochs * math.ceil(len(pairs) / batch_size)
    rows = []
    with reuse_freed_memory():  # from the reference scoring on: its freed activations serve the first steps
        ref_scores = pair_logprobs(ref, tokenizer, pairs, max_length=max_length, progress=progress)
        optimizer = make_optimizer(policy, lr)
        policy.train()
        steps_bar = tqdm(batches(len(pairs), batch_size, n_steps, seed), desc="DPO", disable=not progress,
                         unit="step")
        with reference_on_disk(policy, ref), tied_embedding_gradient_in_place(policy):
            for step, idx in enumerate(steps_bar, start=1):
                chunk = [pairs[i] for i in idx]
                batch = {k: v.to(device) for k, v in encode_pairs_shared_prompt(tokenizer, chunk, max_length).items()}
                with amp():
                    chosen_logps, rejected_logps, _, _ = shared_prompt_logprobs(policy, batch)
                ref_chosen, ref_rejected = ref_scores["chosen"][idx].to(device), ref_scores["rejected"][idx].to(device)
                losses, chosen_rewards, rejected_rewards = dpo_loss(chosen_logps, rejected_logps, ref_chosen,
                                                                    ref_rejected, beta=beta, loss_type=loss_type)
                loss = losses.mean()
                check_finite(loss, "DPO", step, chunk)
                optimizer_step(loss, optimizer, scaler)
                rows.append({"loss": loss.item(), "rewards/chosen": chosen_rewards.mean().item(),
                             "rewards/rejected": rejected_rewards.mean().item(),
                             "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
                             "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean().item()})
            release(optimizer)
    return history_frame(rows)


def history_frame(rows: list[dict]) -> pd.DataFrame:
    """Per-step dicts as a DataFrame indexed by step, starting at 1."""
    history = pd.DataFrame(rows)
    history.index = pd.RangeIndex(1, len(rows) + 1, name="step")
    return history


def kl_beta_sweep(ref, tokenizer, pairs: Sequence[dict], betas: Sequence[float], progress: bool = True,
                  **train_kl_args) -> pd.DataFrame:
    """Run the KL update once per beta, each from a fresh copy of ``ref``, and measure where it ends up.

    Returns a DataFrame indexed by ``beta`` with ``nll`` and ``kl``: the mean NLL and exact KL to ``ref`` per
    token over the chosen responses of ``pairs`` after training. Larger beta should give smaller KL and larger NLL.
    One copy of the model exists at a time.
    """
    from .evaluation import response_nll_and_kl
    from .models import trainable_copy

    rows = []
    for beta in betas:
        policy = trainable_copy(ref)
        train_kl(policy, ref, tokenizer, pairs, beta=beta, progress=progress, **train_kl_args)
        nll, kl = response_nll_and_kl(policy, ref, tokenizer, pairs)
        rows.append({"beta": beta, "nll": nll, "kl": kl})
        del policy
    return pd.DataFrame(rows).set_index("beta")
