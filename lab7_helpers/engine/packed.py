"""Packed pair scoring: each pair's prompt runs once, ``[prompt, chosen, rejected]`` in one sequence, and the LM
head runs on the scored positions only. The same logits as ``scoring.response_logits``, to float32 rounding."""

from __future__ import annotations

from typing import Sequence

import torch

from ..data import IGNORE_INDEX, encode_pair
from ..losses import upcast


def response_logits(model, tokenizer, pairs: Sequence[dict], max_length: int = 256):
    """Twin of ``scoring.response_logits``: ``(logits [N, V], targets [N], side [B, K])``."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in encode_pairs_shared_prompt(tokenizer, pairs, max_length).items()}
    scored = batch["side"] >= 0
    return shared_prompt_logits(model, batch), batch["target"][scored], batch["side"]


def kl_logits_and_labels(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of ``training.kl_logits_and_labels``: the N positions of ``batch`` that predict a response token, as
    ONE sequence. Logits ``[1, N + 1, V]``: the N response rows, then a row of zeros; labels ``[1, N + 1]``: -100,
    then the N response tokens. A loss's shift by one lines them up (row j scores label j + 1), so a mean over
    the response tokens, the KL update's loss, is the one on ``[B, T, V]``. The prompt positions' logits are
    never built: V is 50k for GPT-2."""
    return as_one_sequence(response_rows(model, batch)), response_labels(batch)


def response_rows(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits ``[N, V]`` (float32) at the N positions of ``batch`` that predict a response token."""
    mask = batch["labels"][:, 1:] != IGNORE_INDEX  # [B, T - 1]
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    return upcast(model.get_output_embeddings()(hidden[:, :-1][mask]))


def as_one_sequence(rows: torch.Tensor) -> torch.Tensor:
    """``[N, V]`` rows -> ``[1, N + 1, V]``: a row of zeros appended, which the shift by one drops."""
    return torch.cat([rows, rows.new_zeros(1, rows.shape[-1])])[None]


def response_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[1, N + 1]``: -100, then the N response tokens of ``batch`` in row-major order."""
    targets = batch["labels"][:, 1:]
    targets = targets[targets != IGNORE_INDEX]
    return torch.cat([targets.new_full((1,), IGNORE_INDEX), targets])[None]


def shared_prompt_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits ``[N, V]`` (float32) at the N scored positions of ``encode_pairs_shared_prompt`` rows, one per entry
    of ``batch["side"] >= 0`` in row-major order; the LM head runs on those positions only (on CPU through oneDNN,
    as in ``response_logits``)."""
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                  position_ids=batch["position_ids"]).last_hidden_state  # [B, L, H]
    states = hidden.gather(1, batch["source"].unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))  # [B, K, H]
    return upcast(model.get_output_embeddings()(states[batch["side"] >= 0]))


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
