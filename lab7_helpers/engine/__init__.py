"""The CPU speed engine, below the core: a loop hands ``session`` its plain steps (``Steps``) and calls what comes
back, the plain steps themselves off a float32 CPU (a GPU, half precision, ``LAB7_ENGINE=0``), else their twins:
oneDNN linear layers (``onednn``); each pair's prompt run once, the LM head on scored positions only (``packed``);
a frozen reference's transformer run once per batch (``reference``); clipping folded into fused AdamW, a tied
embedding's gradient in place (``step``), freed memory kept (``memory``); unused weights parked on disk. The numbers are the core's to float32 rounding (``tests/test_engine.py``), and a
student's function gets what the core gives it.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import torch

from .memory import reuse_freed_memory


@dataclass(frozen=True)
class Steps:
    """The steps a loop calls: the core's plain functions, or the engine's twins of them (None: not used)."""

    response_logits: Callable | None = None  # (model, tokenizer, pairs, max_length) -> (logits, targets, side)
    reference_logits: Callable | None = None  # (ref, batches, amp) -> at(i), the logits [B, T, V] on batches[i]
    optimizer_step: Callable | None = None  # (loss, optimizer, scaler, max_norm) -> None
    unused: Callable = lambda model: nullcontext()  # (model) -> a context without it (passed twice: kept)


def applies(*models: torch.nn.Module) -> bool:
    """Float32 on a CPU, unless ``LAB7_ENGINE=0``."""
    params = [next(m.parameters()) for m in models]
    return os.environ.get("LAB7_ENGINE", "1") != "0" and all(
        p.device.type == "cpu" and p.dtype == torch.float32 for p in params)


@contextmanager
def session(*models: torch.nn.Module, plain: Steps = Steps(), training: bool = False,
            decode_rows: int = 0) -> Iterator[Steps]:
    """Yields the ``Steps`` to call on ``models``: the twins of ``plain``'s steps, or ``plain`` itself.
    ``training``: a loop that trains; ``decode_rows``: a generation loop with that many rows per batch (the
    weights must not change inside). Sessions may nest."""
    if not applies(*models):
        yield plain
        return
    from . import onednn, packed, reference, step

    # oneDNN keeps a compiled kernel per matrix shape (1024 by default): training meets a new shape at every
    # sequence length, and the kept kernels grow memory. oneDNN reads this when first used.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
    with ExitStack() as stack:
        if training:
            stack.enter_context(reuse_freed_memory())
        for model in dict.fromkeys(models):  # each model once, even when passed twice
            if decode_rows:
                stack.enter_context(onednn.prepacked_weights(model, decode_rows))
            else:
                stack.enter_context(onednn.onednn_linears(model))
            if training and any(p.requires_grad for p in model.parameters()):
                stack.enter_context(step.tied_embedding_gradient_in_place(model))
        yield Steps(response_logits=plain.response_logits and packed.response_logits,
                    reference_logits=plain.reference_logits and partial(reference.reference_logits,
                                                                         plain=plain.reference_logits),
                    optimizer_step=plain.optimizer_step and step.optimizer_step,
                    unused=lambda model: nullcontext() if models.count(model) > 1 else weights_on_disk(model))


@contextmanager
def weights_on_disk(model: torch.nn.Module) -> Iterator[None]:
    """``model``'s parameters in a temporary file while the block runs, back exactly after: their memory is free
    meanwhile (the reference while DPO trains on its log-probs computed up front)."""
    params = dict(model.named_parameters())  # each tied parameter once
    with tempfile.TemporaryDirectory(prefix="lab7_weights_") as folder:
        path = Path(folder) / "weights.pt"
        torch.save({name: p.detach() for name, p in params.items()}, path)
        for p in params.values():
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        try:
            yield
        finally:
            saved = torch.load(path, weights_only=True, mmap=True)  # read back when next used (the file may go)
            for name, p in params.items():
                p.data = saved[name]
