"""Blind judging: you read two models' answers to each held-out prompt, not knowing which is which, and pick the
better one by your own criterion. The tally says whether DPO learned what *you* prefer, with an honest interval.

``blind_pairs`` hides the models (left and right in a random order fixed by the seed), ``judgement`` records a
choice (``"a"`` left, ``"b"`` right, ``"t"`` tie) with the models named only there, and ``blind_summary`` unblinds
the tally: win rate (ties count half), its 95% Wilson interval, a sign test, and the judge's own length habit.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

from .metrics import wilson_interval

CHOICES = {"a": "left", "b": "right", "t": "tie"}
COLUMNS = ["prompt", "left_model", "right_model", "choice", "winner", "left_words", "right_words"]  # judgments.csv
SIMILAR_LENGTH = 0.2  # two answers within 20% of each other's word count are "of similar length"


@dataclass(frozen=True)
class BlindPair:
    """One prompt and two answers, shown as A (left) and B (right); which model wrote which is kept apart."""

    prompt: str
    left: str
    right: str
    left_model: str
    right_model: str

    @property
    def identical(self) -> bool:
        return self.left.strip() == self.right.strip()


def blind_pairs(generations: Sequence[dict], models: tuple[str, str] = ("base", "dpo"),
                seed: int = 0) -> list[BlindPair]:
    """A ``BlindPair`` per row of ``generations`` (dicts with ``prompt`` and a text per model name), each model
    on the left or the right by a seeded coin flip: the same seed, the same order."""
    rng = random.Random(seed)
    pairs = []
    for row in generations:
        first, second = models if rng.random() < 0.5 else models[::-1]
        pairs.append(BlindPair(row["prompt"], row[first], row[second], first, second))
    return pairs


def judgement(pair: BlindPair, choice: str) -> dict:
    """A row of ``judgments.csv``: the prompt, who was left and right, the ``choice`` and the model it names (or
    ``"tie"``), and each side's length in words. Identical answers are a tie whatever the choice."""
    choice = "t" if pair.identical else choice
    if choice not in CHOICES:
        raise ValueError(f"a choice is a, b or t, not {choice!r}")
    winner = {"a": pair.left_model, "b": pair.right_model, "t": "tie"}[choice]
    return {"prompt": pair.prompt, "left_model": pair.left_model, "right_model": pair.right_model,
            "choice": choice, "winner": winner, "left_words": len(pair.left.split()),
            "right_words": len(pair.right.split())}


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test of ``wins`` against ``losses`` (ties left out): the chance of a split at least
    this uneven if neither side were better. 1.0 when there is nothing to test."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _rate(won: float, n: int) -> dict:
    low, high = wilson_interval(won, n)
    return {"rate": won / n if n else float("nan"), "low": low, "high": high, "n": n}


def blind_summary(rows: Sequence[dict], model: str = "dpo", other: str = "base") -> dict:
    """The unblinded tally of ``judgement`` rows, ``model`` against ``other``: ``n``, ``wins``, ``losses``,
    ``ties``; ``win_rate`` with ``win_rate_low``/``_high`` (95% Wilson; ties count half); ``sign_test_p``;
    ``picked_longer`` (how often the judge picked the longer answer, where one was longer and one was picked,
    with its interval and ``n``) and ``similar_length`` (the win rate on pairs within 20% of each other's word
    count, with its interval and ``n``): "I preferred DPO" apart from "I preferred longer text"."""
    rows = [r for r in rows if {r["left_model"], r["right_model"]} == {model, other}]
    wins = sum(r["winner"] == model for r in rows)
    losses = sum(r["winner"] == other for r in rows)
    ties = len(rows) - wins - losses
    won = _rate(wins + ties / 2, len(rows))
    picked = [r for r in rows if r["winner"] != "tie" and r["left_words"] != r["right_words"]]
    longer = sum((r["left_words"] > r["right_words"]) == (r["choice"] == "a") for r in picked)
    similar = [r for r in rows if abs(r["left_words"] - r["right_words"])
               <= SIMILAR_LENGTH * max(r["left_words"], r["right_words"])]
    similar_won = sum(r["winner"] == model for r in similar) + sum(r["winner"] == "tie" for r in similar) / 2
    return {"model": model, "other": other, "n": len(rows), "wins": wins, "losses": losses, "ties": ties,
            "win_rate": won["rate"], "win_rate_low": won["low"], "win_rate_high": won["high"],
            "sign_test_p": sign_test(wins, losses), "picked_longer": _rate(longer, len(picked)),
            "similar_length": _rate(similar_won, len(similar))}


def summary_text(summary: dict) -> str:
    """The tally in plain words, with what it can and cannot say."""
    if not summary["n"]:
        return "No pairs judged yet."
    s, few = summary, summary["n"] < 10
    lines = [f"{s['model']} against {s['other']}, judged blind on {s['n']} prompt(s): {s['model']} won {s['wins']}, "
             f"lost {s['losses']}, tied {s['ties']}. Win rate {s['win_rate']:.2f} (ties count half), 95% interval "
             f"[{s['win_rate_low']:.2f}, {s['win_rate_high']:.2f}]; sign test p = {s['sign_test_p']:.2f}."]
    if few:
        lines.append(f"Only {s['n']} prompt(s): one prompt moves the rate by {100 / s['n']:.0f} points, so these "
                     "cannot tell the two models apart; judge more prompts to narrow the interval.")
    longer, similar = s["picked_longer"], s["similar_length"]
    if longer["n"]:
        lines.append(f"You picked the longer answer in {longer['rate']:.0%} of the {longer['n']} pairs where you "
                     f"picked one [{longer['low']:.2f}, {longer['high']:.2f}].")
    if similar["n"]:
        lines.append(f"On the {similar['n']} pair(s) of similar length (within {SIMILAR_LENGTH:.0%} in words), "
                     f"{s['model']}'s win rate was {similar['rate']:.2f} [{similar['low']:.2f}, {similar['high']:.2f}].")
    return "\n".join(lines)
