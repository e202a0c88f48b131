"""Evaluation signals: text statistics of generations and preference metrics of a model on held-out pairs."""

from __future__ import annotations

import math
import re
from typing import Callable, Iterable, Sequence

import torch

from .scoring import pair_logprobs

# Whole phrases that signal a refusal. Matched on word boundaries, case-insensitively, with curly apostrophes
# straightened: "unable to" alone would flag "I was unable to sleep", so each phrase names who refuses.
DEFAULT_REFUSAL_PHRASES = (
    "I can't help with", "I cannot help with", "I can't assist", "I cannot assist", "I won't help",
    "I can't provide", "I cannot provide", "I'm not able to help", "I am not able to help",
    "I'm unable to help", "I am unable to help", "I can't do that", "I cannot do that", "I must decline",
    "I'm sorry, but I can't", "I am sorry, but I cannot", "as an AI",
)

_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def repetition_score(text: str) -> float:
    """The original lab's repetition: ``1 - unique words / words`` (0.0 for texts under 10 words).

    Words are lower-cased, punctuation dropped. Ordinary prose repeats "the" and "a", so even good text scores
    above 0; compare models with each other, not with 0. ``trigram_repetition`` looks for repeated phrases.
    """
    words = _words(text)
    if len(words) < 10:
        return 0.0
    return 1.0 - len(set(words)) / len(words)


def trigram_repetition(text: str) -> float:
    """Share of word trigrams in ``text`` that repeat an earlier trigram: 0.0 for varied text, near 1.0 for a loop.

    Words are lower-cased, punctuation dropped. Texts with fewer than 4 words score 0.0 (nothing can repeat).
    Trigrams rather than single words, because ordinary prose repeats words like "the" but rarely whole phrases.
    """
    trigrams = _ngrams(_words(text), 3)
    if len(trigrams) < 2:
        return 0.0
    return 1.0 - len(set(trigrams)) / len(trigrams)


def refusal_flag(text: str, phrases: Iterable[str] = DEFAULT_REFUSAL_PHRASES) -> bool:
    """True when ``text`` contains one of ``phrases`` as whole words (case-insensitive, ' and \u2019 alike)."""
    normalized = text.replace("\u2019", "'")
    for phrase in phrases:
        pattern = r"(?<!\w)" + r"\s+".join(map(re.escape, phrase.replace("\u2019", "'").split())) + r"(?!\w)"
        if re.search(pattern, normalized, flags=re.IGNORECASE):
            return True
    return False


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: unique word n-grams divided by all word n-grams, pooled over ``texts`` (0.0 if there are none).

    Low values mean the model says the same things over and over, across responses as well as within them.
    """
    grams = [g for t in texts for g in _ngrams(_words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def preference_accuracy(model, tokenizer, pairs: Sequence[dict], batch_size: int = 8,
                        max_length: int = 256) -> float:
    """Share of pairs where the model gives the chosen response a higher **mean per-token** log-prob.

    A mean, not a sum, so that a longer response is not penalised just for having more tokens. It needs no
    reference, so it compares any models, the base model included.
    """
    return chosen_preferred(pair_logprobs(model, tokenizer, pairs, batch_size, max_length)).float().mean().item()


def chosen_preferred(scores: dict):
    """Per pair, ``[N]`` bool: the chosen response has the higher **mean per-token** log-prob (from
    ``pair_logprobs``)."""
    return scores["chosen"] / scores["chosen_tokens"] > scores["rejected"] / scores["rejected_tokens"]


def implicit_reward_margins(policy_scores: dict, ref_scores: dict, beta: float):
    """DPO's implicit reward margin per pair, ``[N]``: ``beta * (log-ratio of chosen - log-ratio of rejected)``.

    Both arguments come from ``pair_logprobs`` (summed log-probs) on the same pairs.
    """
    return beta * ((policy_scores["chosen"] - ref_scores["chosen"])
                   - (policy_scores["rejected"] - ref_scores["rejected"]))


def reward_accuracy(model, ref, tokenizer, pairs: Sequence[dict], beta: float, batch_size: int = 8,
                    max_length: int = 256) -> float:
    """Share of pairs whose implicit reward margin is > 0 (strictly), as TRL logs ``rewards/accuracies``.

    Always 0.0 for the reference itself (every margin is exactly 0). Uses summed log-probs, like DPO.
    """
    margins = implicit_reward_margins(pair_logprobs(model, tokenizer, pairs, batch_size, max_length),
                                      pair_logprobs(ref, tokenizer, pairs, batch_size, max_length), beta)
    return (margins > 0).float().mean().item()


# Intervals: a held-out figure from a handful of pairs is a guess; these say how good a guess. 95% by default.
Z_95 = 1.959964


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a rate ``successes / n`` (NaN, NaN when ``n`` is 0).

    Unlike ``rate +- z * sqrt(rate * (1 - rate) / n)`` it stays inside [0, 1] and is not zero-width at 0 or 1:
    4 out of 4 pairs right gives roughly (0.51, 1.0), not (1.0, 1.0).
    """
    if n == 0:
        return float("nan"), float("nan")
    rate = successes / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_indices(n: int, resamples: int = 1000, seed: int = 0) -> torch.Tensor:
    """``[resamples, n]`` indices drawn with replacement from ``range(n)``, from a fixed seed: every model and
    metric of a run is resampled over the same held-out pairs, so their intervals are comparable."""
    return torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))


def bootstrap_interval(statistic: Callable[[torch.Tensor], torch.Tensor], indices: torch.Tensor,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap: ``statistic`` maps ``indices`` (``[R, n]`` pair indices, from ``bootstrap_indices``)
    to ``[R]`` values, one per resample; returns the middle ``level`` of them (NaN where none is defined)."""
    values = statistic(indices).double()
    values = values[~values.isnan()]
    if len(values) == 0:
        return float("nan"), float("nan")
    low, high = torch.quantile(values, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return low.item(), high.item()
