"""Compare models on held-out pairs: one row of metrics per model, plus side-by-side generations."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import encode_pair, pad_batch
from .generation import generate
from .losses import kl_regularized_loss
from .metrics import (DEFAULT_REFUSAL_PHRASES, distinct_n, implicit_reward_margins, refusal_flag,
                      repetition_score)
from .scoring import pair_logprobs

METRIC_DESCRIPTIONS = {
    "len_words": "mean length of a generated response, in words",
    "repetition": "share of repeated word trigrams in a response (0 = none)",
    "distinct_1": "unique words / all words, over all responses",
    "distinct_2": "unique word pairs / all word pairs, over all responses",
    "refusal_rate": "share of responses containing a refusal phrase",
    "pref_acc": "held-out pairs where chosen has the higher mean per-token log-prob",
    "pref_acc_chosen_longer": "pref_acc on the pairs whose chosen response is the longer one",
    "pref_acc_chosen_shorter": "pref_acc on the pairs whose chosen response is the shorter one",
    "prefers_longer": "pairs where the longer response has the higher mean per-token log-prob",
    "reward_acc": "held-out pairs with implicit reward margin > 0 (0 for the reference)",
    "reward_margin": "mean implicit reward margin beta * (chosen - rejected log-ratio)",
    "kl_to_ref": "mean exact KL(model || reference) per token of held-out chosen responses",
}


def metric_descriptions() -> pd.DataFrame:
    """``METRIC_DESCRIPTIONS`` as a table, for the notebook."""
    return pd.Series(METRIC_DESCRIPTIONS, name="meaning").rename_axis("metric").to_frame()


@torch.inference_mode()
def response_nll_and_kl(model, ref, tokenizer, pairs: Sequence[dict], batch_size: int = 4,
                        max_length: int = 256) -> tuple[float, float]:
    """Mean NLL and mean exact KL(model || ref) per token over the **chosen** responses of ``pairs``.

    Small batches: the exact KL needs both models' full-vocabulary logits, a few hundred MB per 16 sequences."""
    device = next(model.parameters()).device
    total_nll = total_kl = total_tokens = 0.0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        encoded = [encode_pair(tokenizer, p["prompt"], p["chosen"], max_length) for p in chunk]
        batch = {k: v.to(device) for k, v in pad_batch(encoded, tokenizer.pad_token_id).items()}
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        _, nll, kl = kl_regularized_loss(model(**inputs).logits, ref(**inputs).logits, batch["labels"], 0.0)
        n = (batch["labels"][:, 1:] != -100).sum().item()
        total_nll, total_kl, total_tokens = total_nll + nll.item() * n, total_kl + kl.item() * n, total_tokens + n
    return total_nll / total_tokens, total_kl / total_tokens


def _mean_where(values: torch.Tensor, where: torch.Tensor) -> float:
    return values[where].float().mean().item() if where.any() else float("nan")


def preference_metrics(scores: dict, ref_scores: dict, chosen_longer: torch.Tensor, beta: float) -> dict[str, float]:
    """Preference and length-bias metrics of one model from ``pair_logprobs`` outputs (model's and reference's)."""
    chosen_mean = scores["chosen"] / scores["chosen_tokens"]
    rejected_mean = scores["rejected"] / scores["rejected_tokens"]
    correct = chosen_mean > rejected_mean
    longer_wins = torch.where(chosen_longer, chosen_mean > rejected_mean, rejected_mean > chosen_mean)
    margins = implicit_reward_margins(scores, ref_scores, beta)
    return {
        "pref_acc": correct.float().mean().item(),
        "pref_acc_chosen_longer": _mean_where(correct, chosen_longer),
        "pref_acc_chosen_shorter": _mean_where(correct, ~chosen_longer),
        "prefers_longer": longer_wins.float().mean().item(),
        "reward_acc": (margins > 0).float().mean().item(),
        "reward_margin": margins.mean().item(),
    }


def text_metrics(texts: Sequence[str], refusal_phrases=DEFAULT_REFUSAL_PHRASES) -> dict[str, float]:
    """Length, repetition, diversity and refusal rate of a model's generations."""
    return {
        "len_words": sum(len(t.split()) for t in texts) / len(texts),
        "repetition": sum(map(repetition_score, texts)) / len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "refusal_rate": sum(refusal_flag(t, refusal_phrases) for t in texts) / len(texts),
    }


def evaluate_models(models: dict, ref, tokenizer, pairs: Sequence[dict], beta: float = 0.1, seed: int = 0,
                    max_new_tokens: int = 80, temperature: float = 0.8, top_p: float = 0.95,
                    refusal_phrases=DEFAULT_REFUSAL_PHRASES, max_length: int = 256,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate each model of ``models`` (name -> model) on held-out ``pairs`` against the reference ``ref``.

    Every model answers the same held-out prompts with the same seed and settings.

    Returns:
        ``(metrics, generations)``: ``metrics`` has a row per model and the columns of
        ``METRIC_DESCRIPTIONS``; ``generations`` has a row per prompt and a column per model.
    """
    prompts = [p["prompt"] for p in pairs]
    ref_scores = pair_logprobs(ref, tokenizer, pairs, max_length=max_length)
    chosen_longer = torch.tensor([len(p["chosen"].split()) > len(p["rejected"].split()) for p in pairs])
    rows, generations = {}, {"prompt": prompts}
    for name, model in tqdm(models.items(), desc="evaluating", disable=not progress, unit="model"):
        texts = generate(model, tokenizer, prompts, max_new_tokens, temperature, top_p, seed)
        scores = ref_scores if model is ref else pair_logprobs(model, tokenizer, pairs, max_length=max_length)
        kl = 0.0 if model is ref else response_nll_and_kl(model, ref, tokenizer, pairs, max_length=max_length)[1]
        rows[name] = {**text_metrics(texts, refusal_phrases), **preference_metrics(scores, ref_scores, chosen_longer,
                                                                                    beta), "kl_to_ref": kl}
        generations[name] = texts
    metrics = pd.DataFrame.from_dict(rows, orient="index")[list(METRIC_DESCRIPTIONS)]
    metrics.index.name = "model"
    return metrics, pd.DataFrame(generations)
