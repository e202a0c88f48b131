"""Preference pairs ``{"prompt": str, "chosen": str, "rejected": str}``: split them and turn them into token ids.

A model always sees ``format_prompt(prompt) + response``: in KL training, DPO (ours and TRL's) and generation.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch

from .sources.pair_shapes import FIELDS  # ("prompt", "chosen", "rejected"), as the file readers return them
IGNORE_INDEX = -100  # label value that losses skip (prompt and padding positions)


def split_pairs(pairs: Sequence[dict], test_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train, test)``, deterministic for ``seed``; neither side is ever empty.

    Pairs that share a prompt stay on one side, so held-out prompts are unseen (when every pair has the same
    prompt, identical pairs stay together instead).
    """
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 pairs to make a train and a test split, got {len(pairs)}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    groups: dict[Any, list[dict]] = {}
    for pair in pairs:
        groups.setdefault(pair["prompt"], []).append(pair)
    if len(groups) < 2:
        groups = {}
        for pair in pairs:
            groups.setdefault(tuple(pair[f] for f in FIELDS), []).append(pair)
    if len(groups) < 2:
        raise ValueError("all pairs are identical copies of one pair: there is nothing to hold out")
    keys = list(groups)
    random.Random(seed).shuffle(keys)
    target = min(max(1, round(test_fraction * len(pairs))), len(pairs) - 1)
    n_test = taken = 0  # the first n_test groups go to test; the last group always goes to train
    while n_test < len(keys) - 1 and taken < target:
        taken += len(groups[keys[n_test]])
        n_test += 1
    return [p for k in keys[n_test:] for p in groups[k]], [p for k in keys[:n_test] for p in groups[k]]


def format_prompt(prompt: str) -> str:
    """The lab's one prompt template. It ends in a newline so that, for GPT-2-style tokenizers, the response
    starts on a token boundary: the tokenized prompt is a prefix of the tokenized prompt + response (as TRL
    expects)."""
    return f"Question: {prompt.strip()}\nAnswer:\n"


def encode_pair(tokenizer, prompt: str, response: str, max_length: int = 256) -> dict[str, list[int]]:
    """Tokenize ``format_prompt(prompt) + response`` + EOS (as TRL does) into lists ``input_ids``,
    ``attention_mask`` and ``labels`` of one length ``<= max_length``; ``labels`` is -100 on the prompt.

    Too long: the **prompt is cut from the left**, so that its end ("Answer:") stays next to the response, and the
    response from the right only beyond ``max_length // 2``: it always keeps a token (the original lab cut it
    to nothing, and its mean loss became NaN). The caller caps ``max_length`` at the model's context.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (one prompt and one response token), got {max_length}")
    prompt_text = format_prompt(prompt)
    prompt_ids = tokenizer(prompt_text)["input_ids"]
    full_ids = tokenizer(prompt_text + response)["input_ids"] + [tokenizer.eos_token_id]
    prompt_len = 0  # the response starts where the two tokenizations diverge (TRL's rule)
    for a, b in zip(prompt_ids, full_ids):
        if a != b:
            break
        prompt_len += 1
    prompt_part, response_part = full_ids[:prompt_len], full_ids[prompt_len:]
    if not response_part:
        raise ValueError(f"the response {response[:40]!r} produced no tokens")
    if len(prompt_part) + len(response_part) > max_length:
        prompt_budget = min(len(prompt_part), max(max_length - len(response_part), max_length // 2))
        prompt_part = prompt_part[len(prompt_part) - prompt_budget:]
        response_part = response_part[: max_length - prompt_budget]
    input_ids = prompt_part + response_part
    labels = [IGNORE_INDEX] * len(prompt_part) + response_part
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def pad_batch(examples: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad encoded examples into ``[B, T]`` tensors ``input_ids``, ``attention_mask``, ``labels``.

    Padding is -100 in ``labels``, so it never counts in a loss, even when the pad token is EOS.
    """
    width = max(len(e["input_ids"]) for e in examples)

    def padded(key: str, fill: int) -> torch.Tensor:
        return torch.tensor([e[key] + [fill] * (width - len(e[key])) for e in examples], dtype=torch.long)

    return {"input_ids": padded("input_ids", pad_token_id), "attention_mask": padded("attention_mask", 0),
            "labels": padded("labels", IGNORE_INDEX)}


def encode_pairs_for_dpo(tokenizer, pairs: Sequence[dict], max_length: int = 256) -> dict[str, torch.Tensor]:
    """One DPO forward pass's ``pad_batch`` tensors, each ``[2B, T]``: rows ``:B`` chosen, rows ``B:`` rejected."""
    chosen = [encode_pair(tokenizer, p["prompt"], p["chosen"], max_length) for p in pairs]
    rejected = [encode_pair(tokenizer, p["prompt"], p["rejected"], max_length) for p in pairs]
    return pad_batch(chosen + rejected, tokenizer.pad_token_id)
