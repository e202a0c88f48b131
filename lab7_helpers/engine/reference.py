"""The frozen reference's logits, kept for the process (twin of ``scoring.reference_logits``): the KL update, a
beta sweep's trainings and its measurements compute them once between them. ``REFERENCE_LOGITS`` holds one
reference's at a time, forgets them when any of its weights is replaced or written in place, and keeps at most
``limit_bytes`` (past that, the batch used longest ago goes first)."""

from __future__ import annotations

import weakref
from typing import Callable

import torch

from ..losses import upcast


class ReferenceLogits:
    def __init__(self, limit_bytes: int = 1 << 30):
        self.limit_bytes = limit_bytes
        self.computed = 0  # batches computed so far (tests count them)
        self._owner, self._fingerprint, self._kept = None, None, {}  # batch key -> logits, oldest first

    def __call__(self, ref: torch.nn.Module, batches: list[dict], amp) -> Callable[[int], torch.Tensor]:
        """``at(i)``: the logits ``[B, T, V]`` of ``ref`` on ``batches[i]`` (under ``amp``, without gradient)."""
        fingerprint = tuple((p.data_ptr(), p._version) for p in ref.parameters())
        if self._owner is None or self._owner() is not ref or self._fingerprint != fingerprint:
            self.clear()
            self._owner, self._fingerprint = weakref.ref(ref), fingerprint

        def at(i: int) -> torch.Tensor:
            batch = batches[i]
            key = b"|".join(str(tuple(batch[k].shape)).encode() + batch[k].cpu().numpy().tobytes()
                            for k in ("input_ids", "attention_mask"))  # all the logits depend on
            if key not in self._kept:  # computed as a plain tensor, also inside inference mode: training reads it
                with torch.inference_mode(False), torch.no_grad(), amp():
                    self._kept[key] = upcast(ref(input_ids=batch["input_ids"],
                                                 attention_mask=batch["attention_mask"]).logits)
                self.computed += 1
            self._kept[key] = logits = self._kept.pop(key)  # now the newest
            while len(self._kept) > 1 and sum(t.numel() * t.element_size() for t in self._kept.values()) \
                    > self.limit_bytes:
                del self._kept[next(iter(self._kept))]
            return logits

        return at

    def clear(self) -> None:  # lab7 run: once the KL stages are over
        self._owner, self._fingerprint, self._kept = None, None, {}


REFERENCE_LOGITS = ReferenceLogits()
