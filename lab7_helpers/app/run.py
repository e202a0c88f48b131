"""The lab's main job, end to end: KL update, DPO (ours, optionally TRL's), evaluation, plots and a report.

One frozen base model is the reference of both updates and the "base" row of the evaluation; each update
trains its own copy. Models that a stage does not use wait on disk while it runs, so training holds one model
and its optimizer in memory (plus the reference during TRL's DPO, which runs it at every step).
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data import split_pairs
from ..data_card import data_card
from ..sources.pair_files import BUNDLED_PAIRS, load_pairs
from ..evaluation import evaluate_models, few_pairs_note, sample_held_out_pairs
from ..engine.disk import weights_on_disk
from ..models import TINY_GPT2, freeze, load_model, trainable_copy
from .plots import plot_beta_sweep, plot_dpo_history, plot_kl_history, plot_metrics
from .report import render_report, save_csv, save_figure, save_generations, write_atomic
from ..training import kl_beta_sweep, train_dpo, train_kl


# DPO's passes over the training pairs scale with the data: at least DPO_MIN_STEPS steps, at most DPO_MAX_EPOCHS
# passes (repeating a small file many times overfits it: smollm2-135m's training loss halved in the 2nd pass over
# 14 pairs). Measured on 14 training pairs: held-out KL to the reference 0.014 after one pass, 0.037 after two,
# against 0.109 after the sample's one pass of 97 steps. Details: README, "Defaults that scale with your data".
DPO_MIN_STEPS = 50
DPO_MAX_EPOCHS = 4
ORIGINAL_LAB = {"dpo_epochs": 1}  # what ``--original-settings`` restores: the settings where the defaults differ


def scaled_dpo_epochs(n_train: int, batch_size: int) -> int:
    """Passes over ``n_train`` pairs for at least ``DPO_MIN_STEPS`` steps, between 1 and ``DPO_MAX_EPOCHS``."""
    steps_per_epoch = math.ceil(n_train / batch_size)
    return max(1, min(DPO_MAX_EPOCHS, math.ceil(DPO_MIN_STEPS / steps_per_epoch)))


@dataclass
class LabSettings:
    """Every knob of a run; the defaults follow the original lab, except those in ``ORIGINAL_LAB``."""
    model: str = "gpt2"
    pairs: str = str(BUNDLED_PAIRS)
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


def run_lab(settings: LabSettings, out: Path, progress: bool = True) -> dict:
    """Run every stage, writing outputs into ``out`` (which must not exist yet, or be empty) as each finishes.

    Files: ``report.html``, ``settings.json``, ``history_kl.csv``, ``history_dpo.csv`` (and ``history_dpo_trl.csv``,
    ``beta_sweep.csv``), ``data_card.csv``, ``metrics.csv``, ``generations.jsonl`` (and ``metrics_sample.csv``,
    ``generations_sample.jsonl``) and one PNG per plot. The report is rewritten
    after each stage and lists which stages finished. Returns the run's state (DataFrames and settings).
    """
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "settings.json", json.dumps(asdict(settings), indent=2) + "\n")
    run: dict = {"settings": asdict(settings), "stages": [], "planned_stages": planned_stages(settings),
                 "notes": [], "figures": {}}

    def finish(stage: str, **figures) -> None:
        for name, fig in figures.items():
            save_figure(fig, out / f"{name}.png")
            run["figures"][name] = f"{name}.png"
        run["stages"].append(stage)
        write_atomic(out / "report.html", render_report(run))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_pairs(settings.pairs)
    run["notes"] += [str(w.message) for w in caught]
    train, test = split_pairs(pairs, settings.test_fraction, settings.seed)
    run["notes"].append(f"{len(pairs)} pairs from {settings.pairs}: {len(train)} for training, {len(test)} held out.")
    run["data_card"] = data_card(settings.pairs)
    save_csv(run["data_card"].to_frame(), out / "data_card.csv")
    epochs = settings.dpo_epochs or scaled_dpo_epochs(len(train), settings.batch_size)
    steps = epochs * math.ceil(len(train) / settings.batch_size)
    run["notes"].append(f"DPO: {epochs} pass(es) over the {len(train)} training pairs, {steps} steps"
                        + ("." if settings.dpo_epochs else f" (scaled with the data: at least {DPO_MIN_STEPS} steps, "
                           f"at most {DPO_MAX_EPOCHS} passes; --dpo-epochs N or --original-settings to choose)."))
    if few_pairs_note(len(test)):
        run["notes"].append(few_pairs_note(len(test)) + ("" if settings.also_score_sample else
                            " Add --also-score-sample to also score the bundled sample's held-out pairs."))
    if settings.model == TINY_GPT2:
        run["notes"].append("tiny-gpt2 has random weights: its text is gibberish and its numbers only show that "
                            "the pipeline works. Use smollm2-135m or gpt2 for real results.")
    write_atomic(out / "report.html", render_report(run))

    base, tokenizer = load_model(settings.model, settings.device)
    ref = freeze(base)
    common = dict(batch_size=settings.batch_size, seed=settings.seed, max_length=settings.max_length,
                  progress=progress)

    policy_kl = trainable_copy(ref)
    run["kl_history"] = train_kl(policy_kl, ref, tokenizer, train, settings.kl_beta, settings.kl_lr,
                                 settings.kl_steps, **common)
    save_csv(run["kl_history"], out / "history_kl.csv")
    finish("KL update", kl_history=plot_kl_history(run["kl_history"]))

    if settings.kl_beta_sweep:
        run["beta_sweep"] = kl_beta_sweep(ref, tokenizer, train, settings.kl_beta_sweep, lr=settings.kl_lr,
                                          steps=settings.kl_steps, **common)
        save_csv(run["beta_sweep"], out / "beta_sweep.csv")
        finish("beta sweep", beta_sweep=plot_beta_sweep(run["beta_sweep"]))

    policy_dpo = trainable_copy(ref)
    with weights_on_disk(policy_kl):  # not needed until the evaluation
        run["dpo_history"] = train_dpo(policy_dpo, ref, tokenizer, train, settings.dpo_beta, settings.dpo_lr,
                                       epochs, **common)
    save_csv(run["dpo_history"], out / "history_dpo.csv")
    last_pass = run["dpo_history"].tail(math.ceil(len(train) / settings.batch_size))
    run["notes"].append(displacement_note("training pairs, DPO's last pass", last_pass["logps_vs_ref/chosen"].mean(),
                                          last_pass["logps_vs_ref/rejected"].mean()))
    finish("DPO", dpo_history=plot_dpo_history(run["dpo_history"], "DPO (our loop)"))

    models = {"base": ref, "kl": policy_kl, "dpo": policy_dpo}
    if settings.with_trl:
        from ..trl_dpo import train_dpo_trl

        policy_trl = trainable_copy(ref)
        with weights_on_disk(policy_kl, policy_dpo):
            run["dpo_trl_history"] = train_dpo_trl(policy_trl, ref, tokenizer, train, settings.dpo_beta,
                                                   settings.dpo_lr, epochs, settings.batch_size,
                                                   settings.seed, settings.max_length)
        save_csv(run["dpo_trl_history"], out / "history_dpo_trl.csv")
        own, trl = run["dpo_history"]["loss"].iloc[0], run["dpo_trl_history"]["loss"].iloc[0]
        run["parity"] = {"first-step loss (ours)": own, "first-step loss (TRL)": trl, "|difference|": abs(own - trl),
                         "expected (log 2)": math.log(2)}
        models["dpo_trl"] = policy_trl
        finish("DPO (TRL)", dpo_trl_history=plot_dpo_history(run["dpo_trl_history"], "DPO (TRL DPOTrainer)"))

    def evaluate(held_out: list[dict]):
        return evaluate_models(models, ref, tokenizer, held_out, beta=settings.dpo_beta, seed=settings.seed,
                               max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                               top_p=settings.top_p, max_length=settings.max_length, progress=progress)

    run["metrics"], run["generations"] = evaluate(test)
    save_csv(run["metrics"], out / "metrics.csv")
    save_generations(run["generations"], out / "generations.jsonl")
    dpo = run["metrics"].loc["dpo"]
    run["notes"].append(displacement_note("held-out pairs", dpo["chosen_logp_vs_ref"], dpo["rejected_logp_vs_ref"]))
    finish("evaluation", metrics=plot_metrics(run["metrics"]))

    if settings.also_score_sample:
        sample = sample_held_out_pairs(train, settings.test_fraction, settings.seed)
        run["notes"].append(f"Also scored on {len(sample)} held-out pairs of the bundled sample (its pairs whose "
                            "prompt is among your training pairs are left out).")
        run["metrics_sample"], run["generations_sample"] = evaluate(sample)
        save_csv(run["metrics_sample"], out / "metrics_sample.csv")
        save_generations(run["generations_sample"], out / "generations_sample.jsonl")
        finish("evaluation on the sample", metrics_sample=plot_metrics(run["metrics_sample"]))
    return run
