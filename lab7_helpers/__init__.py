"""Helpers for Lab 7: KL-regularized fine-tuning and DPO on GPT-2.

Read top to bottom: ``data`` (pairs in, token ids out), ``losses`` (the maths), ``scoring`` (log-probs of
responses under a model), ``generation``, ``metrics``, ``models`` (loading, freezing, copying), ``training``
(the two update loops), ``trl_dpo`` (the same DPO through TRL), ``evaluation``, ``plots`` and ``checks``
(the notebook's self-checks). ``run`` and ``cli`` are the ``lab7 run`` command; ``onednn`` and ``cpu_memory``
make the CPU path faster (same results, to float32 rounding).
"""

from .checks import (CheckResult, check_dpo_dataset, check_dpo_loss, check_kl_loss, check_refusal_phrases,
                     check_sequence_logprobs)
from .data import (BUNDLED_PAIRS, FIELDS, IGNORE_INDEX, SAMPLE_DATA_DIR, PairFileError, PairFileWarning,
                   encode_pair, encode_pairs_for_dpo, format_prompt, load_pairs, pad_batch, split_pairs)
from .evaluation import (METRIC_DESCRIPTIONS, evaluate_models, metric_descriptions,
                         response_nll_and_kl)
from .generation import generate
from .losses import dpo_loss, kl_regularized_loss, sequence_logprobs, token_kl, token_logprobs
from .metrics import (DEFAULT_REFUSAL_PHRASES, distinct_n, implicit_reward_margins, preference_accuracy,
                      refusal_flag, repetition_score, reward_accuracy)
from .models import (OFFLINE_MODELS, SMOLLM2, TINY_GPT2, describe_runtime, freeze, load_model,
                     mixed_precision_dtype, trainable_copy)
from .plots import plot_beta_sweep, plot_dpo_history, plot_kl_history, plot_metrics
from .scoring import pair_logprobs, response_logprobs
from .submissions import export_answers
from .training import kl_beta_sweep, train_dpo, train_kl
from .trl_dpo import dpo_dataset, train_dpo_trl

__all__ = [
    "CheckResult", "check_dpo_dataset", "check_dpo_loss", "check_kl_loss", "check_refusal_phrases",
    "check_sequence_logprobs", "BUNDLED_PAIRS", "FIELDS", "IGNORE_INDEX", "SAMPLE_DATA_DIR", "PairFileError",
    "PairFileWarning", "encode_pair", "encode_pairs_for_dpo", "format_prompt", "load_pairs", "pad_batch",
    "split_pairs", "METRIC_DESCRIPTIONS", "evaluate_models", "metric_descriptions", "response_nll_and_kl",
    "generate", "dpo_loss", "kl_regularized_loss", "sequence_logprobs", "token_kl", "token_logprobs",
    "DEFAULT_REFUSAL_PHRASES", "distinct_n", "implicit_reward_margins", "preference_accuracy", "refusal_flag",
    "repetition_score", "reward_accuracy", "OFFLINE_MODELS", "SMOLLM2", "TINY_GPT2", "describe_runtime", "freeze",
    "load_model", "mixed_precision_dtype", "trainable_copy", "plot_beta_sweep", "plot_dpo_history",
    "plot_kl_history", "plot_metrics", "pair_logprobs", "response_logprobs", "kl_beta_sweep", "train_dpo",
    "train_kl", "dpo_dataset", "train_dpo_trl", "export_answers",
]
