"""What ``lab7 run`` can be told: every setting with its default. Loads no torch, so that ``lab7 --help`` and
a mistyped flag answer at once."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..sources.pair_files import BUNDLED_PAIRS


ORIGINAL_LAB = {"dpo_epochs": 1}  # what ``--original-settings`` restores: the settings where the defaults differ


@dataclass
class LabSettings:
    """Every knob of a run; the defaults follow the original lab, except those in ``ORIGINAL_LAB``."""
    model: str = "gpt2"
    pairs: str = str(BUNDLED_PAIRS)
    skip_bad_lines: bool = False  # leave out the pairs file's bad lines (a note says how many) instead of stopping
    seed: int = 0
    test_fraction: float = 0.2
    max_length: int = 256
    kl_beta: float = 0.05
    kl_lr: float = 5e-5
    kl_steps: int = 30
    dpo_beta: float = 0.1
    dpo_lr: float = 5e-6
    dpo_epochs: int | None = None  # None: scaled_dpo_epochs
    batch_size: int = 1
    max_new_tokens: int = 80
    temperature: float = 0.8
    top_p: float = 0.95
    with_trl: bool = False
    kl_beta_sweep: list[float] = field(default_factory=list)
    device: str | None = None
    also_score_sample: bool = False  # also evaluate on the bundled sample's held-out pairs
