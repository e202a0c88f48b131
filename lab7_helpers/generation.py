"""Batched, seeded sampling from a model, returning only the newly generated text."""

from __future__ import annotations

import warnings
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from . import engine
from .data import format_prompt
from .models import context_length


@torch.inference_mode()
def generate(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 80, temperature: float = 0.8,
             top_p: float = 0.95, seed: int = 0, batch_size: int = 32, progress: bool = False) -> list[str]:
    """Sample one response per prompt, in batches (left padding), with the lab's prompt template.

    Each prompt is wrapped with ``format_prompt``, exactly as in training. Only the new tokens are decoded
    (the prompt is cut off by token count, not by string length, which breaks when decoding changes spaces).
    The same model, prompts, settings and ``seed`` give the same texts. ``temperature=0`` means greedy decoding.
    Each new token reads every weight of the model whatever the batch size, so large batches are cheap.
    Prompt and new tokens together must fit the model's context (``context_length``): a longer prompt keeps
    its end (the part next to "Answer:") and loses its start, with a warning; never an error.

    Returns:
        One string per prompt, in order, without the prompt and without special tokens.
    """
    was_training = model.training
    model.eval()
    requested_new_tokens = max_new_tokens
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # new tokens must follow the prompt directly, so pad on the left
    device = next(model.parameters()).device
    # Greedy decoding takes the one token that NucleusSampler leaves possible (see there why it samples itself).
    sampler = LogitsProcessorList([NucleusSampler(temperature, top_p, seed, device)] if temperature > 0 else [])
    context = context_length(model) or float("inf")
    max_new_tokens = min(max_new_tokens, context // 2)  # a prompt needs room too
    prompt_budget = context - max_new_tokens
    texts: list[str] = []
    n_cut = 0
    try:
        with engine.session(model, decode_rows=min(batch_size, len(prompts))):
            starts = range(0, len(prompts), batch_size)
            for start in tqdm(starts, desc="generating", disable=not progress, unit="batch"):
                ids = tokenizer([format_prompt(p) for p in prompts[start:start + batch_size]])["input_ids"]
                n_cut += sum(len(row) > prompt_budget for row in ids)
                ids = [row[-prompt_budget:] if len(row) > prompt_budget else row for row in ids]  # keep the end
                inputs = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(device)
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id, do_sample=False, logits_processor=sampler)
                new_tokens = output[:, inputs["input_ids"].shape[1]:]
                texts += [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    cuts = ([f"{n_cut} prompt(s) lost their start"] if n_cut else []) + (
        [f"{max_new_tokens} new tokens were generated, not {requested_new_tokens}"]
        if max_new_tokens < requested_new_tokens else [])
    if cuts:
        warnings.warn(f"the model reads at most {context} tokens, so " + " and ".join(cuts))
    return texts


class NucleusSampler(LogitsProcessor):
    """Temperature and top-p (nucleus) sampling that draws one random number per sequence and token.

    The same distribution as Hugging Face's ``do_sample=True, temperature=..., top_p=...``: the logits are divided
    by ``temperature``, and the token is drawn from the smallest set of most likely tokens whose probability
    reaches ``top_p``. Hugging Face's sampler (``torch.multinomial``) draws one random number per vocabulary entry,
    50k per new token, which on a CPU takes longer than the model's own decoding step for a small model. Here the
    token is found by inverse-CDF sampling on the sorted probabilities: one uniform number per row.

    As a logits processor it returns scores that are -inf everywhere except the drawn token, so ``generate`` runs
    in greedy mode and takes exactly that token. Its own seeded generator leaves the global random state alone.
    """

    def __init__(self, temperature: float, top_p: float, seed: int, device: torch.device | str):
        self.temperature, self.top_p = temperature, top_p
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # [B, V]
        # The k most likely tokens, sorted, with k grown until they hold top_p in every row (a full sort of 50k
        # entries per row costs more than the model's step; the nucleus is usually a few hundred tokens).
        k = min(256, probs.shape[-1])
        while True:
            sorted_probs, order = probs.topk(k, dim=-1)  # [B, k], most likely first
            cumulative = sorted_probs.cumsum(dim=-1)
            if k == probs.shape[-1] or bool((cumulative[:, -1] >= self.top_p).all()):
                break
            k = min(4 * k, probs.shape[-1])
        # Keep a token while the tokens ranked above it hold less than top_p (the top token is always kept).
        n_kept = ((cumulative - sorted_probs) < self.top_p).sum(dim=-1, keepdim=True)  # [B, 1]
        kept_mass = cumulative.gather(-1, n_kept - 1)
        u = torch.rand(kept_mass.shape, generator=self.generator, device=scores.device) * kept_mass
        rank = torch.searchsorted(cumulative, u, right=True).clamp(max=n_kept - 1)  # first with cumulative > u
        token = order.gather(-1, rank)  # [B, 1]
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)
