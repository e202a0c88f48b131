"""DPO through TRL's ``DPOTrainer`` (TRL >= 0.29), with the lab's prompt template and settings."""

from __future__ import annotations

import tempfile
from typing import Sequence

import pandas as pd
import torch

from .. import engine
from ..data import format_prompt
from ..models import mixed_precision_dtype, remove_forward_patch
from ..training import history_frame

MIN_TRL = (0, 29)
HISTORY_COLUMNS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"]


def precision_flags(device: torch.device | str) -> dict[str, bool]:
    """The ``bf16``/``fp16`` flags of TRL's ``DPOConfig`` (a Trainer config) for the precision the lab's own loops
    use on ``device`` (neither on CPU)."""
    dtype = mixed_precision_dtype(device)
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}


def dpo_dataset(pairs: Sequence[dict]):
    """A ``datasets.Dataset`` with TRL's columns, the prompt already wrapped in ``format_prompt``."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": format_prompt(p["prompt"]), "chosen": p["chosen"],
                               "rejected": p["rejected"]} for p in pairs])


def make_dpo_trainer(policy, ref, tokenizer, pairs: Sequence[dict], beta: float = 0.1, lr: float = 5e-6,
                     epochs: int = 1, batch_size: int = 1, seed: int = 0, max_length: int = 256,
                     output_dir: str | None = None, **config_overrides):
    """A fresh ``DPOConfig`` and ``DPOTrainer`` for ``policy`` against the frozen ``ref``, on ``dpo_dataset(pairs)``.

    Only the lab's settings are passed, and the precision for the device (TRL's default bf16 fails on most
    CPUs); the rest stays at TRL's defaults. A new config per trainer: a shared one can fail with
    "AcceleratorState has already been initialized".
    """
    import trl
    from transformers.trainer_callback import ProgressCallback

    if tuple(int(part) for part in trl.__version__.split(".")[:2]) < MIN_TRL:
        raise RuntimeError(f"TRL {trl.__version__} is too old for this lab (it needs 0.29 or newer). "
                           "Run: pip install 'trl>=0.29,<2' and restart the runtime.")

    class QuietProgress(ProgressCallback):
        """TRL's progress bar without a printed dict of metrics at every logging step."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    device = next(policy.parameters()).device
    config = trl.DPOConfig(
        output_dir=output_dir or tempfile.mkdtemp(prefix="lab7_trl_"), beta=beta, learning_rate=lr,
        num_train_epochs=epochs, per_device_train_batch_size=batch_size, max_length=max_length, seed=seed,
        logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=False,
        use_cpu=device.type == "cpu", **precision_flags(device), **config_overrides)
    trainer = trl.DPOTrainer(model=policy, ref_model=ref, args=config, processing_class=tokenizer,
                             train_dataset=dpo_dataset(pairs))
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(QuietProgress)
    return trainer


def train_dpo_trl(policy, ref, tokenizer, pairs: Sequence[dict], beta: float = 0.1, lr: float = 5e-6,
                  epochs: int = 1, batch_size: int = 1, seed: int = 0, max_length: int = 256,
                  loss_type: str = "sigmoid") -> pd.DataFrame:
    """Train ``policy`` in place with TRL's ``DPOTrainer``; ``train_dpo``'s arguments.

    Returns a row per optimizer step: ``loss`` and TRL's ``rewards/*`` (with transformers 4.x the Trainer rounds
    the logged ``loss`` to 4 decimals).
    """
    with tempfile.TemporaryDirectory(prefix="lab7_trl_") as output_dir:  # TRL wants a folder; leave nothing behind
        trainer = make_dpo_trainer(policy, ref, tokenizer, pairs, beta, lr, epochs, batch_size, seed, max_length,
                                   output_dir=output_dir, loss_type=loss_type)
        try:
            with engine.reuse_freed_memory():  # the lab's CPU memory setting, so that only the loops differ
                trainer.train()
        finally:  # TRL patches both models' forward; the lab goes on using them (and copying the reference)
            remove_forward_patch(policy)
            remove_forward_patch(ref)
    return trl_history(trainer)


def trl_history(trainer) -> pd.DataFrame:
    """What a trained ``DPOTrainer`` logged, one row per optimizer step: ``loss`` and TRL's ``rewards/*`` columns,
    as in ``train_dpo``'s history."""
    return history_frame([{k: log[k] for k in HISTORY_COLUMNS}
                          for log in trainer.state.log_history if "rewards/margins" in log])
