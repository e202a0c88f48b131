"""The evaluation for reading: metrics with their intervals, what each metric means, the few-pairs warning, and
more held-out pairs from the bundled sample. Not part of the teaching core (``evaluation.py`` computes)."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..data import split_pairs
from ..evaluation import METRIC_DESCRIPTIONS
from ..sources.pair_files import BUNDLED_PAIRS, load_pairs

MIN_PAIRS_TO_COMPARE = 10  # below this, one pair moves a rate by more than 10 points


def metric_descriptions() -> pd.DataFrame:
    """``METRIC_DESCRIPTIONS`` as a table, for the notebook."""
    return pd.Series(METRIC_DESCRIPTIONS, name="meaning").rename_axis("metric").to_frame()


def few_pairs_note(n_pairs: int) -> str:
    """A plain warning when ``n_pairs`` held-out pairs are too few to tell models apart ("" when enough)."""
    if n_pairs >= MIN_PAIRS_TO_COMPARE:
        return ""
    return (f"Only {n_pairs} held-out pair(s): on so few pairs the models cannot be told apart (one pair moves "
            f"a rate by {100 / max(n_pairs, 1):.0f} points; the intervals show how wide the doubt is).")


def fixed(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals; a tiny negative number reads 0.000, not -0.000."""
    text = f"{value:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def with_intervals(metrics: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``metrics`` for reading: each metric as ``"value [low, high]"``, without the separate interval columns."""
    names = [c for c in metrics.columns if not c.endswith(("_low", "_high"))]

    def cell(row, name):
        value = row[name]
        if pd.isna(value):
            return "n/a"
        if f"{name}_low" not in row or pd.isna(row[f"{name}_low"]):
            return fixed(value, digits)
        return f"{fixed(value, digits)} [{fixed(row[f'{name}_low'], digits)}, {fixed(row[f'{name}_high'], digits)}]"

    return pd.DataFrame({name: [cell(row, name) for _, row in metrics.iterrows()] for name in names},
                        index=metrics.index)


def sample_held_out_pairs(your_pairs: Sequence[dict], test_fraction: float = 0.2, seed: int = 0) -> list[dict]:
    """The bundled sample's held-out pairs (its split with ``test_fraction`` and ``seed``), leaving out any whose
    prompt is among ``your_pairs`` (pass the training pairs, and the held-out ones too where each prompt should be
    compared once): more prompts to compare models on when your own file holds too few."""
    seen = {p["prompt"] for p in your_pairs}
    return [p for p in split_pairs(load_pairs(BUNDLED_PAIRS), test_fraction, seed)[1] if p["prompt"] not in seen]
