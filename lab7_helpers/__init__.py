"""Helpers for Lab 7: KL-regularized fine-tuning and DPO on GPT-2.

The teaching core, read top to bottom: ``data`` (pairs to token ids), ``losses`` (the maths), ``scoring``
(log-probs of responses under a model), ``data_card`` (what a pairs file would reward), ``models`` (loading,
freezing, copying), ``generation``, ``metrics``, ``training`` (the two update loops), ``trl_dpo`` (the same DPO
through TRL), ``evaluation`` and ``checks`` (the notebook's self-checks).

Beside it, and not needed to follow the lab: ``sources/`` reads pairs files and fetches the offline model;
``engine/`` makes the CPU path faster (same numbers, to float32 rounding); ``app/`` is the ``lab7 run`` command
(report, plots); ``grading/`` is ``lab7 grade``. Importing this package changes nothing in the process.
"""

from .app.plots import plot_beta_sweep, plot_dpo_history, plot_kl_history, plot_metrics
from .checks import (CheckResult, check_dpo_dataset, check_dpo_loss, check_kl_loss, check_refusal_phrases,
                     check_sequence_logprobs)
from .data import IGNORE_INDEX, encode_pair, encode_pairs_for_dpo, format_prompt, pad_batch, split_pairs
from .data_card import data_card
from .evaluation import (evaluate_models, few_pairs_note, metric_descriptions, nll_and_kl, sample_held_out_pairs,
                         with_intervals)
from .generation import generate
from .grading.submissions import export_answers
from .losses import dpo_loss, kl_regularized_loss, sequence_logprobs, token_kl, token_logprobs
from .metrics import (distinct_n, preference_accuracy, refusal_flag, repetition_score, reward_accuracy,
                      trigram_repetition)
from .models import SMOLLM2, TINY_GPT2, describe_runtime, freeze, load_model, trainable_copy
from .sources.pair_files import BUNDLED_PAIRS, SAMPLE_DATA_DIR, PairFileError, PairFileWarning, load_pairs
from .training import kl_beta_sweep, train_dpo, train_kl
from .trl_dpo import dpo_dataset, train_dpo_trl

__all__ = [
    "plot_beta_sweep", "plot_dpo_history", "plot_kl_history", "plot_metrics", "CheckResult", "check_dpo_dataset",
    "check_dpo_loss", "check_kl_loss", "check_refusal_phrases", "check_sequence_logprobs", "IGNORE_INDEX",
    "encode_pair", "encode_pairs_for_dpo", "format_prompt", "pad_batch", "split_pairs", "data_card",
    "evaluate_models", "few_pairs_note", "metric_descriptions", "nll_and_kl", "sample_held_out_pairs",
    "with_intervals", "generate", "export_answers", "dpo_loss", "kl_regularized_loss",
    "sequence_logprobs", "token_kl", "token_logprobs", "distinct_n", "preference_accuracy", "refusal_flag",
    "repetition_score", "reward_accuracy", "trigram_repetition", "SMOLLM2", "TINY_GPT2", "describe_runtime", "freeze", "load_model",
    "trainable_copy", "BUNDLED_PAIRS", "SAMPLE_DATA_DIR", "PairFileError", "PairFileWarning", "load_pairs",
    "kl_beta_sweep", "train_dpo", "train_kl", "dpo_dataset", "train_dpo_trl",
]
