"""Evaluation signals: text statistics of generations, preference metrics on held-out pairs, intervals."""

from __future__ import annotations

import math
import re
from typing import Callable, Iterable, Sequence

import torch

# Whole phrases that signal a refusal, matched as whole words: "unable to" alone would flag "I was unable to
# sleep", so each phrase names who refuses.
DEFAULT_REFUSAL_PHRASES = (
    "I can't help with", "I cannot help with", "I can't assist", "I cannot assist", "I won't help",
    "I can't provide", "I cannot provide", "I'm not able to help", "I am not able to help",
    "I'm unable to help", "I am unable to help", "I can't do that", "I cannot do that", "I must decline",
    "I'm sorry, but I can't", "I am sorry, but I cannot", "as an AI",
)

_WORD = re.compile(r"[a-z0-9']+")


def _words(text: str) -> list[str]:
    """Lower-cased words, punctuation dropped, curly apostrophes straightened."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def repetition_score(text: str) -> float:
    """The original lab's repetition: ``1 - unique words / words`` (0.0 under 10 words). Prose repeats "the"
    and "a", so even good text scores above 0: compare models with each other."""
    words = _words(text)
    if len(words) < 10:
        return 0.0
    return 1.0 - len(set(words)) / len(words)


def trigram_repetition(text: str) -> float:
    """Share of word trigrams that repeat an earlier one: 0.0 for varied text, near 1.0 for a loop (0.0 under 4
    words). Prose repeats words like "the", but rarely whole phrases."""
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
    """Unique word n-grams / all word n-grams, pooled over ``texts`` (0.0 if none). Low: the model says the same
    things over and over, across responses as well as within them."""
    grams = [g for t in texts for g in _ngrams(_words(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_logprobs(scores: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair, the **mean per-token** log-probs ``(chosen [N], rejected [N])`` from ``pair_logprobs``'s sums."""
    return scores["chosen"] / scores["chosen_tokens"], scores["rejected"] / scores["rejected_tokens"]


def implicit_reward_margins(policy_scores: dict, ref_scores: dict, beta: float) -> torch.Tensor:
    """DPO's implicit reward margin per pair, ``[N]``: ``beta * (log-ratio of chosen - log-ratio of rejected)``,
    from ``pair_logprobs``'s **summed** log-probs of the policy and the reference on the same pairs."""
    return beta * ((policy_scores["chosen"] - ref_scores["chosen"])
                   - (policy_scores["rejected"] - ref_scores["rejected"]))


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson interval of the rate ``successes / n`` (NaN, NaN when ``n`` is 0). Unlike
    ``rate +- z * sqrt(rate * (1 - rate) / n)`` it stays inside [0, 1] and is not zero-width at 0 or 1."""
    if n == 0:
        return float("nan"), float("nan")
    rate = successes / n
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_indices(n: int, resamples: int = 1000, seed: int = 0) -> torch.Tensor:
    """``[resamples, n]`` indices drawn with replacement from ``range(n)``, from a fixed seed: every model and
    metric is resampled over the same pairs, so their intervals are comparable."""
    return torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))


def bootstrap_interval(statistic: Callable[[torch.Tensor], torch.Tensor], indices: torch.Tensor,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap: ``statistic`` maps ``indices`` ``[R, n]`` to ``[R]`` values; returns the middle
    ``level`` of them (NaN where none is defined)."""
    values = statistic(indices).double()
    values = values[~values.isnan()]
    if len(values) == 0:
        return float("nan"), float("nan")
    low, high = torch.quantile(values, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return low.item(), high.item()
