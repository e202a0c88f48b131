"""Helpers for Lab 7: KL-regularized fine-tuning and DPO on GPT-2.

Read top to bottom: ``data`` (pairs in, token ids out), ``losses`` (the maths), ``scoring`` (log-probs of
responses under a model), ``generation``, ``metrics``, ``models`` (loading, freezing, copying).
"""

from .data import (FIELDS, IGNORE_INDEX, PairFileError, PairFileWarning, encode_pair, encode_pairs_for_dpo,
                   format_prompt, load_pairs, pad_batch, split_pairs)
from .generation import generate
from .losses import dpo_loss, kl_regularized_loss, sequence_logprobs, token_kl, token_logprobs
from .metrics import (DEFAULT_REFUSAL_PHRASES, distinct_n, implicit_reward_margins, preference_accuracy,
                      refusal_flag, repetition_score, reward_accuracy)
from .models import OFFLINE_MODELS, SMOLLM2, TINY_GPT2, freeze, load_model, trainable_copy
from .scoring import pair_logprobs, response_logprobs

__all__ = [
    "FIELDS", "IGNORE_INDEX", "PairFileError", "PairFileWarning", "encode_pair", "encode_pairs_for_dpo",
    "format_prompt", "load_pairs", "pad_batch", "split_pairs", "generate", "dpo_loss", "kl_regularized_loss",
    "sequence_logprobs", "token_kl", "token_logprobs", "DEFAULT_REFUSAL_PHRASES", "distinct_n",
    "implicit_reward_margins", "preference_accuracy", "refusal_flag", "repetition_score", "reward_accuracy",
    "OFFLINE_MODELS", "SMOLLM2", "TINY_GPT2", "freeze", "load_model", "trainable_copy", "pair_logprobs",
    "response_logprobs",
]
