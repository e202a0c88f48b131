"""The frozen reference's logits, kept for the process: twin of ``training.reference_logits``.

A frozen reference gives the same logits on a batch every time, so the KL update, each training of a beta sweep
and each of the sweep's measurements need them once between them. ``REFERENCE_LOGITS`` keeps them in memory for
one reference at a time, forgets them when any of its weights is replaced or written in place, and holds at most
``limit_bytes``: past that, the batch used longest ago goes first.
"""

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

    def clear(self) -> None:
        """Forget every kept batch (``lab7 run`` does once the KL stages are over)."""
        self._owner, self._fingerprint, self._kept = None, None, {}


REFERENCE_LOGITS = ReferenceLogits()
