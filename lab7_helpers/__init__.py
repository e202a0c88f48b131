"""Helpers for Lab 7: KL-regularized fine-tuning and DPO on GPT-2.

The teaching core, read top to bottom: ``data`` (pairs to token ids), ``losses`` (the maths), ``scoring``
(log-probs of responses under a model), ``models`` (loading, freezing, copying), ``generation``, ``metrics``,
``training`` (the two update loops), ``evaluation`` and ``judging`` (your own blind judgement of two models).

Beside it: ``checks/``, the notebook's self-checks on the TODOs (the grader runs the same ones); ``sources/``
reads pairs files, writes the data card and fetches the offline model; ``engine/`` makes the CPU path faster
(same numbers, to float32 rounding); ``app/`` is the ``lab7 run`` command (report, plots, tables, TRL's ``DPOTrainer`` with the lab's settings); ``grading/``
is ``lab7 grade``.

Importing this package changes nothing in the process and imports nothing heavy: each name below is loaded from
its module when first used (``lab.train_dpo``, ``from lab7_helpers import load_pairs``), so that ``lab7`` can
answer Ctrl-C while torch is still loading.
"""

from __future__ import annotations

import importlib

EXPORTS = {  # module -> the names the notebook and the grader use from it
    ".data": ("IGNORE_INDEX", "encode_pair", "encode_pairs_for_dpo", "format_prompt", "pad_batch", "split_pairs"),
    ".losses": ("dpo_loss", "kl_regularized_loss", "sequence_logprobs", "token_kl", "token_logprobs"),
    ".models": ("SMOLLM2", "TINY_GPT2", "describe_runtime", "freeze", "load_model", "trainable_copy"),
    ".generation": ("generate",),
    ".metrics": ("distinct_n", "refusal_flag", "repetition_score", "trigram_repetition"),
    ".training": ("kl_beta_sweep", "scaled_dpo_epochs", "train_dpo", "train_kl"),
    ".evaluation": ("evaluate_models", "nll_and_kl"),
    ".judging": ("blind_pairs", "blind_summary", "sign_test"),
    ".checks": ("CheckResult", "check_dpo_dataset", "check_dpo_loss", "check_kl_loss", "check_refusal_phrases",
                "check_sequence_logprobs"),
    ".sources.data_card": ("data_card",),
    ".sources.pair_files": ("BUNDLED_PAIRS", "SAMPLE_DATA_DIR", "PairFileError", "PairFileWarning", "load_pairs"),
    ".app.trl_dpo": ("dpo_dataset", "precision_flags", "train_dpo_trl", "trl_history"),
    ".app.plots": ("plot_beta_sweep", "plot_dpo_history", "plot_kl_history", "plot_metrics"),
    ".app.judge": ("judge_blind",),
    ".app.tables": ("few_pairs_note", "metric_descriptions", "sample_held_out_pairs", "with_intervals"),
    ".grading.submissions": ("export_answers",),
}
_MODULE_OF = {name: module for module, names in EXPORTS.items() for name in names}
__all__ = list(_MODULE_OF)


def __getattr__(name: str):
    """Load an exported name, or a submodule (``lab.training``), the first time it is asked for (PEP 562)."""
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    else:
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
