"""Compare models on held-out pairs: one row of metrics per model, plus side-by-side generations."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import engine
from .generation import generate
from .losses import picked_logprobs, token_kl
from .metrics import (DEFAULT_REFUSAL_PHRASES, chosen_preferred, distinct_n, implicit_reward_margins, refusal_flag,
                      repetition_score)
from .scoring import in_original_order, length_sorted_batches, sum_by_side

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
def held_out_scores(models: dict, ref, tokenizer, pairs: Sequence[dict], batch_size: int = 4,
                    max_length: int = 256, progress: bool = False) -> tuple[dict[str, dict], dict]:
    """Everything the metrics need from scoring ``pairs``: ``(scores per model name, the reference's scores)``.

    Scores are dicts of ``[N]`` tensors: those of ``pair_logprobs`` (``chosen``, ``rejected``, ``chosen_tokens``,
    ``rejected_tokens``) and ``kl``, the exact KL(model || ref) summed over each pair's chosen tokens. One forward
    pass per model and batch gives both: the reference's logits at the chosen positions serve every model's KL.
    """
    # "" is the reference, scored once; an entry of ``models`` that is the reference gets its scores
    everyone = {"": ref, **{name: model for name, model in models.items() if model is not ref}}
    was_training = {name: model.training for name, model in everyone.items()}
    for model in everyone.values():
        model.eval()
    parts: dict[str, dict[str, list[torch.Tensor]]] = {name: {} for name in everyone}
    batches = length_sorted_batches(pairs, batch_size)
    try:
        with engine.session(*everyone.values()) as fast:
            for idx in tqdm(batches, desc="scoring held-out pairs", disable=not progress, unit="batch"):
                chunk = [pairs[i] for i in idx]
                ref_logits, targets, side = fast.response_logits(ref, tokenizer, chunk, max_length)  # [N, V]
                chosen_rows = side[side >= 0] == 0
                for name, model in everyone.items():
                    logits = ref_logits if model is ref else fast.response_logits(model, tokenizer, chunk,
                                                                                   max_length)[0]
                    kl = torch.zeros(chosen_rows.shape, dtype=logits.dtype, device=logits.device)
                    kl[chosen_rows] = token_kl(logits[chosen_rows], ref_logits[chosen_rows])
                    chosen, rejected, n_chosen, n_rejected = sum_by_side(picked_logprobs(logits, targets), side)
                    scores = {"chosen": chosen, "rejected": rejected, "chosen_tokens": n_chosen,
                              "rejected_tokens": n_rejected, "kl": sum_by_side(kl, side)[0]}
                    for key, value in scores.items():
                        parts[name].setdefault(key, []).append(value.cpu())
    finally:
        for name, model in everyone.items():
            model.train(was_training[name])
    in_order = {name: {key: in_original_order(torch.cat(values), batches) for key, values in by_key.items()}
                for name, by_key in parts.items()}
    return {name: in_order["" if model is ref else name] for name, model in models.items()}, in_order[""]


def nll_and_kl(model, ref, tokenizer, pairs: Sequence[dict], max_length: int = 256) -> tuple[float, float]:
    """Mean NLL and mean exact KL(model || ref) per token over the **chosen** responses of ``pairs``."""
    scores = held_out_scores({"model": model}, ref, tokenizer, pairs, max_length=max_length)[0]["model"]
    n_tokens = scores["chosen_tokens"].sum()
    return (-scores["chosen"].sum() / n_tokens).item(), (scores["kl"].sum() / n_tokens).item()


def _mean_where(values: torch.Tensor, where: torch.Tensor) -> float:
    return values[where].float().mean().item() if where.any() else float("nan")


def preference_metrics(scores: dict, ref_scores: dict, chosen_longer: torch.Tensor, beta: float) -> dict[str, float]:
    """Preference and length-bias metrics of one model from ``pair_logprobs`` outputs (model's and reference's)."""
    correct = chosen_preferred(scores)
    rejected_preferred = chosen_preferred({"chosen": scores["rejected"], "rejected": scores["chosen"],
                                           "chosen_tokens": scores["rejected_tokens"],
                                           "rejected_tokens": scores["chosen_tokens"]})
    longer_wins = torch.where(chosen_longer, correct, rejected_preferred)
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
    scores, ref_scores = held_out_scores(models, ref, tokenizer, pairs, max_length=max_length, progress=progress)
    chosen_longer = torch.tensor([len(p["chosen"].split()) > len(p["rejected"].split()) for p in pairs])
    rows, generations = {}, {"prompt": prompts}
    for name, model in tqdm(models.items(), desc="generating", disable=not progress, unit="model"):
        texts = generate(model, tokenizer, prompts, max_new_tokens, temperature, top_p, seed)
        kl_to_ref = (scores[name]["kl"].sum() / scores[name]["chosen_tokens"].sum()).item()
        rows[name] = {**text_metrics(texts, refusal_phrases),
                      **preference_metrics(scores[name], ref_scores, chosen_longer, beta),
                      "kl_to_ref": kl_to_ref}
        generations[name] = texts
    metrics = pd.DataFrame.from_dict(rows, orient="index")[list(METRIC_DESCRIPTIONS)]
    metrics.index.name = "model"
    return metrics, pd.DataFrame(generations)
