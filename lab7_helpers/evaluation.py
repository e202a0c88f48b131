"""Compare models on held-out pairs: one row of metrics per model, plus side-by-side generations."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import engine
from .data import IGNORE_INDEX, encode_pair, pad_batch
from .generation import generate
from .losses import kl_regularized_loss, picked_logprobs, token_kl
from .metrics import (DEFAULT_REFUSAL_PHRASES, bootstrap_indices, bootstrap_interval, distinct_n,
                      implicit_reward_margins, mean_logprobs, refusal_flag, repetition_score,
                      trigram_repetition, wilson_interval)
from .scoring import (in_original_order, length_sorted_batches, model_logits, reference_logits, response_logits,
                      sum_by_side)

METRIC_DESCRIPTIONS = {
    "len_words": "mean length of a generated response, in words",
    "repetition": "the original lab's repetition: 1 - unique words / words in a response (0 under 10 words)",
    "trigram_repetition": "share of repeated word trigrams in a response (0 = none; high = the text loops)",
    "distinct_1": "unique words / all words, over all responses pooled (no interval: a resample's repeated "
                  "draws of one response would count as repetition)",
    "distinct_2": "unique word pairs / all word pairs, over all responses pooled (no interval, as distinct_1)",
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


@torch.inference_mode()
def held_out_scores(models: dict, ref, tokenizer, pairs: Sequence[dict], batch_size: int = 4,
                    max_length: int = 256, progress: bool = False) -> tuple[dict[str, dict], dict]:
    """``(scores per model name, the reference's scores)`` on ``pairs``, each a dict of ``[N]`` tensors: those of
    ``pair_logprobs`` and ``kl``, the exact KL(model || ref) **summed** over each pair's chosen tokens. One
    forward pass per model and batch gives both; the reference's logits serve every model's KL."""
    everyone = {"": ref, **{name: model for name, model in models.items() if model is not ref}}  # "": the reference
    was_training = {name: model.training for name, model in everyone.items()}
    for model in everyone.values():
        model.eval()
    keys = ("chosen", "rejected", "chosen_tokens", "rejected_tokens", "kl")
    parts: dict[str, dict[str, list[torch.Tensor]]] = {name: {key: [] for key in keys} for name in everyone}
    batches = length_sorted_batches(pairs, batch_size)
    try:
        with engine.session(*everyone.values(), plain=engine.Steps(response_logits=response_logits)) as fast:
            for idx in tqdm(batches, desc="scoring held-out pairs", disable=not progress, unit="batch"):
                chunk = [pairs[i] for i in idx]
                ref_logits, targets, side = fast.response_logits(ref, tokenizer, chunk, max_length)  # [N, V]
                chosen = (side[side >= 0] == 0).to(ref_logits)  # [N]: 1 on the chosen responses' tokens
                for name, model in everyone.items():
                    logits = ref_logits if model is ref else fast.response_logits(model, tokenizer, chunk,
                                                                                   max_length)[0]
                    kl = token_kl(logits, ref_logits) * chosen  # [N], on the chosen side only
                    values = (*sum_by_side(picked_logprobs(logits, targets), side), sum_by_side(kl, side)[0])
                    for key, value in zip(keys, values):
                        parts[name][key].append(value.cpu())
    finally:
        for name, model in everyone.items():
            model.train(was_training[name])
    in_order = {name: {key: in_original_order(torch.cat(values), batches) for key, values in by_key.items()}
                for name, by_key in parts.items()}
    return {name: in_order["" if model is ref else name] for name, model in models.items()}, in_order[""]


@torch.inference_mode()
def nll_and_kl(model, ref, tokenizer, pairs: Sequence[dict], max_length: int = 256,
               batch_size: int = 4) -> tuple[float, float]:
    """Mean NLL and mean exact KL(model || ref) per token over the **chosen** responses of ``pairs``, in eval
    mode: the two terms of the KL update's loss, on the rows that loss sees (the chosen side only)."""
    device = next(model.parameters()).device
    encoded = [encode_pair(tokenizer, p["prompt"], p["chosen"], max_length) for p in pairs]
    totals = torch.zeros(3, dtype=torch.float64)  # NLL summed over tokens, KL summed, tokens
    was_training = model.training
    model.eval()
    batches = [{k: v.to(device) for k, v in pad_batch([encoded[i] for i in idx], tokenizer.pad_token_id).items()}
               for idx in length_sorted_batches(pairs, batch_size)]
    try:
        with engine.session(model, ref, plain=engine.Steps(reference_logits=reference_logits)) as fast:
            ref_logits_at = fast.reference_logits(ref, batches, nullcontext)  # the frozen reference's, as training's
            for i, batch in enumerate(batches):
                labels = batch["labels"]
                _, nll, kl = kl_regularized_loss(model_logits(model, batch), ref_logits_at(i), labels, beta=0.0)
                n_tokens = (labels[:, 1:] != IGNORE_INDEX).sum()  # the means above are over these tokens
                totals += torch.stack([nll * n_tokens, kl * n_tokens, n_tokens]).double().cpu()
    finally:
        model.train(was_training)
    return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item()


def model_metrics(texts: Sequence[str], scores: dict, ref_scores: dict, chosen_longer: torch.Tensor, beta: float,
                  refusal_phrases=DEFAULT_REFUSAL_PHRASES, resamples: int = 1000, seed: int = 0,
                  is_reference: bool = False) -> dict[str, float]:
    """Every metric of ``METRIC_DESCRIPTIONS`` for one model, with a 95% interval (``<metric>_low``,
    ``<metric>_high``): Wilson for the rates (``flags``), none for distinct-n, else a percentile bootstrap over
    the held-out pairs (fixed ``seed``). The reference's reward and drift metrics are 0 by definition, with
    interval (0, 0)."""
    n = len(texts)
    chosen_mean, rejected_mean = mean_logprobs(scores)  # [N] each
    correct = chosen_mean > rejected_mean
    margin = implicit_reward_margins(scores, ref_scores, beta)
    flags = {"refusal_rate": torch.tensor([refusal_flag(t, refusal_phrases) for t in texts]), "pref_acc": correct,
             "pref_acc_chosen_longer": correct[chosen_longer], "pref_acc_chosen_shorter": correct[~chosen_longer],
             "prefers_longer": torch.where(chosen_longer, correct, rejected_mean > chosen_mean),
             "reward_acc": margin > 0}
    per_text = {"len_words": [len(t.split()) for t in texts], "repetition": [repetition_score(t) for t in texts],
                "trigram_repetition": [trigram_repetition(t) for t in texts]}
    per_pair = {**{name: torch.tensor(values, dtype=torch.float64) for name, values in per_text.items()},
                "reward_margin": margin, "chosen_logp_vs_ref": scores["chosen"] - ref_scores["chosen"],
                "rejected_logp_vs_ref": scores["rejected"] - ref_scores["rejected"]}
    point = {**{name: sum(values) / n for name, values in per_text.items()},
             **{name: per_pair[name].mean().item() for name in ("reward_margin", "chosen_logp_vs_ref",
                                                                "rejected_logp_vs_ref")},
             **{name: flag.float().mean().item() if len(flag) else float("nan") for name, flag in flags.items()},
             "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
             "kl_to_ref": (scores["kl"].sum() / scores["chosen_tokens"].sum()).item()}
    # the same statistics on resamples: [R, N] pair indices -> [R] values
    resampled = {name: (lambda rows, v=values: v[rows].double().mean(-1)) for name, values in per_pair.items()}
    resampled["kl_to_ref"] = lambda rows: (scores["kl"][rows].double().sum(-1)
                                           / scores["chosen_tokens"][rows].double().sum(-1))
    indices = bootstrap_indices(n, resamples, seed)
    out = {}
    for name in METRIC_DESCRIPTIONS:
        if is_reference and name in ("reward_acc", "reward_margin", "kl_to_ref", "chosen_logp_vs_ref",
                                     "rejected_logp_vs_ref"):
            low = high = point[name]
        elif name.startswith("distinct_"):
            low = high = float("nan")
        elif name in flags:
            low, high = wilson_interval(int(flags[name].sum()), len(flags[name]))
        else:
            low, high = bootstrap_interval(resampled[name], indices)
        out.update({name: point[name], f"{name}_low": low, f"{name}_high": high})
    return out


def evaluate_models(models: dict, ref, tokenizer, pairs: Sequence[dict], beta: float = 0.1, seed: int = 0,
                    max_new_tokens: int = 80, temperature: float = 0.8, top_p: float = 0.95,
                    refusal_phrases=DEFAULT_REFUSAL_PHRASES, max_length: int = 256,
                    progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(metrics, generations)`` of each model of ``models`` (name -> model) on held-out ``pairs``, against the
    reference ``ref``: a row per model with each metric of ``METRIC_DESCRIPTIONS`` and its 95% interval; a row
    per prompt with a column per model. Each model answers each prompt once, with the same ``seed``: the text
    metrics carry sampling luck too (their intervals include it)."""
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
