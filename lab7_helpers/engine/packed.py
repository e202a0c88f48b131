"""Packed pair scoring: each pair's prompt runs once, ``[prompt, chosen, rejected]`` in one sequence, and the LM
head runs on the scored positions only. Twin of ``scoring.response_logits``: the same logits, to float32 rounding."""

from __future__ import annotations

from typing import Sequence

import torch

from ..data import IGNORE_INDEX, encode_pair
from ..losses import upcast


def response_logits(model, tokenizer, pairs: Sequence[dict], max_length: int = 256):
    """``(logits [N, V], targets [N], side [B, K])``, as ``scoring.response_logits``."""
    batch = encode_pairs_shared_prompt(tokenizer, pairs, max_length)
    pair, slot = (batch["side"] >= 0).nonzero(as_tuple=True)  # the N scored tokens, row-major
    hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              position_ids=batch["position_ids"]).last_hidden_state  # [B, L, H]
    states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, pair * hidden.shape[1] + batch["source"][pair, slot])
    return upcast(model.get_output_embeddings()(states)), batch["target"][pair, slot], batch["side"]


def encode_pairs_shared_prompt(tokenizer, pairs: Sequence[dict], max_length: int = 256) -> dict[str, torch.Tensor]:
    """Each pair as ONE sequence ``[prompt, chosen, rejected]``: the rejected tokens attend to the prompt and to
    themselves, never to the chosen ones, and their positions restart where the prompt ends, so every response
    token sees the context it has in ``encode_pairs_for_dpo`` (prompts cut differently by truncation: ``[prompt,
    chosen, prompt', rejected]``, the second half seeing only itself). ``input_ids``, ``position_ids`` ``[B, L]``,
    ``attention_mask`` ``[B, 1, L, L]`` (True = may attend), and per scored token ``source`` ``[B, K]`` (the
    position that predicts it), ``target`` (the token) and ``side`` (0 chosen, 1 rejected, -1 padding)."""
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
