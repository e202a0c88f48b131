"""A data card: what a pairs file holds, read before training, and which shortcut it would reward.

DPO learns whatever separates chosen from rejected. If the chosen response is nearly always the longer one, "write
more" lowers the loss as well as "write better" does; the card counts such surface differences.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import pandas as pd

from ..metrics import DEFAULT_REFUSAL_PHRASES, refusal_flag
from .pair_files import PairFileWarning, load_pairs

# Warm or hedging words: cheap for a model to add whatever the content.
TONE_WORDS = ("sorry", "please", "thank you", "thanks", "glad", "happy to", "might", "perhaps", "not sure",
              "it depends")


def _one_sided(pairs: list[dict], flag) -> tuple[int, int]:
    """Pairs where ``flag`` holds for the chosen response only, and for the rejected response only."""
    chosen = sum(flag(p["chosen"]) and not flag(p["rejected"]) for p in pairs)
    rejected = sum(flag(p["rejected"]) and not flag(p["chosen"]) for p in pairs)
    return chosen, rejected


def _pairs(n: int) -> str:
    return f"{n} pair" if n == 1 else f"{n} pairs"


def data_card(path: str | Path, refusal_phrases=DEFAULT_REFUSAL_PHRASES) -> pd.Series:
    """The data card of the pairs file at ``path``, one plain-language line per measure (a Series of strings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_pairs(path, on_error="skip")  # a strict load that succeeded gives the same rows
    left_out = [w.message for w in caught if isinstance(w.message, PairFileWarning)]
    ties, bad = sum(w.ties for w in left_out), sum(w.bad_lines for w in left_out)
    n = len(pairs)
    triples = Counter((p["prompt"], p["chosen"], p["rejected"]) for p in pairs)
    swapped = sum(1 for prompt, chosen, rejected in triples if (prompt, rejected, chosen) in triples)
    prompts = Counter(p["prompt"] for p in pairs)
    chosen_words = [len(p["chosen"].split()) for p in pairs]
    rejected_words = [len(p["rejected"].split()) for p in pairs]
    longer = sum(c > r for c, r in zip(chosen_words, rejected_words))
    shorter = sum(c < r for c, r in zip(chosen_words, rejected_words))
    refuses = _one_sided(pairs, lambda text: refusal_flag(text, refusal_phrases))
    tone = _one_sided(pairs, lambda text: refusal_flag(text, TONE_WORDS))  # same whole-word matching

    shortcuts = []  # (how one-sided, sentence): the most one-sided first
    if max(longer, shorter) >= 0.7 * n:
        side = "longer" if longer > shorter else "shorter"
        shortcuts.append((max(longer, shorter) / n, f"length: the chosen response is the {side} one in "
                          f"{max(longer, shorter)} of {n} pairs, so writing {side} answers lowers the loss "
                          "whatever they say"))
    for what, (on_chosen, on_rejected), verb in (("refusals", refuses, "refusing"),
                                                 ("tone words", tone, "sounding warm or hedging")):
        # one-sided in at least 5% of the pairs, and at least 3 times as often on that side as on the other
        if max(on_chosen, on_rejected) >= max(2, 0.05 * n, 3 * min(on_chosen, on_rejected)):
            more, fewer = max(on_chosen, on_rejected), min(on_chosen, on_rejected)
            side = "chosen" if on_chosen > on_rejected else "rejected"
            shortcuts.append((more / n, f"{what}: they appear on the {side} side only in {more} pairs (the other "
                                        f"side only in {fewer}), so the model is "
                                        f"{'rewarded' if side == 'chosen' else 'punished'} for {verb} as such"))
    shortcut = ("; ".join(s for _, s in sorted(shortcuts, reverse=True)) if shortcuts else
                "no single surface feature (length, refusals, tone words) separates chosen from rejected here")
    return pd.Series({
        "pairs": f"{n}",
        "ties left out": f"{ties}",
        "bad lines left out": f"{bad}",
        "duplicate pairs": f"{sum(triples.values()) - len(triples)}",
        "contradicting pairs": f"{swapped} (the same prompt and responses, chosen and rejected swapped)",
        "repeated prompts": f"{sum(c > 1 for c in prompts.values())} prompts appear in more than one pair",
        "chosen is longer": (f"in {longer} of {n} pairs ({longer / n:.0%}); chosen {sum(chosen_words) / n:.1f} "
                             f"words on average, rejected {sum(rejected_words) / n:.1f}"),
        "refusal on one side only": f"{_pairs(sum(refuses))}: chosen refuses in {refuses[0]}, rejected in {refuses[1]}",
        "tone words on one side only": f"{_pairs(sum(tone))}: on the chosen side in {tone[0]}, rejected in {tone[1]}",
        "shortcut to watch": shortcut[0].upper() + shortcut[1:] + ".",
    }, name="data card")
