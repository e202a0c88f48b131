"""The frozen reference's logits, its transformer run once per batch for the process. Twin of
``scoring.reference_logits``: the same logits, bit for bit.

A beta sweep trains every beta on the batches the KL update trained on, so the reference's logits repeat. Kept are
the last hidden states ``[B, T, H]`` (H numbers a position where the logits hold V: 576 against 49,152 for
SmolLM2); the LM head makes the logits from them each time. Only a frozen reference is kept (no parameter
requires grad: a fused optimizer writes weights without the version count this relies on), and one whose weights
are replaced or written in place is run again.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch

from ..losses import upcast

MAX_BATCHES = 256  # batches kept per reference, the oldest dropped first (at T = 256 and H = 576: 150 MB)
_STATES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # reference -> {key: hidden [B, T, H]}


def reference_logits(ref: torch.nn.Module, batches: list[dict[str, torch.Tensor]], amp,
                     plain: Callable) -> Callable[[int], torch.Tensor]:
    """``at(i)``: ``ref``'s logits ``[B, T, V]`` on ``batches[i]``, without a graph; ``plain(ref, batches, amp)``
    (the core's) for a reference that can train."""
    if any(p.requires_grad for p in ref.parameters()):
        return plain(ref, batches, amp)
    kept = _STATES.setdefault(ref, {})

    @torch.no_grad()
    def at(i: int) -> torch.Tensor:
        batch = batches[i]
        key = (tuple((p.data_ptr(), p._version) for p in ref.parameters()),  # other weights: another key
               *(tuple(batch[k].shape) + (batch[k].cpu().numpy().tobytes(),) for k in ("input_ids", "attention_mask")))
        with amp():
            if key not in kept:
                kept[key] = ref.base_model(input_ids=batch["input_ids"],
                                           attention_mask=batch["attention_mask"]).last_hidden_state
                while len(kept) > MAX_BATCHES:
                    del kept[next(iter(kept))]
            return upcast(ref.get_output_embeddings()(kept[key]))

    return at
