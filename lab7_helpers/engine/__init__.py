"""The CPU speed engine. Same numbers as the teaching core to float32 rounding; you need not read this.

The core's loops enter it through one door, ``session``, and call the steps it hands back::

    with engine.session(policy, ref, training=True) as fast:
        logits, labels = fast.kl_logits_and_labels(policy, batch)  # as training.kl_logits_and_labels
        fast.step(loss, optimizer, scaler)           # as training.optimizer_step

Where the engine does not apply (a GPU, half precision, ``LAB7_ENGINE=0``), those steps are the core's own
functions and the session changes nothing. On a float32 CPU it uses:
- ``onednn``: the linear layers through oneDNN (faster than MKL at these shapes), and pre-packed weights for
  decoding;
- ``packed``: each pair's prompt runs once (``[prompt, chosen, rejected]`` in one sequence), and the LM head
  runs on the positions that predict a response token only; the KL update's loss gets those rows only;
- ``step``: fused AdamW applies the gradient clipping, and a tied embedding adds its gradient in place;
- ``memory``: freed memory is reused while training instead of being faulted back in at every step;
- ``disk``: the reference's logits for the KL update are computed up front and kept on disk
  (``fast.reference_logits``), once per batch for the whole process (a beta sweep's trainings and measurements
  share them), and a model that a stage does not use waits on disk (``fast.unused(model)``).
``tests/test_engine.py`` checks each step against the core's.
"""

from __future__ import annotations

import functools
import os
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Callable, Iterator

import torch


@dataclass(frozen=True)
class Steps:
    """The steps a loop calls inside a session: the engine's twins, or the core's own functions."""
    kl_logits_and_labels: Callable  # (model, batch) -> (logits, labels); as training.kl_logits_and_labels
    response_logits: Callable  # (model, tokenizer, pairs, max_length) -> (logits, targets, side); as scoring's
    step: Callable  # (loss, optimizer, scaler) -> None; as training.optimizer_step
    reference_logits: Callable  # (ref, step_batches, amp) -> at(i); as training.reference_logits
    unused: Callable  # (model) -> context manager: the model is not used inside it


def switched_off() -> bool:
    """``LAB7_ENGINE=0`` turns the engine off: every session then hands out the core's steps and does nothing."""
    return os.environ.get("LAB7_ENGINE", "1") == "0"


def applies(*models: torch.nn.Module) -> bool:
    """Whether the engine speeds up work on ``models``: float32 on a CPU, unless switched off."""
    params = [next(m.parameters()) for m in models]
    return not switched_off() and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in params)


def core_steps() -> Steps:
    """The teaching core's plain functions, as a session hands them out where the engine does not apply."""
    from ..scoring import response_logits
    from ..training import kl_logits_and_labels, optimizer_step, reference_logits

    return Steps(kl_logits_and_labels, response_logits, optimizer_step, reference_logits, lambda model: nullcontext())


@contextmanager
def session(*models: torch.nn.Module, training: bool = False, decode_rows: int = 0) -> Iterator[Steps]:
    """Run a stage on ``models`` with the CPU speed-ups; yields the ``Steps`` to call.

    ``training``: a loop that trains (memory reuse; the tied embedding's gradient in place for every model with
    trainable weights). ``decode_rows``: a generation loop with that many rows per batch (pre-packed weights;
    the weights must not change inside). Sessions may nest.
    """
    if not models or not applies(*models):
        with _memory(training and not models and not switched_off()):
            yield core_steps()
        return
    from . import disk, onednn, packed, step

    # oneDNN keeps a compiled kernel per matrix shape, up to 1024 by default; training meets a new shape at every
    # sequence length, and the kept kernels grow memory (README.md, Performance). oneDNN reads this when first used.
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
    with ExitStack() as stack:
        stack.enter_context(_memory(training))
        for model in dict.fromkeys(models):  # each model once, even when passed twice
            if decode_rows:
                stack.enter_context(onednn.prepacked_weights(model, decode_rows))
            else:
                stack.enter_context(onednn.onednn_linears(model))
            if training and any(p.requires_grad for p in model.parameters()):
                stack.enter_context(step.tied_embedding_gradient_in_place(model))
        yield Steps(packed.kl_logits_and_labels, packed.response_logits, step.step,
                    functools.partial(disk.reference_logits_on_disk, stack, models, park=training),
                    lambda model: disk.unused_unless_shared(model, models))


def _memory(training: bool):
    from .memory import reuse_freed_memory

    return reuse_freed_memory() if training else nullcontext()
