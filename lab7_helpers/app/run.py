"""The lab's main job, end to end: KL update, DPO (ours, optionally TRL's), evaluation, plots and a report.

One frozen base model is the reference of both updates and the "base" row of the evaluation; each update
trains its own copy. Models that a stage does not use wait on disk while it runs, so training holds one model
and its optimizer in memory (plus the reference during TRL's DPO, which runs it at every step).
"""

from __future__ import annotations

import json
import math
import sys
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import pandas as pd

from ..data import FIELDS, split_pairs
from ..sources.data_card import data_card
from ..sources.pair_files import load_pairs
from ..evaluation import evaluate_models
from ..engine.disk import REFERENCE_ROWS, weights_on_disk
from ..models import TINY_GPT2, context_length, freeze, load_model, trainable_copy
from .plots import plot_beta_sweep, plot_dpo_comparison, plot_dpo_history, plot_kl_history, plot_metrics
from ..outputs import save_csv, write_atomic
from .report import render_report, save_figure, save_generations
from .settings import LabSettings
from .tables import few_pairs_note, sample_held_out_pairs
from ..training import DPO_MAX_EPOCHS, DPO_MIN_STEPS, kl_beta_sweep, scaled_dpo_epochs, train_dpo, train_kl


def planned_stages(settings: LabSettings) -> list[str]:
    """The stages a run with ``settings`` goes through, in order (the report lists which finished)."""
    return (["KL update"] + (["beta sweep"] if settings.kl_beta_sweep else []) + ["DPO"]
            + (["DPO (TRL)"] if settings.with_trl else []) + ["evaluation"]
            + (["evaluation on the sample"] if settings.also_score_sample else []))


def displacement_note(where: str, chosen: float, rejected: float) -> str:
    """One sentence on how DPO moved the chosen and rejected log-probs (summed, in nats) from the reference's."""
    if chosen < 0:
        return (f"Likelihood displacement ({where}): DPO made the chosen responses less likely than the reference "
                f"does ({chosen:+.2f} nats on average; rejected {rejected:+.2f}). It widened the margin by pushing "
                "both down, so probability went to responses that are in neither column.")
    return (f"DPO moved the chosen responses' log-prob by {chosen:+.2f} nats from the reference's and the rejected "
            f"ones' by {rejected:+.2f} ({where}).")


def loop_comparison(histories: dict[str, pd.DataFrame], steps_per_pass: int) -> pd.DataFrame:
    """Per DPO run: its first-step loss (log 2 for any run that starts at the reference), and the means over its
    last pass of the loss, the reward margin and the reward accuracy."""
    rows = {}
    for name, history in histories.items():
        last_pass = history.iloc[-steps_per_pass:]
        rows[name] = {"steps": len(history), "first-step loss": history["loss"].iloc[0],
                      "last pass: mean loss": last_pass["loss"].mean(),
                      "last pass: mean margin": last_pass["rewards/margins"].mean(),
                      "last pass: reward accuracy": last_pass["rewards/accuracies"].mean()}
    return pd.DataFrame.from_dict(rows, orient="index")


OUTPUT_FILES = ("report.html", "settings.json", "data_card.csv", "history_kl.csv", "beta_sweep.csv",
                "history_dpo.csv", "history_dpo_trl.csv", "metrics.csv", "generations.jsonl", "metrics_sample.csv",
                "generations_sample.jsonl", "kl_history.png", "beta_sweep.png", "dpo_history.png",
                "dpo_trl_history.png", "dpo_vs_trl.png", "metrics.png", "metrics_sample.png")
LEARNING_RATE_FLAG = {"KL update": "kl_lr", "beta sweep": "kl_lr", "DPO": "dpo_lr", "DPO (TRL)": "dpo_lr"}
PACKAGE_DIR = Path(__file__).parents[1]


def remove_outputs(out: Path) -> None:
    """Delete the files an earlier run wrote into ``out`` (``OUTPUT_FILES``, half-written ones included), so that
    a rerun into it never mixes old and new results. Other files stay."""
    for name in OUTPUT_FILES:
        for path in (out / name, out / f"{name}.tmp"):
            path.unlink(missing_ok=True)


def why_stage_failed(stage: str, err: Exception, settings: LabSettings) -> str:
    """One sentence for ``err``, raised by ``stage``; it names the flag to change when the loss diverged."""
    text = " ".join(str(err).split()).removeprefix(f"{stage}: ")  # one line, whatever the library wrote
    if isinstance(err, FloatingPointError) and stage in LEARNING_RATE_FLAG:  # from training.check_finite
        flag = LEARNING_RATE_FLAG[stage]
        return f"{text.removesuffix('.')} than --{flag.replace('_', '-')} {getattr(settings, flag):g}"
    return text if isinstance(err, (OSError, ValueError)) and text else f"{type(err).__name__}: {text[:300]}"


def run_lab(settings: LabSettings, out: Path, progress: bool = True, overwrite: bool = False) -> dict:
    """Run every stage, writing outputs into ``out`` (which must not exist yet, or be empty) as each finishes.

    Files: ``report.html``, ``settings.json``, ``history_kl.csv``, ``history_dpo.csv`` (and ``history_dpo_trl.csv``,
    ``beta_sweep.csv``), ``data_card.csv``, ``metrics.csv``, ``generations.jsonl`` (and ``metrics_sample.csv``,
    ``generations_sample.jsonl``) and one PNG per plot. The report is rewritten after each stage and lists which
    stages finished. ``overwrite``: first delete an earlier run's outputs.

    A stage that fails ends training: the evaluation runs on the models that finished, every output so far stays,
    and ``run["failures"]`` (also in the report) says which stage failed and why. Returns the run's state
    (DataFrames and settings).
    """
    out.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove_outputs(out)
    write_atomic(out / "settings.json", json.dumps(asdict(settings), indent=2, allow_nan=False) + "\n")
    run: dict = {"settings": asdict(settings), "stages": [], "planned_stages": planned_stages(settings),
                 "notes": [], "figures": {}, "failures": []}

    def note(text: str) -> None:
        if text in run["notes"]:  # the same warning from each model's generations
            return
        run["notes"].append(text)
        if progress:
            print(f"lab7: note: {text}", file=sys.stderr)

    def finish(stage: str, **figures) -> None:
        for name, fig in figures.items():
            save_figure(fig, out / f"{name}.png")
            run["figures"][name] = f"{name}.png"
        run["stages"].append(stage)
        write_atomic(out / "report.html", render_report(run))

    def attempt(stage: str, work: Callable[[], None]) -> bool:
        """Run one stage; its warnings from this package become notes. If it fails: False, and the failure is
        in ``run["failures"]`` and the report."""
        failure = None
        with warnings.catch_warnings(record=True) as caught:
            try:
                work()
            except Exception as err:  # any failure of a stage ends in the report, not in a traceback
                failure = {"stage": stage, "reason": why_stage_failed(stage, err, settings),
                           "details": traceback.format_exc()}
        for w in caught:
            if Path(w.filename).is_relative_to(PACKAGE_DIR):
                note(str(w.message))
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        if failure:
            run["failures"].append(failure)
        write_atomic(out / "report.html", render_report(run))  # with the stage's notes and failure
        return failure is None

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_pairs(settings.pairs, on_error="skip" if settings.skip_bad_lines else "raise")
    for w in caught:
        note(str(w.message))
    train, test = split_pairs(pairs, settings.test_fraction, settings.seed)
    note(f"{len(pairs)} pairs from {settings.pairs}: {len(train)} for training, {len(test)} held out.")
    copies = len(pairs) - len({tuple(p[f] for f in FIELDS) for p in pairs})
    if copies:
        note(f"{copies} pair(s) repeat another pair exactly: each copy counts once more in training.")
    if len({p["prompt"] for p in pairs}) == 1:
        note("Every pair has the same prompt, so the held-out prompt is a training prompt too: the evaluation "
             "shows answers to a prompt the models trained on, not to a new one.")
    run["data_card"] = data_card(settings.pairs)
    save_csv(run["data_card"].to_frame(), out / "data_card.csv")
    epochs = settings.dpo_epochs or scaled_dpo_epochs(len(train), settings.batch_size)
    steps_per_pass = math.ceil(len(train) / settings.batch_size)
    steps = epochs * steps_per_pass
    if not settings.dpo_epochs:  # the report's settings table shows what ran (settings.json keeps what was asked)
        run["settings"]["dpo_epochs"] = f"{epochs} (scaled with the data)"
    note(f"DPO: {epochs} pass(es) over the {len(train)} training pairs, {steps} steps"
         + ("." if settings.dpo_epochs else f" (scaled with the data: at least {DPO_MIN_STEPS} steps, "
            f"at most {DPO_MAX_EPOCHS} passes; --dpo-epochs N or --original-settings to choose)."))
    if few_pairs_note(len(test)):
        note(few_pairs_note(len(test)) + ("" if settings.also_score_sample else
             " Add --also-score-sample to also score the bundled sample's held-out pairs."))
    if settings.model == TINY_GPT2:
        note("tiny-gpt2 has random weights: its text is gibberish and its numbers only show that "
             "the pipeline works. Use smollm2-135m or gpt2 for real results.")
    write_atomic(out / "report.html", render_report(run))

    base, tokenizer = load_model(settings.model, settings.device)
    ref = freeze(base)
    max_length = settings.max_length
    context = context_length(ref)
    if context and max_length > context:
        note(f"--max-length {max_length} is more than {settings.model} reads at once: using its context of "
             f"{context} tokens.")
        max_length = context
    common = dict(batch_size=settings.batch_size, seed=settings.seed, max_length=max_length, progress=progress)
    models = {"base": ref}  # the models the evaluation compares: the reference and each finished update

    def kl_update() -> None:
        policy_kl = trainable_copy(ref)
        run["kl_history"] = train_kl(policy_kl, ref, tokenizer, train, settings.kl_beta, settings.kl_lr,
                                     settings.kl_steps, **common)
        save_csv(run["kl_history"], out / "history_kl.csv")
        models["kl"] = policy_kl
        finish("KL update", kl_history=plot_kl_history(run["kl_history"]))

    def beta_sweep() -> None:
        run["beta_sweep"] = kl_beta_sweep(ref, tokenizer, train, settings.kl_beta_sweep, lr=settings.kl_lr,
                                          steps=settings.kl_steps, trained={settings.kl_beta: models["kl"]},
                                          **common)  # the KL update's beta: measured, not trained again
        save_csv(run["beta_sweep"], out / "beta_sweep.csv")
        finish("beta sweep", beta_sweep=plot_beta_sweep(run["beta_sweep"]))

    def dpo() -> None:
        policy_dpo = trainable_copy(ref)
        with weights_on_disk(models["kl"]):  # not needed until the evaluation
            run["dpo_history"] = train_dpo(policy_dpo, ref, tokenizer, train, settings.dpo_beta, settings.dpo_lr,
                                           epochs, **common)
        save_csv(run["dpo_history"], out / "history_dpo.csv")
        models["dpo"] = policy_dpo
        last_pass = run["dpo_history"].tail(steps_per_pass)
        note(displacement_note("training pairs, DPO's last pass", last_pass["logps_vs_ref/chosen"].mean(),
                               last_pass["logps_vs_ref/rejected"].mean()))
        finish("DPO", dpo_history=plot_dpo_history(run["dpo_history"], "DPO (our loop)"))

    def dpo_trl() -> None:
        from .trl_dpo import train_dpo_trl

        policy_trl = trainable_copy(ref)
        with weights_on_disk(models["kl"], models["dpo"]):
            run["dpo_trl_history"] = train_dpo_trl(policy_trl, ref, tokenizer, train, settings.dpo_beta,
                                                   settings.dpo_lr, epochs, settings.batch_size,
                                                   settings.seed, max_length)
        save_csv(run["dpo_trl_history"], out / "history_dpo_trl.csv")
        models["dpo_trl"] = policy_trl
        histories = {"our loop": run["dpo_history"], "TRL": run["dpo_trl_history"]}
        run["parity"] = loop_comparison(histories, steps_per_pass)
        finish("DPO (TRL)", dpo_trl_history=plot_dpo_history(run["dpo_trl_history"], "DPO (TRL DPOTrainer)"),
               dpo_vs_trl=plot_dpo_comparison(histories))

    def evaluate(held_out: list[dict]):
        return evaluate_models(models, ref, tokenizer, held_out, beta=settings.dpo_beta, seed=settings.seed,
                               max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                               top_p=settings.top_p, max_length=max_length, progress=progress)

    def evaluation() -> None:
        run["metrics"], run["generations"] = evaluate(test)
        save_csv(run["metrics"], out / "metrics.csv")
        save_generations(run["generations"], out / "generations.jsonl")
        if "dpo" in models:
            dpo = run["metrics"].loc["dpo"]
            note(displacement_note("held-out pairs", dpo["chosen_logp_vs_ref"], dpo["rejected_logp_vs_ref"]))
        finish("evaluation", metrics=plot_metrics(run["metrics"]))

    def evaluation_on_the_sample() -> None:
        sample = sample_held_out_pairs(train, settings.test_fraction, settings.seed)
        note(f"Also scored on {len(sample)} held-out pairs of the bundled sample (its pairs whose prompt is among "
             "your training pairs are left out).")
        run["metrics_sample"], run["generations_sample"] = evaluate(sample)
        save_csv(run["metrics_sample"], out / "metrics_sample.csv")
        save_generations(run["generations_sample"], out / "generations_sample.jsonl")
        finish("evaluation on the sample", metrics_sample=plot_metrics(run["metrics_sample"]))

    training = {"KL update": kl_update, "beta sweep": beta_sweep, "DPO": dpo, "DPO (TRL)": dpo_trl}
    try:
        for stage in [s for s in run["planned_stages"] if s in training]:
            if stage == "DPO":
                REFERENCE_ROWS.clear()  # the KL update's reference rows, on disk, serve no later stage
            if not attempt(stage, training[stage]):
                break
        if attempt("evaluation", evaluation) and settings.also_score_sample:
            attempt("evaluation on the sample", evaluation_on_the_sample)
    finally:
        REFERENCE_ROWS.clear()
    return run
