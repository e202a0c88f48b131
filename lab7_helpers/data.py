"""Preference pairs: load and validate a JSONL file, split it, and turn pairs into token ids.

A pair is a dict ``{"prompt": str, "chosen": str, "rejected": str}``. The text a model sees is always
``format_prompt(prompt) + response``: one template for KL training, DPO (ours and TRL's) and generation.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

FIELDS = ("prompt", "chosen", "rejected")
IGNORE_INDEX = -100  # label value that losses skip (prompt and padding positions)


def _sample_data_dir() -> Path:
    """The bundled data: inside the package when installed from a wheel (Colab), ``data/`` in a checkout."""
    installed = Path(__file__).resolve().parent / "sample_data"
    return installed if installed.is_dir() else Path(__file__).resolve().parent.parent / "data"


SAMPLE_DATA_DIR = _sample_data_dir()
BUNDLED_PAIRS = SAMPLE_DATA_DIR / "dpo_pairs.jsonl"  # the team's sample preference set


class PairFileError(ValueError):
    """A preference file has bad lines. ``problems`` holds one ``"path:line: problem"`` string per bad line."""

    def __init__(self, path: str | Path, problems: list[str], hint: str = ""):
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        message = f"{self.path}: {len(problems)} problem(s) found:\n{lines}"
        if hint:
            message += f"\n{hint}"
        super().__init__(message)


class PairFileWarning(UserWarning):
    """Rows were left out of a preference file (ties, or bad lines with ``on_error="skip"``)."""


def _is_marked_tie(row: dict[str, Any]) -> bool:
    """Lab 6 files may record a tie explicitly: ``"tie": true`` or a label/preference/winner of ``"tie"``."""
    if row.get("tie") is True:
        return True
    return any(str(row.get(key, "")).strip().lower() == "tie" for key in ("label", "preference", "winner"))


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", bool: "true/false", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def _check_row(row: Any) -> str | None:
    """Return what is wrong with one parsed JSON value, or None if it is a usable pair."""
    if not isinstance(row, dict):
        return f'expected a JSON object with "prompt", "chosen" and "rejected", got {_type_name(row)}'
    for field in FIELDS:
        if field not in row:
            return f'missing field "{field}"'
        if not isinstance(row[field], str):
            return f'field "{field}" must be text, got {_type_name(row[field])}'
        if not row[field].strip():
            return f'field "{field}" is empty'
    return None


def load_pairs(path: str | Path, on_error: str = "raise") -> list[dict[str, str]]:
    """Read preference pairs from a JSONL file (one JSON object per line).

    Each row needs non-empty text fields ``prompt``, ``chosen`` and ``rejected``; other keys are ignored and the
    three texts are stripped of surrounding whitespace. Blank lines, a UTF-8 byte-order mark and Windows (CRLF)
    line endings are fine.

    Ties (chosen == rejected after stripping, or a row marked as a tie) carry no preference, so they are left out
    with a ``PairFileWarning`` that counts them.

    Args:
        path: the JSONL file.
        on_error: ``"raise"`` (default) raises ``PairFileError`` listing **every** bad line as
            ``path:line: problem``; ``"skip"`` leaves bad lines out with one warning that counts them.

    Returns:
        The usable pairs, in file order.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f'on_error must be "raise" or "skip", got {on_error!r}')
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. Check the path, or upload your pairs file first.")

    pairs, problems, ties = [], [], 0
    raw_lines = path.read_bytes().split(b"\n")
    for number, raw in enumerate(raw_lines, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            problems.append(f"{path}:{number}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at column "
                            f"{err.start + 1}); save the file as UTF-8")
            continue
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            problems.append(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})")
            continue
        problem = _check_row(row)
        if problem:
            problems.append(f"{path}:{number}: {problem}")
            continue
        pair = {field: row[field].strip() for field in FIELDS}
        if pair["chosen"] == pair["rejected"] or _is_marked_tie(row):
            ties += 1
            continue
        pairs.append(pair)

    if problems and on_error == "raise":
        raise PairFileError(path, problems, 'Fix these lines, or pass on_error="skip" to leave them out.')
    if problems:
        warnings.warn(f"{path}: skipped {len(problems)} bad line(s); first: {problems[0]}", PairFileWarning,
                      stacklevel=2)
    if ties:
        warnings.warn(f"{path}: left out {ties} tie(s): a tie says nothing about which response is better.",
                      PairFileWarning, stacklevel=2)
    if not pairs:
        reason = f"all {ties} row(s) are ties" if ties else "the file has no rows"
        raise PairFileError(path, [f"{path}: no usable pairs ({reason})"])
    return pairs


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
    when the prompt filled ``max_length`` and its mean loss became NaN.
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


def encode_pairs_shared_prompt(tokenizer, pairs: Sequence[dict], max_length: int = 256) -> dict[str, torch.Tensor]:
    """Encode each pair as ONE sequence ``[prompt, chosen, rejected]``: the prompt is run once, not twice.

    The rejected tokens may attend to the prompt and to themselves, never to the chosen tokens, and their
    positions restart where the prompt ends, so every response token sees exactly the context it has in
    ``encode_pairs_for_dpo``. (If truncation left the two prompts different, the row is ``[prompt, chosen,
    prompt', rejected]`` with the second half attending only to itself.) No padding between chosen and rejected.

    Returns ``input_ids``, ``position_ids`` ``[B, L]``, ``attention_mask`` ``[B, 1, L, L]`` (bool, True = may
    attend), and for the K scored tokens of each row: ``source`` ``[B, K]`` (the position whose output predicts
    the token), ``target`` ``[B, K]`` (the token), ``side`` ``[B, K]`` (0 chosen, 1 rejected, -1 padding).
    """
    rows = []
    for pair in pairs:
        chosen = encode_pair(tokenizer, pair["prompt"], pair["chosen"], max_length)
        rejected = encode_pair(tokenizer, pair["prompt"], pair["rejected"], max_length)
        n_c = chosen["labels"].count(IGNORE_INDEX)
        n_r = rejected["labels"].count(IGNORE_INDEX)
        prompt, c_resp = chosen["input_ids"][:n_c], chosen["input_ids"][n_c:]
        r_prompt, r_resp = rejected["input_ids"][:n_r], rejected["input_ids"][n_r:]
        shared = r_prompt == prompt
        ids = prompt + c_resp + ([] if shared else r_prompt) + r_resp
        positions = list(range(n_c + len(c_resp))) + list(range(n_r + len(r_resp)) if not shared else
                                                          range(n_c, n_c + len(r_resp)))
        r_start = n_c + len(c_resp)  # where the rejected part (its own prompt, if not shared) begins
        r_prompt_end = n_c - 1 if shared else r_start + n_r - 1  # the position that predicts rejected token 0
        source = [n_c - 1 + j for j in range(len(c_resp))]
        source += [r_prompt_end] + [r_start + (0 if shared else n_r) + j for j in range(len(r_resp) - 1)]
        rows.append({"ids": ids, "positions": positions, "r_start": r_start, "shared": shared, "n_c": n_c,
                     "source": source, "target": c_resp + r_resp, "side": [0] * len(c_resp) + [1] * len(r_resp)})

    width, k = max(len(r["ids"]) for r in rows), max(len(r["target"]) for r in rows)
    batch = len(rows)
    input_ids = torch.full((batch, width), tokenizer.pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    mask = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1, 1)  # padding attends to itself only
    source, target = torch.zeros((batch, k), dtype=torch.long), torch.zeros((batch, k), dtype=torch.long)
    side = torch.full((batch, k), -1, dtype=torch.long)
    causal = torch.tril(torch.ones(width, width, dtype=torch.bool))
    for b, row in enumerate(rows):
        n, r_start = len(row["ids"]), row["r_start"]
        input_ids[b, :n] = torch.tensor(row["ids"])
        position_ids[b, :n] = torch.tensor(row["positions"])
        allowed = causal[:n, :n].clone()
        allowed[r_start:, row["n_c"] if row["shared"] else 0:r_start] = False  # rejected never sees chosen
        mask[b, 0, :n, :n] = allowed
        m = len(row["target"])
        source[b, :m], target[b, :m], side[b, :m] = (torch.tensor(row[key]) for key in ("source", "target", "side"))
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask, "source": source,
            "target": target, "side": side}
