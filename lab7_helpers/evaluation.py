"""Compare models on held-out pairs: one row of metrics per model, plus side-by-side generations."""

from __future__ import annotations

from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import engine
from .generation import generate
from .losses import picked_logprobs, token_kl
from .data import split_pairs
from .metrics import (DEFAULT_REFUSAL_PHRASES, _ngrams, _words, bootstrap_indices, bootstrap_interval,
                      chosen_preferred, distinct_n, implicit_reward_margins, refusal_flag, repetition_score,
                      trigram_repetition, wilson_interval)
from .sources.pair_files import BUNDLED_PAIRS, load_pairs
from .scoring import in_original_order, length_sorted_batches, sum_by_side

METRIC_DESCRIPTIONS = {
    "len_words": "mean length of a generated response, in words",
    "repetition": "the original lab's repetition: 1 - unique words / words in a response (0 under 10 words)",
    "trigram_repetition": "share of repeated word trigrams in a response (0 = none; high = the text loops)",
    "distinct_1": "unique words / all words, over all responses",
    "distinct_2": "unique word pairs / all word pairs, over all responses",
    "refusal_rate": "share of responses containing a refusal phrase",
    "pref_acc": "held-out pairs where chosen has the higher mean per-token log-prob",
    "pref_acc_chosen_longer": "pref_acc on the pairs whose chosen response is the longer one",
    "pref_acc_chosen_shorter": "pref_acc on the pairs whose chosen response is the shorter one",
    "prefers_longer": "pairs where the longer response has the higher mean per-token log-prob",
    "reward_acc": "held-out pairs with implicit reward margin > 0 (0 for the reference)",
    "reward_margin": "mean implicit reward margin beta * (chosen - rejected log-ratio)",
    "kl_to_ref": "mean KL(model || reference) per token, exact over the vocabulary at each position of the "
                 "held-out chosen responses (drift where those texts go, not on the model's own samples)",
    "chosen_logp_vs_ref": "mean change of a held-out chosen response's summed log-prob from the reference's "
                          "(< 0: now less likely than before training)",
    "rejected_logp_vs_ref": "the same for the rejected responses",
}
RATES = ("refusal_rate", "pref_acc", "pref_acc_chosen_longer", "pref_acc_chosen_shorter", "prefers_longer",
         "reward_acc")  # intervals by Wilson; the other metrics' by bootstrap over held-out pairs
MIN_PAIRS_TO_COMPARE = 10  # below this, one pair moves a rate by more than 10 points


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


def preference_values(scores: dict, ref_scores: dict, chosen_longer: torch.Tensor, beta: float) -> dict:
    """Per held-out pair, ``[N]`` tensors: ``correct`` (chosen has the higher mean per-token log-prob),
    ``longer_wins``, ``margin`` (implicit reward), and the summed log-prob changes from the reference."""
    correct = chosen_preferred(scores)
    rejected_preferred = chosen_preferred({"chosen": scores["rejected"], "rejected": scores["chosen"],
                                           "chosen_tokens": scores["rejected_tokens"],
                                           "rejected_tokens": scores["chosen_tokens"]})
    return {"correct": correct, "longer_wins": torch.where(chosen_longer, correct, rejected_preferred),
            "margin": implicit_reward_margins(scores, ref_scores, beta),
            "chosen_vs_ref": scores["chosen"] - ref_scores["chosen"],
            "rejected_vs_ref": scores["rejected"] - ref_scores["rejected"]}


def model_metrics(texts: Sequence[str], scores: dict, ref_scores: dict, chosen_longer: torch.Tensor, beta: float,
                  refusal_phrases=DEFAULT_REFUSAL_PHRASES, resamples: int = 1000, seed: int = 0,
                  is_reference: bool = False) -> dict[str, float]:
    """Every metric of ``METRIC_DESCRIPTIONS`` for one model, each with a 95% interval (``<metric>_low``,
    ``<metric>_high``): Wilson for the rates in ``RATES``, a percentile bootstrap over the held-out pairs (fixed
    ``seed``) for the rest. The reference's reward metrics are 0 by definition, so their interval is (0, 0)."""
    n = len(texts)
    pref = preference_values(scores, ref_scores, chosen_longer, beta)
    refusals = torch.tensor([refusal_flag(t, refusal_phrases) for t in texts])
    flags = {"refusal_rate": refusals, "pref_acc": pref["correct"],
             "pref_acc_chosen_longer": pref["correct"][chosen_longer],
             "pref_acc_chosen_shorter": pref["correct"][~chosen_longer],
             "prefers_longer": pref["longer_wins"], "reward_acc": pref["margin"] > 0}
    per_pair = {"len_words": torch.tensor([len(t.split()) for t in texts], dtype=torch.float64),
                "repetition": torch.tensor([repetition_score(t) for t in texts], dtype=torch.float64),
                "trigram_repetition": torch.tensor([trigram_repetition(t) for t in texts], dtype=torch.float64),
                "reward_margin": pref["margin"], "chosen_logp_vs_ref": pref["chosen_vs_ref"],
                "rejected_logp_vs_ref": pref["rejected_vs_ref"]}
    # statistics of a resample, [R, N] pair indices -> [R] (the same formulas as the point estimates below)
    grams = {k: [_ngrams(_words(t), k) for t in texts] for k in (1, 2)}

    def distinct(k: int):
        return lambda rows: torch.tensor([distinct_n_of(grams[k], row) for row in rows.tolist()])

    resampled = {name: (lambda rows, v=values: v[rows].double().mean(-1)) for name, values in per_pair.items()}
    resampled.update({"distinct_1": distinct(1), "distinct_2": distinct(2),
                      "kl_to_ref": lambda rows: (scores["kl"][rows].double().sum(-1)
                                                 / scores["chosen_tokens"][rows].double().sum(-1))})
    point = {
        "len_words": sum(len(t.split()) for t in texts) / n,
        "repetition": sum(map(repetition_score, texts)) / n,
        "trigram_repetition": sum(map(trigram_repetition, texts)) / n,
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        **{name: flag.float().mean().item() if len(flag) else float("nan") for name, flag in flags.items()},
        "reward_margin": pref["margin"].mean().item(),
        "kl_to_ref": (scores["kl"].sum() / scores["chosen_tokens"].sum()).item(),
        "chosen_logp_vs_ref": pref["chosen_vs_ref"].mean().item(),
        "rejected_logp_vs_ref": pref["rejected_vs_ref"].mean().item(),
    }
    rows = bootstrap_indices(n, resamples, seed)
    row = {}
    for name in METRIC_DESCRIPTIONS:
        if is_reference and name in ("reward_acc", "reward_margin", "kl_to_ref", "chosen_logp_vs_ref",
                                     "rejected_logp_vs_ref"):
            low = high = point[name]
        elif name in RATES:
            low, high = wilson_interval(int(flags[name].sum()), len(flags[name]))
        else:
            low, high = bootstrap_interval(resampled[name], rows)
        row.update({name: point[name], f"{name}_low": low, f"{name}_high": high})
    return row


def distinct_n_of(grams_per_text: list[list[tuple]], rows: Sequence[int]) -> float:
    """``distinct_n`` of the texts at ``rows`` (with repeats), from each text's precomputed n-grams."""
    pooled = [g for i in rows for g in grams_per_text[i]]
    return len(set(pooled)) / len(pooled) if pooled else 0.0


def few_pairs_note(n_pairs: int) -> str:
    """A plain warning when ``n_pairs`` held-out pairs are too few to tell models apart ("" when enough)."""
    if n_pairs >= MIN_PAIRS_TO_COMPARE:
        return ""
    return (f"Only {n_pairs} held-out pair(s): on so few pairs the models cannot be told apart (one pair moves "
            f"a rate by {100 / max(n_pairs, 1):.0f} points; the intervals show how wide the doubt is).")


def with_intervals(metrics: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``metrics`` for reading: each metric as ``"value [low, high]"``, without the separate interval columns."""
    names = [c for c in metrics.columns if not c.endswith(("_low", "_high"))]

    def cell(row, name):
        value = row[name]
        if pd.isna(value):
            return "n/a"
        if f"{name}_low" not in row or pd.isna(row[f"{name}_low"]):
            return f"{value:.{digits}f}"
        return f"{value:.{digits}f} [{row[f'{name}_low']:.{digits}f}, {row[f'{name}_high']:.{digits}f}]"

    return pd.DataFrame({name: [cell(row, name) for _, row in metrics.iterrows()] for name in names},
                        index=metrics.index)


def sample_held_out_pairs(train_pairs: Sequence[dict], test_fraction: float = 0.2, seed: int = 0) -> list[dict]:
    """The bundled sample's held-out pairs (its split with ``test_fraction`` and ``seed``), leaving out any whose
    prompt is among ``train_pairs``: more prompts to compare models on when your own file holds too few."""
    seen = {p["prompt"] for p in train_pairs}
    return [p for p in split_pairs(load_pairs(BUNDLED_PAIRS), test_fraction, seed)[1] if p["prompt"] not in seen]


def evaluate_models(models: dict, ref, tokenizer, pairs: Sequence[dict], beta: float = 0.1, seed: int = 0,
                    max_new_tokens: int = 80, temperature: float = 0.8, top_p: float = 0.95,
                    refusal_phrases=DEFAULT_REFUSAL_PHRASES, max_length: int = 256,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Evaluate each model of ``models`` (name -> model) on held-out ``pairs`` against the reference ``ref``.

    Every model answers the same held-out prompts with the same seed and settings: one sample per prompt at
    ``temperature``, so the text metrics also carry sampling luck (the intervals include it, over prompts).

    Returns:
        ``(metrics, generations)``: ``metrics`` has a row per model and, for each metric of
        ``METRIC_DESCRIPTIONS``, the value and its 95% interval (``<metric>_low``, ``<metric>_high``);
        ``generations`` has a row per prompt and a column per model.
    """
    prompts = [p["prompt"] for p in pairs]
    scores, ref_scores = held_out_scores(models, ref, tokenizer, pairs, max_length=max_length, progress=progress)
    chosen_longer = torch.tensor([len(p["chosen"].split()) > len(p["rejected"].split()) for p in pairs])
    rows, generations = {}, {"prompt": prompts}
    for name, model in tqdm(models.items(), desc="generating", disable=not progress, unit="model"):
        texts = generate(model, tokenizer, prompts, max_new_tokens, temperature, top_p, seed)
        rows[name] = model_metrics(texts, scores[name], ref_scores, chosen_longer, beta, refusal_phrases,
                                   seed=seed, is_reference=model is ref)
        generations[name] = texts
    metrics = pd.DataFrame.from_dict(rows, orient="index")
    metrics.index.name = "model"
    return metrics, pd.DataFrame(generations)
