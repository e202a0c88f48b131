"""Preference pairs: split them, and turn them into token ids (``load_pairs`` reads them from a file).

A pair is a dict ``{"prompt": str, "chosen": str, "rejected": str}``. The text a model sees is always
``format_prompt(prompt) + response``: one template for KL training, DPO (ours and TRL's) and generation.
"""

from __future__ import annotations

import random
from typing import Any, Sequence

import torch

FIELDS = ("prompt", "chosen", "rejected")
IGNORE_INDEX = -100  # label value that losses skip (prompt and padding positions)


def split_pairs(pairs: Sequence[dict], test_fraction: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split pairs into (train, test), deterministically for a given seed.

    Pairs that share a prompt stay on the same side, so held-out prompts are really unseen (when every pair has
    the same prompt, identical pairs are kept together instead). Neither side is ever empty.
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
    test_keys: list = []
    taken = 0
    for key in keys[:-1]:  # the last group always goes to train, so train is never empty
        if taken >= target:
            break
        test_keys.append(key)
        taken += len(groups[key])
    chosen_for_test = set(test_keys)
    train = [p for k in keys if k not in chosen_for_test for p in groups[k]]
    test = [p for k in test_keys for p in groups[k]]
    return train, test


def format_prompt(prompt: str) -> str:
    """The one prompt template of the lab. A model always sees ``format_prompt(prompt) + response``.

    It ends in a newline so that the response starts on a token boundary for GPT-2-style tokenizers: the
    tokenized prompt is then a prefix of the tokenized prompt + response, as TRL expects.
    """
    return f"Question: {prompt.strip()}\nAnswer:\n"


def encode_pair(tokenizer, prompt: str, response: str, max_length: int = 256) -> dict[str, list[int]]:
    """Tokenize ``format_prompt(prompt) + response`` and append EOS, as TRL does for plain-text data.

    Returns lists ``input_ids``, ``attention_mask`` and ``labels`` of the same length ``<= max_length``.
    ``labels`` equals ``input_ids`` on response tokens (EOS included) and is -100 on prompt tokens.

    If the sequence is too long, the **prompt is cut from the left** (its end, "Answer:", stays next to the
    response) and the response is cut from the right only when it alone is longer than ``max_length // 2``.
    The response therefore always keeps at least one token: the original lab sliced the response to nothing
    when the prompt filled ``max_length`` and its mean loss became NaN. ``max_length`` must fit the model's
    context (``models.context_length``): the caller, which knows the model, caps it (``lab7 run`` does).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2 (one prompt and one response token), got {max_length}")
    prompt_text = format_prompt(prompt)
    prompt_ids = tokenizer(prompt_text)["input_ids"]
    full_ids = tokenizer(prompt_text + response)["input_ids"] + [tokenizer.eos_token_id]
    # The response starts where the two tokenizations diverge (TRL's rule; equal to len(prompt_ids) when the
    # template ends on a token boundary).
    prompt_len = 0
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
    """Right-pad encoded examples into tensors ``input_ids``, ``attention_mask``, ``labels``, each ``[B, T]``.

    Padding gets ``pad_token_id`` in ``input_ids``, 0 in ``attention_mask`` and -100 in ``labels``, so padding
    never counts in a loss even when the pad token is the EOS token.
    """
    width = max(len(e["input_ids"]) for e in examples)

    def padded(key: str, fill: int) -> torch.Tensor:
        return torch.tensor([e[key] + [fill] * (width - len(e[key])) for e in examples], dtype=torch.long)

    return {"input_ids": padded("input_ids", pad_token_id), "attention_mask": padded("attention_mask", 0),
            "labels": padded("labels", IGNORE_INDEX)}


def encode_pairs_for_dpo(tokenizer, pairs: Sequence[dict], max_length: int = 256) -> dict[str, torch.Tensor]:
    """Encode pairs for one DPO forward pass: the B chosen sequences, then the B rejected ones.

    Returns the ``pad_batch`` tensors, each ``[2B, T]``; rows ``:B`` are chosen, rows ``B:`` rejected.
    """
    chosen = [encode_pair(tokenizer, p["prompt"], p["chosen"], max_length) for p in pairs]
    rejected = [encode_pair(tokenizer, p["prompt"], p["rejected"], max_length) for p in pairs]
    return pad_batch(chosen + rejected, tokenizer.pad_token_id)
