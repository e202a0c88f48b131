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
    """One sampled response per prompt (``temperature=0``: greedy), in order, without the prompt or special
    tokens; the prompt wrapped in ``format_prompt`` as in training, the same ``seed`` the same texts. A prompt
    too long for the model's context loses its start (its end, next to "Answer:", stays), with a warning."""
    was_training = model.training
    model.eval()
    requested_new_tokens = max_new_tokens
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # the new tokens must follow the prompt directly
    device = next(model.parameters()).device
    # greedy decoding then takes the one token that NucleusSampler left possible
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
                ids = [row[-prompt_budget:] if len(row) > prompt_budget else row for row in ids]
                inputs = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(device)
                output = model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                        eos_token_id=tokenizer.eos_token_id, do_sample=False, logits_processor=sampler)
                # cut the prompt off by token count: decoding can change spaces, so string length is unreliable
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
    """Temperature and top-p sampling, the distribution of Hugging Face's ``do_sample=True``, drawn by inverse CDF
    with one random number per row (``torch.multinomial`` draws one per vocabulary entry) from its own seeded
    generator. The scores it returns are -inf but at the drawn token, so greedy ``generate`` takes that token."""

    def __init__(self, temperature: float, top_p: float, seed: int, device: torch.device | str):
        self.temperature, self.top_p = temperature, top_p
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)  # [B, V]
        # the k most likely tokens, k grown until they hold top_p in every row (cheaper than sorting all V)
        k = min(256, probs.shape[-1])
        while True:
            sorted_probs, order = probs.topk(k, dim=-1)  # [B, k], most likely first
            cumulative = sorted_probs.cumsum(dim=-1)
            if k == probs.shape[-1] or bool((cumulative[:, -1] >= self.top_p).all()):
                break
            k = min(4 * k, probs.shape[-1])
        # keep a token while the tokens ranked above it hold less than top_p (the top token is always kept)
        n_kept = ((cumulative - sorted_probs) < self.top_p).sum(dim=-1, keepdim=True)  # [B, 1]
        kept_mass = cumulative.gather(-1, n_kept - 1)
        u = torch.rand(kept_mass.shape, generator=self.generator, device=scores.device) * kept_mass
        rank = torch.searchsorted(cumulative, u, right=True).clamp(max=n_kept - 1)  # first with cumulative > u
        token = order.gather(-1, rank)  # [B, 1]
        return torch.full_like(scores, float("-inf")).scatter_(-1, token, 0.0)
